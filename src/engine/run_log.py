"""What a run writes besides checkpoints: metrics.jsonl (one JSON object per logged step) and loss statistics for the
end-of-run summary. Only the main rank writes; the other ranks keep the statistics so every rank can print."""
import json
import os
from collections import defaultdict, deque


class MetricsLog:
    def __init__(self, out_dir, enabled, resume=False):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled
        self._file = None
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")

    def write(self, record):
        if self._file:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


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
