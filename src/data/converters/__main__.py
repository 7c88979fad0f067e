"""Entry point of `python -m src.data.converters`."""

import sys

from src.data.converters.cli import main

if __name__ == "__main__":
    sys.exit(main())
