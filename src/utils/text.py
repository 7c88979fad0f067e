"""The text normalisation and word split of BERT's basic tokenizer, shared by the tokenizer and the caption metrics.

The rules are those of Google BERT's `BasicTokenizer` (the tokenizer of bert-base-chinese as HuggingFace BERT,
Chinese-CLIP and the original OPT run it), in this order:

1. clean: drop U+0000, U+FFFD and control characters (categories Cc and Cf, except tab, newline and carriage return);
   tab, newline, carriage return and space separators (Zs) become a plain space;
2. with lower-casing: `str.lower()`, NFD, then drop non-spacing marks (category Mn), i.e. accents are stripped.
   Full-width forms stay full-width (no NFKC): `，` stays `，`, `Ａ` becomes `ａ`, `①` and `℃` are kept;
3. split: at whitespace (`str.split()`), and every CJK ideograph (the ranges of BERT's `_is_chinese_char`) and every
   punctuation character (ASCII 33-47, 58-64, 91-96, 123-126 and Unicode categories P*) is a word of its own.

BERT splits off CJK characters before lower-casing and lower-cases word by word; `normalize_text` lower-cases the
whole text first. The two agree because lower-casing and NFD map no CJK ideograph out of the ranges and nothing else
into them, and spaces end the context of `str.lower()`'s final-sigma rule (tests/unit/test_tokenizer.py checks both).
"""
import functools
import re
import unicodedata

# BERT's _is_chinese_char: the CJK Unified Ideographs blocks and extensions A-E, and the compatibility ideographs.
CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
ASCII_PUNCTUATION_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))   # every ASCII non-letter, non-digit symbol
_KEPT_CONTROLS = "\t\n\r"


def is_chinese_char(char):
    """True for a CJK ideograph as BERT defines it: each one is a word of its own."""
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def is_punctuation(char):
    """True for BERT's punctuation: ASCII symbols (33-47, 58-64, 91-96, 123-126) and Unicode categories P*."""
    code = ord(char)
    return any(low <= code <= high for low, high in ASCII_PUNCTUATION_RANGES) or \
        unicodedata.category(char).startswith("P")


def normalize_text(text, lower_case=True):
    """BERT's normalisation of `text` (steps 1 and 2 of the module docstring; 2 only with `lower_case`)."""
    if _classes(text).dirty.search(text):
        text = text.translate(_tables().clean)
    if lower_case:
        if text.isascii():
            return text.lower()
        text = unicodedata.normalize("NFD", text.lower())
        marks = _classes(text).marks    # after NFD: some BMP ideographs decompose beyond the BMP (U+FA6C)
        if marks.search(text):
            text = marks.sub("", text)
    return text


def split_words(normalized):
    """Step 3 of the module docstring on already normalised text: the list of words."""
    return _classes(normalized).words.findall(normalized)


def basic_tokenize(text, lower_case=True):
    """The words of BERT's basic tokenizer: `split_words(normalize_text(text, lower_case))`."""
    return split_words(normalize_text(text, lower_case))


def words_without_punctuation(text, lower_case=True):
    """`basic_tokenize` without its punctuation words (each punctuation character is a word of its own)."""
    text = normalize_text(text, lower_case)
    classes = _classes(text)
    return [word for word in classes.words.findall(text) if not classes.punctuation.fullmatch(word)]


def remove_punctuation(text, replacement=" "):
    """`text` with every BERT punctuation character replaced by `replacement`."""
    return _classes(text).punctuation.sub(replacement, text)


# Planes 4-13 hold no assigned character (Unicode 14, Python 3.11's unicodedata) and planes 15-16 only private use
# (Co), so none of their code points is in a class below; tests/unit/test_tokenizer.py checks that this still holds.
SCANNED_PLANES = (range(0x0, 0x40000), range(0xE0000, 0xF0000))


class _Classes:
    """Compiled character classes: `dirty` (what cleaning changes), `marks` (Mn), `punctuation`, `words` (step 3)."""

    def __init__(self, dirty, marks, punctuation, split):
        self.dirty = re.compile(_char_class(dirty))
        self.marks = re.compile(_char_class(marks))
        self.punctuation = re.compile(_char_class(punctuation))
        # One word: a CJK character or a punctuation mark alone, or a run of anything else but whitespace. The \s of a
        # str pattern is str.isspace(), so the runs end where str.split() would split.
        inside = _ranges(split)
        self.words = re.compile(f"[{inside}]|[^\\s{inside}]+")


class _Tables:
    """The character classes of all of Unicode (as Python's unicodedata knows it), built once per process.

    Each class is compiled twice: over the whole of Unicode (`full`) and over the Basic Multilingual Plane alone
    (`bmp`): Python's `re` tests a BMP-only class with one bitmap look-up, a class reaching beyond the BMP range by
    range, which makes the common text, all in the BMP, several times slower to tokenise.
    """

    def __init__(self):
        drop, space, marks, punctuation = [0, 0xFFFD], [], [], []
        ascii_punctuation = {code for low, high in ASCII_PUNCTUATION_RANGES for code in range(low, high + 1)}
        for plane in SCANNED_PLANES:
            for code, category in zip(plane, map(unicodedata.category, map(chr, plane))):
                if category == "Zs" or (category == "Cc" and chr(code) in _KEPT_CONTROLS):
                    space.append(code)
                elif category == "Cc" or category == "Cf":
                    drop.append(code)
                elif category == "Mn":
                    marks.append(code)
                elif category[0] == "P" or code in ascii_punctuation:
                    punctuation.append(code)
        self.clean = dict.fromkeys(drop)
        self.clean.update((code, " ") for code in space if code != 0x20)
        dirty = sorted(set(drop) | set(space) - {0x20})
        cjk = [code for low, high in CJK_RANGES for code in range(low, high + 1)]
        split = sorted(set(cjk) | set(punctuation))
        self.full = _Classes(dirty, marks, punctuation, split)
        self.bmp = _Classes(*([code for code in codes if code <= 0xFFFF]
                              for codes in (dirty, marks, punctuation, split)))
        self.astral = re.compile("[\\U00010000-\\U0010ffff]")


@functools.lru_cache(maxsize=1)
def _tables():
    return _Tables()


def _classes(text):
    """The compiled classes that serve `text`: the BMP ones unless `text` holds a character beyond the BMP."""
    tables = _tables()
    return tables.full if tables.astral.search(text) else tables.bmp


def _char_class(codes):
    """A regular-expression character class matching exactly the code points `codes` (sorted, distinct)."""
    return f"[{_ranges(codes)}]"


def _ranges(codes):
    """The inside of a character class matching exactly the code points `codes` (sorted, distinct)."""
    parts, start = [], None
    for index, code in enumerate(codes):
        if start is None:
            start = code
        if index + 1 == len(codes) or codes[index + 1] != code + 1:
            parts.append(f"\\U{start:08x}" if start == code else f"\\U{start:08x}-\\U{code:08x}")
            start = None
    return "".join(parts)
