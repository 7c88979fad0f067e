"""Results on disk: ``<name>.json`` (full results) next to ``<name>.md`` (a markdown table for humans)."""
import json
import numbers
import os

import numpy as np

from src.utils.files import atomic_write_text

MISSING = "-"   # cell text for a value a row does not have


def markdown_table(rows, columns, floatfmt=".2f"):
    """A GitHub markdown table of ``rows`` (dicts) restricted to ``columns``, in that order.

    Floats use ``floatfmt``; missing values show as ``-``; columns holding only numbers are right-aligned.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    cells = [[_cell(row.get(column), floatfmt) for column in columns] for row in rows]
    numeric = [all(_is_number(row[column]) for row in rows if row.get(column) is not None) for column in columns]
    lines = ["| " + " | ".join(_escape(str(column)) for column in columns) + " |",
             "|" + "|".join("---:" if is_numeric else "---" for is_numeric in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_results(out_dir, name, results, table_rows=None, columns=None, notes=()):
    """Write ``<out_dir>/<name>.json`` (indent 2, UTF-8 kept readable) and ``<out_dir>/<name>.md``, each atomically.

    The markdown holds ``table_rows`` as a table (``columns`` default to the keys of the rows, first seen first);
    without rows it is a two-column metric/value table of ``results`` (nested dicts flattened to dotted keys).
    ``notes`` are lines written below the table.
    Returns ``(json_path, md_path)``.
    """
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    atomic_write_text(json_path, json.dumps(results, indent=2, ensure_ascii=False, default=_to_json) + "\n")
    if table_rows is None:
        table_rows = [{"metric": key, "value": value} for key, value in _flatten(results)]
        columns = ["metric", "value"]
    elif columns is None:
        columns = list(dict.fromkeys(key for row in table_rows for key in row))
    text = f"# {name}\n\n" + markdown_table(table_rows, columns)
    if notes:
        text = text.rstrip("\n") + "\n\n" + "".join(f"{line}\n" for line in notes)
    atomic_write_text(md_path, text)
    return json_path, md_path


def _flatten(results, prefix=""):
    for key, value in results.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _is_number(value):
    return isinstance(value, (numbers.Number, np.number)) and not isinstance(value, (bool, np.bool_))


def _cell(value, floatfmt):
    if value is None:
        return MISSING
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    if isinstance(value, (list, tuple)):
        return _escape(", ".join(str(item) for item in value))
    return _escape(str(value))


def _escape(text):
    """Keep a cell on one line and its pipes from splitting the column."""
    return " ".join(text.split()).replace("|", "\\|")


def _to_json(value):
    """JSON form of NumPy scalars and arrays."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
