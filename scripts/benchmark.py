"""Benchmarks: `python scripts/benchmark.py <name> [options] [--out results.json]`.

Each subcommand is a module bench/<name>.py (`add_arguments(parser)`, `run(args) -> dict`); add one by listing
it in BENCHMARKS. `--out FILE` writes the returned results as JSON.
"""
import argparse
import importlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = {
    "data": "samples/s of the pretraining data pipelines (MindRecord -> task batches) on demo data",
    "decode": "captions/s of greedy and beam-3 decoding with and without the KV cache (small config)",
    "retrieval": "wall time of itc_itm vs itm retrieval (1,000 images x 5,000 captions) and their R@1 on a subset",
    "train": "training-step throughput and GFLOP/s against the machine's matmul roof, with a per-phase breakdown",
    "tokenizer": "sentences/s of the BERT tokenizer against MindSpore's BertTokenizer, and how many texts' ids differ",
}


def main(argv=None):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from src.errors import UserError
    from src.utils.files import atomic_write_text

    parser = argparse.ArgumentParser(prog="scripts/benchmark.py", description="Run a benchmark.")
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, summary in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        importlib.import_module(f"bench.{name}").add_arguments(sub)
        sub.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON to FILE")
    args = parser.parse_args(argv)
    try:
        results = importlib.import_module(f"bench.{args.benchmark}").run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
