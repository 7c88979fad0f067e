"""BERT WordPiece tokenizer (MindSpore's `BertTokenizer`) with the encode / decode conventions of this repository.

Encoded text is `[CLS] pieces [SEP]`; the text decoder uses [CLS] as BOS and [SEP] as EOS, and [PAD] (id 0 in the
supported vocabularies) is never an end marker. Each CJK character is its own token.
"""

import unicodedata

import numpy as np
from mindspore.dataset.text import BertTokenizer, Vocab

from src.data.vocab import SPECIAL_TOKENS, read_vocab
from src.errors import UserError

DEFAULT_VOCAB = "vocab/bert-base-chinese.txt"
SUFFIX = "##"


class Tokenizer:
    """Text <-> token ids over the vocabulary file `vocab_path` (one token per line, see src/data/vocab.py)."""

    def __init__(self, vocab_path=DEFAULT_VOCAB, lower_case=True):
        self.tokens = read_vocab(vocab_path)
        self._ids = {token: index for index, token in enumerate(self.tokens)}
        self._split = BertTokenizer(
            Vocab.from_list(self.tokens),
            suffix_indicator=SUFFIX,
            unknown_token="[UNK]",
            lower_case=lower_case,
            preserve_unused_token=False,
        )
        self._special_ids = {self._ids[token] for token in SPECIAL_TOKENS}

    @property
    def vocab_size(self):
        return len(self.tokens)

    @property
    def pad_id(self):
        return self._ids["[PAD]"]

    @property
    def unk_id(self):
        return self._ids["[UNK]"]

    @property
    def cls_id(self):
        return self._ids["[CLS]"]

    @property
    def sep_id(self):
        return self._ids["[SEP]"]

    @property
    def mask_id(self):
        return self._ids["[MASK]"]

    def tokenize(self, text):
        """Split `text` into vocabulary pieces; a word that cannot be pieced together becomes [UNK]."""
        if not text.strip():
            return []
        return [str(piece) for piece in self._split(text) if piece]

    def encode(self, text, max_len):
        """Return int32 ids `[CLS] pieces [SEP]`, pieces cut so that the whole is at most `max_len` long."""
        if max_len < 2:
            raise UserError(f"max_len {max_len} is too small: [CLS] and [SEP] alone need 2")
        pieces = self.tokenize(text)[: max_len - 2]
        ids = [self.cls_id] + [self._ids.get(piece, self.unk_id) for piece in pieces] + [self.sep_id]
        return np.array(ids, dtype=np.int32)

    def encode_padded(self, text, max_len):
        """Return (ids, mask), both int32 of length `max_len`: `encode` padded with [PAD], mask 1 on real tokens."""
        ids = self.encode(text, max_len)
        padded = np.full(max_len, self.pad_id, dtype=np.int32)
        padded[: len(ids)] = ids
        mask = np.zeros(max_len, dtype=np.int32)
        mask[: len(ids)] = 1
        return padded, mask

    def decode(self, ids):
        """Return the text of `ids` up to the first [SEP], without special tokens and with `##` pieces merged."""
        words = []
        for token_id in (int(i) for i in ids):
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            if token_id == self.sep_id:
                break
            if token_id in self._special_ids:
                continue
            token = self.tokens[token_id]
            if token.startswith(SUFFIX) and len(token) > len(SUFFIX):
                piece = token[len(SUFFIX) :]
                if words:
                    words[-1] += piece
                else:
                    words.append(piece)
            else:
                words.append(token)
        return join_words(words)


def join_words(words):
    """Join words with single spaces, except next to CJK characters and full-width punctuation."""
    text = ""
    for word in words:
        if text and not (_is_tight(text[-1]) or _is_tight(word[0])):
            text += " "
        text += word
    return text


def _is_tight(char):
    """True for characters written without spaces around them: CJK ideographs and non-ASCII punctuation."""
    code = ord(char)
    cjk = (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2EBEF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )
    return cjk or (code > 127 and unicodedata.category(char).startswith("P"))
