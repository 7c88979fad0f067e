"""Vocabulary files: read, write, and build one from manifests.

A vocabulary file holds one token per line; the line number (from 0) is the token id. The five special tokens must be
present; a vocabulary built here puts them first, so [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.

CLI: ``python -m src.data.vocab --manifest a.jsonl [b.jsonl ...] --out vocab.txt [--min_count N] [--max_size N]``
"""

import argparse
import os
import sys
from collections import Counter

from src.utils.progress import progress

from src.data.manifest import captions_of, read_manifest
from src.errors import UserError
from src.utils.files import atomic_write_text
from src.utils.text import basic_tokenize

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path):
    """Return the tokens of vocabulary file `path` in id order; empty or repeated lines are errors."""
    if not os.path.isfile(path):
        raise UserError(
            f"vocabulary file {path} not found; run scripts/fetch_vocab.sh for bert-base-chinese "
            "or build one with `python -m src.data.vocab`"
        )
    with open(path, encoding="utf-8") as f:
        # Split on "\n" only: the BERT vocabularies hold tokens such as U+2028 that str.splitlines() would break.
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line[:-1] if line.endswith("\r") else line for line in lines]
    first_line = {}
    for line_no, token in enumerate(tokens, start=1):
        if token == "":
            raise UserError(f"{path} line {line_no}: empty token; every line must hold one token")
        if token in first_line:
            raise UserError(
                f"{path} line {line_no}: token {token!r} repeats line {first_line[token]}; remove the duplicate"
            )
        first_line[token] = line_no
    missing = [token for token in SPECIAL_TOKENS if token not in first_line]
    if missing:
        raise UserError(f"{path}: special tokens {' '.join(missing)} are missing; add one line for each")
    return tokens


def write_vocab(path, tokens):
    """Write `tokens` one per line to `path` (UTF-8), atomically (src/utils/files.py)."""
    for token in tokens:
        if token == "" or "\n" in token:
            raise ValueError(f"cannot write token {token!r}: tokens must be non-empty and single-line")
    atomic_write_text(path, "".join(token + "\n" for token in tokens))


def build_vocab(texts, min_count=1, max_size=None):
    """Return a vocabulary: the special tokens, then every word seen at least `min_count` times.

    Words come from BERT's basic tokenizer with lower-casing (`src.utils.text.basic_tokenize`, the split `Tokenizer`
    uses): each CJK character and each punctuation mark is a word (full-width marks such as `，` stay full-width),
    latin words are kept whole. Words are ordered by falling count, ties alphabetically, so the result does not
    depend on the order of `texts`. `max_size` bounds the whole vocabulary, specials included.
    """
    if max_size is not None and max_size < len(SPECIAL_TOKENS):
        raise UserError(f"max_size {max_size} is too small: the special tokens alone need {len(SPECIAL_TOKENS)}")
    counts = Counter()
    for text in progress(texts, desc="counting words", unit="text"):
        counts.update(basic_tokenize(text))
    for token in SPECIAL_TOKENS:
        counts.pop(token, None)
    words = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
    vocab = list(SPECIAL_TOKENS) + words
    return vocab if max_size is None else vocab[:max_size]


def manifest_texts(samples, rationales=False):
    """Yield every caption, question and answer of manifest `samples`, and with `rationales` their rationales.

    Rationales are left out by default so that adding them to a manifest does not renumber the vocabulary built from
    it (ids are ordered by count): a vocabulary built before stays valid for checkpoints trained with it."""
    for sample in samples:
        yield from captions_of(sample)
        if "question" in sample:
            yield sample["question"]
        yield from sample.get("answers", [])
        if rationales:
            yield from sample.get("rationales", [])


def main(argv=None):
    """Build a vocabulary from the captions, questions and answers of some manifests."""
    parser = argparse.ArgumentParser(prog="python -m src.data.vocab", description=main.__doc__)
    parser.add_argument("--manifest", nargs="+", required=True, help="manifest JSONL files to read text from")
    parser.add_argument("--out", required=True, help="vocabulary file to write (one token per line)")
    parser.add_argument("--min_count", type=int, default=1, help="drop words seen fewer times (default 1)")
    parser.add_argument("--max_size", type=int, default=None, help="keep at most this many tokens, specials included")
    parser.add_argument("--rationales", action="store_true",
                        help="also count VQA rationales (off by default: adding them would renumber the vocabulary)")
    args = parser.parse_args(argv)
    try:
        texts = [text for path in args.manifest for text in manifest_texts(read_manifest(path), args.rationales)]
        vocab = build_vocab(texts, min_count=args.min_count, max_size=args.max_size)
        write_vocab(args.out, vocab)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(vocab)} tokens ({len(SPECIAL_TOKENS)} special) from {len(texts)} texts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
