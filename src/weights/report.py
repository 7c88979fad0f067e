"""What a weight import did to every key: one record per source key and per parameter of ours it left alone.

Every importer of foreign weights (released OPT checkpoints, HuggingFace BERT / ViT, Chinese-CLIP) fills one
``LoadReport`` so nothing is lost or changed silently; the report is written next to the output as JSON + markdown.
"""
from collections import Counter

from src.utils.results import write_results

ACTIONS = ("mapped", "renamed", "transposed", "reshaped", "interpolated", "sliced", "remapped", "cast", "merged",
           "dropped", "initialised")


class LoadReport:
    """Records ``(action, source key, our key, detail)``; ``dropped`` and ``initialised`` need a reason."""

    def __init__(self, source):
        self.source = source
        self.rows = []

    def add(self, action, source_key=None, our_key=None, detail=""):
        if action not in ACTIONS:
            raise ValueError(f"unknown load-report action {action!r}; one of {ACTIONS}")
        if action in ("dropped", "initialised") and not detail:
            raise ValueError(f"a '{action}' record needs its reason ({source_key or our_key})")
        self.rows.append({"action": action, "source": source_key, "ours": our_key, "detail": detail})

    def counts(self):
        return dict(Counter(row["action"] for row in self.rows))

    def keys(self, action):
        return [row["source"] if action == "dropped" else row["ours"] for row in self.rows if row["action"] == action]

    def summary(self):
        """One line: the source and how many keys each action touched."""
        counts = self.counts()
        return f"{self.source}: " + ", ".join(f"{counts[a]} {a}" for a in ACTIONS if a in counts)

    def write(self, out_dir, name="load_report"):
        """``<out_dir>/<name>.json`` and ``.md`` (one row per record); returns the two paths."""
        results = {"source": self.source, "counts": self.counts(), "records": self.rows}
        return write_results(out_dir, name, results, table_rows=self.rows,
                             columns=["action", "source", "ours", "detail"])
