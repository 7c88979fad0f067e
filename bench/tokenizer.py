"""Tokenizer speed: sentences/s of this repository's BERT tokenizer against MindSpore's `BertTokenizer`.

Both turn each text into token ids (MindSpore's pieces looked up in the vocabulary, as the tokenizer of this
repository did before it became BERT-exact), one text at a time as the MindRecord builder and inference do, after
one untimed pass. The texts are the captions of --manifest, or by default the Chinese and English captions of the
demo's scenes (no images rendered). The result also counts the texts whose ids differ between the two: MindSpore's
lower-casing is NFKC case folding (`，` -> `,`, `Ａ` -> `a`, `①` -> `1`), BERT's is not.
"""
import os
import time

from bench import print_table
from src.data.tokenizer import DEFAULT_VOCAB, Tokenizer
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser):
    parser.add_argument("--vocab", default=os.path.join(ROOT, DEFAULT_VOCAB),
                        help="vocabulary file (default: bert-base-chinese, from scripts/fetch_vocab.sh)")
    parser.add_argument("--manifest", default=None, help="time the captions, questions and answers of this manifest")
    parser.add_argument("--texts", type=int, default=5000, help="texts to tokenise (default 5000)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the texts (default 1)")


def run(args):
    from mindspore.dataset.text import BertTokenizer, Vocab

    if args.texts < 1 or args.repeats < 1:
        raise UserError("--texts and --repeats must be >= 1")
    texts = _texts(args.manifest, args.texts)
    ours = Tokenizer(args.vocab)
    vocab = {token: index for index, token in enumerate(ours.tokens)}
    split = BertTokenizer(Vocab.from_list(ours.tokens), suffix_indicator="##", unknown_token="[UNK]",
                          lower_case=True, preserve_unused_token=False)

    def mindspore_ids(text):
        return [vocab.get(str(piece), ours.unk_id) for piece in split(text) if piece] if text.strip() else []

    rows = [_timed("mindspore BertTokenizer", mindspore_ids, texts, args.repeats),
            _timed("src.data.tokenizer (BERT)", ours.ids, texts, args.repeats)]
    rows[1]["speed-up"] = rows[1]["sentences_per_s"] / rows[0]["sentences_per_s"]
    differ = sum(mindspore_ids(text) != ours.ids(text) for text in texts)
    results = {"benchmark": "tokenizer", "vocab": os.path.basename(args.vocab),
               "texts": args.manifest or "demo scene captions (zh + en)", "n_texts": len(texts),
               "repeats": args.repeats, "rows": rows, "texts_with_different_ids": differ,
               "different_fraction": round(differ / len(texts), 4)}
    print_table(f"tokenizing {len(texts)} texts ({results['texts']}) with {results['vocab']}, one at a time; "
                f"ids differ on {differ} ({100 * differ / len(texts):.1f}%)", rows,
                ["tokenizer", "sentences_per_s", "seconds", "speed-up"])
    return results


def _timed(name, ids_of, texts, repeats):
    for text in texts:
        ids_of(text)
    start = time.perf_counter()
    for _ in range(repeats):
        for text in texts:
            ids_of(text)
    seconds = (time.perf_counter() - start) / repeats
    return {"tokenizer": name, "sentences_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 3)}


def _texts(manifest, limit):
    """Up to `limit` texts: those of the manifest, or the demo scenes' captions (cycled when there are fewer)."""
    if manifest is not None:
        from src.data.manifest import read_manifest
        from src.data.vocab import manifest_texts
        texts = list(manifest_texts(read_manifest(manifest)))
        if not texts:
            raise UserError(f"manifest {manifest} holds no text")
    else:
        from demo.data import all_scenes, describe_scene
        singles, pairs = all_scenes()
        texts = [caption for scene in singles + pairs for lang in ("zh", "en")
                 for caption in describe_scene(scene, lang)]
        texts = texts[::max(1, len(texts) // limit)]   # spread over the scenes: one- and two-object captions
    return [texts[i % len(texts)] for i in range(limit)]
