"""Fine-tune OPT for visual question answering."""
import argparse
import sys

from src.cli import not_built_yet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    return not_built_yet("train_vqa.py", "VQA fine-tuning")


if __name__ == "__main__":
    sys.exit(main())
