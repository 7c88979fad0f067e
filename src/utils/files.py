"""Atomic writes: a file appears whole under its name or not at all, whatever kills the process in between."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8", durable=True):
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path`` (mode 0644).

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"``. With ``durable`` the data and the folder entry are
    fsynced, so the file survives a power cut as well as a kill. On an exception the temporary file is removed and
    ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes new files only (mode 'w' or 'wb'), not {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        text = "b" not in mode
        with os.fdopen(handle, mode, encoding=encoding if text else None, newline="\n" if text else None) as stream:
            yield stream
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)   # mkstemp creates 0600; outputs are meant to be shared
        os.replace(temporary, path)
        if durable:
            fsync_path(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path, text, durable=True):
    """Write UTF-8 ``text`` to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path, durable=durable) as stream:
        stream.write(text)


def fsync_path(path):
    """fsync a file or folder by path, so a rename into it or its contents are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_jsonl(path, rows):
    """`rows` (JSON-serialisable dicts) as UTF-8 JSON lines (non-ASCII kept readable), written atomically; the
    folder is created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
