"""Benchmarks run by `scripts/benchmark.py <name>`.

Each benchmark is a module `bench/<name>.py` with `add_arguments(parser)` (its own options) and
`run(args) -> dict` (runs, prints a small table, returns the results that `--out FILE` saves as JSON). Timings live
here, never in test asserts.
"""
from src.utils.results import markdown_table


def print_table(title, rows, columns, floatfmt=".1f"):
    """Print `rows` (dicts) as a markdown table under a `title` line."""
    print(f"\n{title}\n")
    print(markdown_table(rows, columns, floatfmt=floatfmt))
