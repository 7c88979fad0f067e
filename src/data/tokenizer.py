"""BERT WordPiece tokenizer, id for id the tokenizer of bert-base-chinese, with this repository's encode / decode.

Words come from BERT's basic tokenizer (`src.utils.text`: clean, lower-case + NFD + strip accents, CJK characters and
punctuation split off; full-width forms such as `，` `！` `Ａ` `①` stay full-width), then WordPiece: greedy
longest-match-first with `##` continuation pieces, and [UNK] for a word of more than MAX_WORD_CHARS characters or one
that cannot be pieced together. This is Google BERT's `FullTokenizer`, as HuggingFace BERT (with its default
`max_input_chars_per_word=100`) and Chinese-CLIP run it; special tokens written in the text are split like any other
text, so text cannot inject [SEP] or [MASK].

Encoded text is `[CLS] pieces [SEP]`; the text decoder uses [CLS] as BOS and [SEP] as EOS, and [PAD] (id 0 in the
supported vocabularies) is never an end marker.
"""

import hashlib
import unicodedata

import numpy as np

from src.data.vocab import read_vocab
from src.errors import UserError
from src.utils.text import basic_tokenize, is_chinese_char

DEFAULT_VOCAB = "vocab/bert-base-chinese.txt"
SUFFIX = "##"
MAX_WORD_CHARS = 100    # longer words become one [UNK] (HuggingFace BERT's max_input_chars_per_word)
# Names the text -> ids rules above. Token ids stored in MindRecords are valid only for the rules and the vocabulary
# they were made with: change this name whenever the rules change, so that older MindRecords are refused.
TOKENIZER_RULES = "bert-basic+wordpiece-100"
_WORD_CACHE = 1 << 16   # words whose pieces are remembered (CJK characters never need it: they are vocabulary tokens)


def tokenizer_fingerprint(vocab_sha256, lower_case):
    """Fingerprint of the text -> ids mapping: the rules (TOKENIZER_RULES), `lower_case` and the vocabulary's sha256."""
    text = f"{TOKENIZER_RULES}\nlower_case={bool(lower_case)}\nvocab_sha256={vocab_sha256}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Tokenizer:
    """Text <-> token ids over the vocabulary file `vocab_path` (one token per line, see src/data/vocab.py).

    `lower_case=False` neither lower-cases nor strips accents (BERT's do_lower_case=False)."""

    def __init__(self, vocab_path=DEFAULT_VOCAB, lower_case=True):
        self.tokens = read_vocab(vocab_path)
        self.lower_case = bool(lower_case)
        self._ids = {token: index for index, token in enumerate(self.tokens)}
        # whole words that are vocabulary tokens; a longer token than MAX_WORD_CHARS is no word's id: its word is [UNK]
        self._words = {token: index for token, index in self._ids.items() if len(token) <= MAX_WORD_CHARS}
        self._pieces = {}   # word -> tuple of ids, for words that are not vocabulary tokens themselves
        self._skipped_ids = {self._ids["[CLS]"], self._ids["[PAD]"]}

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

    def ids(self, text):
        """The token ids of `text`'s pieces, without [CLS] / [SEP] (a list of ints)."""
        ids, vocab = [], self._words
        for word in basic_tokenize(text, self.lower_case):
            token_id = vocab.get(word)
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self._word_pieces(word))
        return ids

    def tokenize(self, text):
        """Split `text` into vocabulary pieces; a word that cannot be pieced together becomes [UNK]."""
        return [self.tokens[token_id] for token_id in self.ids(text)]

    def encode(self, text, max_len):
        """Return int32 ids `[CLS] pieces [SEP]`, pieces cut so that the whole is at most `max_len` long."""
        if max_len < 2:
            raise UserError(f"max_len {max_len} is too small: [CLS] and [SEP] alone need 2")
        ids = [self.cls_id] + self.ids(text)[: max_len - 2]
        ids.append(self.sep_id)
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
        """Return the text of `ids` up to the first [SEP]: [CLS] and [PAD] are skipped, every other token is shown
        ([UNK] and [MASK] included), `##` pieces are merged into their word, and the words are joined by
        `join_words` (no spaces around CJK characters and full-width punctuation)."""
        words = []
        for token_id in (int(i) for i in ids):
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            if token_id == self.sep_id:
                break
            if token_id in self._skipped_ids:
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

    def _word_pieces(self, word):
        """WordPiece ids of one basic-tokenizer word that is not itself a vocabulary token (cached)."""
        pieces = self._pieces.get(word)
        if pieces is None:
            pieces = self._greedy_pieces(word)
            if len(self._pieces) >= _WORD_CACHE:
                self._pieces.clear()
            self._pieces[word] = pieces
        return pieces

    def _greedy_pieces(self, word):
        """Greedy longest-match-first: the longest vocabulary token that starts the rest of the word (`##`-prefixed
        after the first piece), repeatedly; (unk_id,) when some rest has no such token or the word is too long."""
        if len(word) > MAX_WORD_CHARS:
            return (self.unk_id,)
        pieces, start, vocab = [], 0, self._ids
        while start < len(word):
            for end in range(len(word), start, -1):
                token_id = vocab.get(word[start:end] if start == 0 else SUFFIX + word[start:end])
                if token_id is not None:
                    break
            else:
                return (self.unk_id,)
            pieces.append(token_id)
            start = end
        return tuple(pieces)


def join_words(words):
    """Join words with single spaces, except next to CJK characters and full-width (non-ASCII) punctuation, before
    the ASCII marks that close a phrase (`. , ! ? ; : ) ] }`), after those that open one (`( [ {`) and on both sides
    of an apostrophe (`it's`)."""
    text = ""
    for word in words:
        if text and not (_is_tight(text[-1]) or _is_tight(word[0]) or word[0] in _CLOSING or text[-1] in _OPENING):
            text += " "
        text += word
    return text


_CLOSING = frozenset(".,!?;:)]}'")
_OPENING = frozenset("([{'")


def _is_tight(char):
    """True for characters written without spaces around them: CJK ideographs and non-ASCII punctuation."""
    return is_chinese_char(char) or (ord(char) > 127 and unicodedata.category(char).startswith("P"))
