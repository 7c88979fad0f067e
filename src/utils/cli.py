"""What every command-line tool shares: user errors become one line on stderr and exit code 2; help from docstrings."""
import argparse
import sys

from src.errors import UserError


def run_main(main, argv=None):
    """Call `main(argv)`; a UserError is printed as `error: <message>` and gives exit code 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def docstring_parser(doc, prog=None):
    """An argument parser whose help is a module docstring: the first paragraph as description, the rest verbatim."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=details or None,
                                   formatter_class=argparse.RawTextHelpFormatter)
