"""Progress of long loops, on a terminal and in log files.

On a terminal `progress` is a plain tqdm bar. When stderr is not a terminal (a job's log, nohup, a cluster launcher)
tqdm's own default is silence, so a re-ranking or a MindRecord build could run for minutes without a word; here the
bar instead writes a whole line (`desc: 1200/5000 [00:35<01:50, 34.1it/s]`) every `LOG_INTERVAL` seconds, starting
only once the loop has run for `LOG_DELAY` seconds, so short loops stay quiet.
"""
import sys

from tqdm import tqdm

LOG_DELAY = 10.0      # seconds before a non-terminal bar writes its first line
LOG_INTERVAL = 30.0   # seconds between its lines


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into separate lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm for a log file: a new postfix waits for the next timed line instead of writing one of its own (tqdm
    redraws at once by default, which in a log is a line per step, showing a stale count)."""

    def set_postfix_str(self, s="", refresh=False):
        super().set_postfix_str(s, refresh=refresh)

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)


def progress(iterable=None, disable=False, **kwargs):
    """tqdm over `iterable` (or a manual bar with total=...): a bar on a terminal, timed lines otherwise;
    `disable=True` (e.g. on ranks other than 0) shows nothing."""
    stream = kwargs.pop("file", sys.stderr)
    if disable:
        return tqdm(iterable, disable=True, **kwargs)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("delay", LOG_DELAY)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.pop("dynamic_ncols", None)
    return _LogBar(iterable, file=_Lines(stream), ascii=True, ncols=100, **kwargs)
