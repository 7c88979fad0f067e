"""Export an OPT checkpoint to MindIR for serving."""
import argparse
import sys

from src.cli import not_built_yet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    return not_built_yet("export.py", "MindIR export")


if __name__ == "__main__":
    sys.exit(main())
