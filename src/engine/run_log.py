"""What a run writes besides checkpoints: metrics.jsonl (one JSON object per logged step) and loss statistics for the
end-of-run summary. Only the main rank writes; the other ranks keep the statistics so every rank can print."""
import json
import math
import os
from collections import defaultdict, deque

from src.utils.files import atomic_write_text


class MetricsLog:
    """metrics.jsonl: strict JSON, one object per line (a NaN or infinite number is written as null).

    A resumed run (`resume_step` > 0) first drops the lines of steps after `resume_step` (those the killed run logged
    after its last checkpoint, which the resumed run repeats) and any torn last line, so every step appears once.
    """

    def __init__(self, out_dir, enabled, resume_step=0):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled
        self._file = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            if resume_step > 0:
                kept = _records_up_to(self.path, resume_step)
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
                self._file = open(self.path, "a", encoding="utf-8")
            else:
                self._file = open(self.path, "w", encoding="utf-8")

    def write(self, record):
        if self._file:
            self._file.write(json.dumps(_finite(record), ensure_ascii=False, allow_nan=False) + "\n")
            self._file.flush()

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


def _step_of(record):
    """The step a metrics record belongs to (training line or {"eval": {...}} line), or None."""
    if isinstance(record, dict):
        if "step" in record:
            return record["step"]
        if isinstance(record.get("eval"), dict):
            return record["eval"].get("step")
    return None


def _records_up_to(path, last_step):
    """The lines of `path` whose step is at most `last_step`, re-encoded strictly (unreadable lines dropped)."""
    if not os.path.exists(path):
        return []
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)  # reads the bare NaN that older versions wrote
            except ValueError:
                continue
            step = _step_of(record)
            if isinstance(step, int) and step <= last_step:
                kept.append(json.dumps(_finite(record), ensure_ascii=False, allow_nan=False))
    return kept


def _finite(value):
    """`value` with every NaN or infinite float replaced by None (JSON null), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class LossTracker:
    """Per-task loss statistics: the first `window` losses, a running mean of the last `window`, and step counts."""

    def __init__(self, window=20):
        self.window = window
        self.first = defaultdict(list)
        self.recent = defaultdict(lambda: deque(maxlen=window))
        self.steps = defaultdict(int)

    def add(self, task, loss):
        if len(self.first[task]) < self.window:
            self.first[task].append(loss)
        self.recent[task].append(loss)
        self.steps[task] += 1

    def recent_mean(self, task):
        values = self.recent[task]
        return sum(values) / len(values) if values else float("nan")

    def state(self):
        return {"first": dict(self.first), "recent": {t: list(v) for t, v in self.recent.items()},
                "steps": dict(self.steps)}

    def restore(self, state):
        for task, values in state.get("first", {}).items():
            self.first[task] = list(values)
        for task, values in state.get("recent", {}).items():
            self.recent[task].extend(values)
        for task, n in state.get("steps", {}).items():
            self.steps[task] = n

    def summary(self):
        """{task: {"steps", "first", "last"}}: means of the first and of the last k of a task's n losses, k = n // 5
        (at least 1, at most `window`): the start and the end of training, never overlapping, and not blurred by a
        fast initial drop as halves would be."""
        out = {}
        for task in self.first:
            k = max(1, min(self.window, self.steps[task] // 5))
            first, last = self.first[task][:k], list(self.recent[task])[-k:]
            out[task] = {"steps": self.steps[task], "first": sum(first) / k, "last": sum(last) / k}
        return out
