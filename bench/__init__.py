"""Benchmarks run by `scripts/benchmark.py <name>`.

Each benchmark is a module `bench/<name>.py` with `add_arguments(parser)` (its own options) and
`run(args) -> dict` (runs, prints its tables with `print_table`, returns the results that `--out FILE` saves as JSON).
The printed tables are also kept in `PRINTED`, from which `--results PAGE.md` writes the run's section of the results
page. Timings live here, never in test asserts.
"""
from src.utils.results import markdown_table

PRINTED = []   # (title, markdown table) of every print_table call of this process, in order


def print_table(title, rows, columns, floatfmt=".1f"):
    """Print `rows` (dicts) as a markdown table under a `title` line (and keep it for the results page)."""
    table = markdown_table(rows, columns, floatfmt=floatfmt)
    PRINTED.append((title, table))
    print(f"\n{title}\n")
    print(table)
