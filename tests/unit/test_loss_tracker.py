"""The end-of-run loss summary compares the first fifth of a task's losses with the last fifth."""
import pytest

from src.engine.run_log import LossTracker


def test_summary_uses_first_and_last_fifth():
    tracker = LossTracker(window=20)
    losses = [10.0, 8.0] + [5.0] * 6 + [1.0, 3.0]  # n = 10 -> k = 2
    for value in losses:
        tracker.add("mvm", value)
    tracker.add("itc", 4.0)
    summary = tracker.summary()
    assert summary["mvm"] == {"steps": 10, "first": 9.0, "last": 2.0}
    assert summary["itc"] == {"steps": 1, "first": 4.0, "last": 4.0}


def test_summary_window_caps_k_and_survives_restore():
    tracker = LossTracker(window=3)
    for value in range(100):
        tracker.add("td", float(value))
    restored = LossTracker(window=3)
    restored.restore(tracker.state())
    summary = restored.summary()["td"]
    assert summary["steps"] == 100
    assert summary["first"] == pytest.approx(1.0)   # mean of 0, 1, 2
    assert summary["last"] == pytest.approx(98.0)   # mean of 97, 98, 99
