"""Long loops report progress in log files too: whole lines every LOG_INTERVAL seconds after LOG_DELAY."""
import io

from tqdm import std as tqdm_std

from src.utils.progress import progress


class _Clock:
    """tqdm's time source, advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_loop(monkeypatch, stream, n, seconds_per_item, **kwargs):
    clock = _Clock()
    monkeypatch.setattr(tqdm_std, "time", clock)
    for _ in progress(range(n), file=stream, desc="pairs", **kwargs):
        clock.now += seconds_per_item
    return stream.getvalue()


def test_a_long_loop_writes_whole_lines_to_a_log(monkeypatch):
    text = run_loop(monkeypatch, io.StringIO(), 100, 2.0)   # 200 s
    lines = text.splitlines()
    assert "\r" not in text and len(lines) >= 5            # about one line per 30 s, and the last state
    assert all(line.startswith("pairs:") for line in lines)
    assert "100/100" in lines[-1]


def test_a_postfix_set_every_step_waits_for_the_timed_line(monkeypatch):
    """The trainer sets the losses as the bar's postfix at every step: in a log that must not be a line per step."""
    clock = _Clock()
    monkeypatch.setattr(tqdm_std, "time", clock)
    stream = io.StringIO()
    bar = progress(range(100), file=stream, desc="train")
    for step in bar:
        clock.now += 2.0
        bar.set_postfix_str(f"loss={step}")
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 9 and "100/100" in lines[-1] and "loss=99" in lines[-1]


def test_a_short_loop_stays_quiet_and_disable_silences(monkeypatch):
    assert run_loop(monkeypatch, io.StringIO(), 5, 1.0) == ""          # 5 s < LOG_DELAY
    assert run_loop(monkeypatch, io.StringIO(), 100, 2.0, disable=True) == ""


def test_a_terminal_gets_tqdms_own_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    text = run_loop(monkeypatch, Terminal(), 10, 0.0)
    assert "\r" in text and "10/10" in text
