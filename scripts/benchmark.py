"""Benchmarks: `python scripts/benchmark.py <name> [options] [--out results.json] [--results [PAGE.md]]`.

Each subcommand is a module bench/<name>.py (`add_arguments(parser)`, `run(args) -> dict`); add one by listing
it in BENCHMARKS. `--out FILE` writes the returned results as JSON. `--results` writes the run's tables into a
results page (default docs/results/benchmark.md) as one section headed by the exact command, with the date, commit,
machine and load before and after; a later run of the same command replaces its section, other sections stay.
"""
import argparse
import datetime
import importlib
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_PAGE = os.path.join("docs", "results", "benchmark.md")
PAGE_HEADER = """# Benchmark results

Written by `python scripts/benchmark.py <name> ... --results`: one section per command, replaced when the same command
runs again. Each section gives the date, the commit, the machine and its load before and after the run (figures
measured under load are slower than the machine can do). Do not edit by hand.
"""
BENCHMARKS = {
    "data": "samples/s of the pretraining data pipelines (MindRecord -> task batches) on demo data",
    "decode": "captions/s of greedy and beam-3 decoding with and without the KV cache (small config)",
    "retrieval": "wall time of itc_itm vs itm retrieval (1,000 images x 5,000 captions) and their R@1 on a subset",
    "train": "training-step throughput, GFLOP/s against the machine's matmul roof and peak memory against the "
             "analytic need, with a per-phase breakdown",
    "tokenizer": "sentences/s of the BERT tokenizer against MindSpore's BertTokenizer, and how many texts' ids differ",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from src.errors import UserError
    from src.utils.files import atomic_write_text
    from src.utils.machine import load_average

    parser = argparse.ArgumentParser(prog="scripts/benchmark.py", description="Run a benchmark.")
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, summary in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        importlib.import_module(f"bench.{name}").add_arguments(sub)
        sub.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON to FILE")
        sub.add_argument("--results", nargs="?", const=RESULTS_PAGE, default=None, metavar="PAGE.md",
                         help=f"write this run's tables into a results page (default {RESULTS_PAGE})")
    args = parser.parse_args(argv)
    load_before = load_average()
    try:
        results = importlib.import_module(f"bench.{args.benchmark}").run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.out}")
    if args.results and not getattr(args, "phase", None):
        command = "python scripts/benchmark.py " + shlex.join(a for a in _without_results(argv))
        write_results_section(args.results, command, load_before)
        print(f"results page updated: {args.results}")
    return 0


def _without_results(argv):
    """argv without --results and its optional page (the section's heading names the measuring command only)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            if not arg.startswith("-"):
                continue
        if arg == "--results":
            skip = True
            continue
        if arg.startswith("--results="):
            continue
        out.append(arg)
    return out


def write_results_section(page, command, load_before):
    """Replace (or append) the section of `command` in `page` with the tables this process printed."""
    from bench import PRINTED
    from src.utils.files import atomic_write_text
    from src.utils.machine import commit_of, load_average, machine_description

    heading = f"## `{command}`"
    def shown(load):
        return f"{load:.1f}" if load is not None else "unknown"
    lines = [heading, "", f"{datetime.date.today().isoformat()}, commit {commit_of(ROOT)}. Machine: "
             f"{machine_description(load_label='')}; load average {shown(load_before)} before, "
             f"{shown(load_average())} after.", ""]
    for title, table in PRINTED:
        lines += [title, "", table.rstrip(), ""]
    section = "\n".join(lines)
    sections = _read_sections(page)
    sections[heading] = section
    atomic_write_text(page, PAGE_HEADER + "\n" + "\n".join(s.rstrip() + "\n" for s in sections.values()))


def _read_sections(page):
    """{heading: section text} of an existing page, in order (the header before the first section is dropped)."""
    sections = {}
    if not os.path.isfile(page):
        return sections
    heading = None
    with open(page, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                heading = line.rstrip("\n")
                sections[heading] = ""
            if heading is not None:
                sections[heading] += line
    return sections


if __name__ == "__main__":
    sys.exit(main())
