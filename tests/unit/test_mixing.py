"""TaskMixer: the mix matches the ratios, the task of a step is a pure function of (seed, step), zero ratios are off."""
from collections import Counter

import pytest

from src.engine.mixing import TaskMixer, block_counts

UNEVEN = {"mlm": 1.0, "mvm": 0.5, "mam": 0.5, "itc": 2.0}


def draws(mixer, steps):
    return [mixer.task_at(s) for s in range(steps)]


@pytest.mark.parametrize("ratios, block, expected", [
    # exact shares 25, 12.5, 12.5, 50: the one slot left goes to the first of the tied remainders
    (UNEVEN, 100, {"mlm": 25, "mvm": 13, "mam": 12, "itc": 50}),
    ({"a": 1, "b": 1, "c": 1}, 100, {"a": 34, "b": 33, "c": 33}),  # 33.3 each
    ({"a": 1, "b": 2}, 10, {"a": 3, "b": 7}),  # 3.33 / 6.67: the larger remainder wins
    ({"a": 2, "b": 1}, 10, {"a": 7, "b": 3}),
    ({"a": 3, "b": 1}, 8, {"a": 6, "b": 2}),  # exact
])
def test_block_counts_largest_remainder(ratios, block, expected):
    assert block_counts(ratios, block) == expected


@pytest.mark.parametrize("ratios", [UNEVEN, {"mlm": 1, "mvm": 1, "mam": 1, "itm": 1, "itc": 1, "td": 1}])
def test_counts_over_2000_steps_match_the_ratios(ratios):
    counts = Counter(draws(TaskMixer(ratios, seed=3), 2000))
    total = sum(ratios.values())
    for task, ratio in ratios.items():
        assert abs(counts[task] / 2000 - ratio / total) <= 0.02
    # every block of 100 holds exactly the apportioned counts, so 20 blocks hold 20 times them
    assert counts == Counter({t: 20 * n for t, n in block_counts(ratios, 100).items()})


def test_every_block_is_a_shuffled_copy_of_the_block_counts():
    mixer = TaskMixer(UNEVEN, seed=0, block=20)
    expected = {"mlm": 5, "mvm": 3, "mam": 2, "itc": 10}
    assert block_counts(UNEVEN, 20) == expected
    blocks = [draws(mixer, 100)[i:i + 20] for i in range(0, 100, 20)]
    for block in blocks:
        assert Counter(block) == expected
    assert len({tuple(b) for b in blocks}) > 1  # the order changes from block to block
    assert blocks[0] != sorted(blocks[0], key=list(UNEVEN).index)


def test_task_of_a_step_depends_only_on_seed_and_step():
    forward = draws(TaskMixer(UNEVEN, seed=11), 350)
    other = TaskMixer(UNEVEN, seed=11)
    backward = [other.task_at(s) for s in reversed(range(350))][::-1]  # random access, blocks revisited
    assert forward == backward
    resumed = TaskMixer(UNEVEN, seed=11)
    assert [resumed.task_at(s) for s in range(237, 350)] == forward[237:]


def test_different_seeds_give_different_orders():
    a, b = draws(TaskMixer(UNEVEN, seed=1), 200), draws(TaskMixer(UNEVEN, seed=2), 200)
    assert a != b
    assert Counter(a) == Counter(b)


def test_zero_ratio_tasks_are_never_drawn():
    mixer = TaskMixer({"mlm": 1.0, "mvm": 0.0, "itc": 3.0, "id": 0}, seed=5)
    assert mixer.tasks == ["mlm", "itc"]
    assert set(draws(mixer, 1000)) == {"mlm", "itc"}


def test_all_ratios_zero_is_an_error():
    with pytest.raises(ValueError, match="pretrain.tasks"):
        TaskMixer({"mlm": 0, "mvm": 0.0}, seed=0)
