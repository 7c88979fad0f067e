"""Which task trains at which step: one task per step, drawn by the configured mixing ratios.

Steps come in blocks of `block` (default 100). Each block holds every task a number of times proportional to its
ratio (largest-remainder rounding), in an order shuffled by (seed, block index). So the mix over any run matches the
ratios to within one step per block and task, the order is random, and the task of step s is a pure function of
(seed, s) — a resumed run draws exactly what the uninterrupted run would have.
"""
import numpy as np


def block_counts(ratios, block):
    """Largest-remainder apportionment of `block` slots to tasks by ratio; {task: count}."""
    total = float(sum(ratios.values()))
    exact = {t: block * r / total for t, r in ratios.items()}
    counts = {t: int(np.floor(v)) for t, v in exact.items()}
    leftover = block - sum(counts.values())
    for t in sorted(exact, key=lambda t: (-(exact[t] - counts[t]), list(ratios).index(t)))[:leftover]:
        counts[t] += 1
    return counts


class TaskMixer:
    def __init__(self, ratios, seed, block=100):
        self.ratios = {t: float(r) for t, r in ratios.items() if r > 0}
        if not self.ratios:
            raise ValueError("no pretraining task has a ratio above 0 (pretrain.tasks)")
        self.seed, self.block = int(seed), int(block)
        slots = []
        for task, count in block_counts(self.ratios, self.block).items():
            slots += [task] * count
        self.slots = np.array(slots)
        self._cache = (None, None)

    @property
    def tasks(self):
        return list(self.ratios)

    def task_at(self, step):
        index = step // self.block
        if self._cache[0] != index:
            order = np.random.default_rng([self.seed, index]).permutation(len(self.slots))
            self._cache = (index, self.slots[order])
        return str(self._cache[1][step % self.block])
