"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, for Chinese and English.

Scores keep pycocoevalcap's scales: BLEU, METEOR and ROUGE-L in [0, 1], CIDEr-D in [0, 10] (papers print x100).
METEOR and the English PTB tokenizer are Java programs shipped inside pycocoevalcap; without ``java`` on PATH they
are skipped (one notice line on stderr) and the result lists them under ``"skipped"``. SPICE is not offered.
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pycocoevalcap.meteor.meteor as coco_meteor
import pycocoevalcap.tokenizer.ptbtokenizer as coco_ptb
from pycocoevalcap.bleu.bleu import Bleu
# pycocoevalcap's Cider is CIDEr-D (the variant the COCO server reports): n-grams 1-4, tf-idf with the idf taken
# from the evaluated references, counts clipped to the reference's, a Gaussian length penalty (sigma 6), x10 and
# no stemming. Because the idf comes from the evaluated set, a single image always scores 0.
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from src.errors import UserError
from src.metrics.ids import check_same_ids
from src.utils.text import normalize_text, remove_punctuation, words_without_punctuation

LANGS = ("zh", "en")
ZH_TOKENIZERS = ("char", "space")
_JAVA_TIMEOUT = 600.0   # seconds for one METEOR or PTB-tokenizer process
_LOG = logging.getLogger(__name__)


def caption_metrics(predictions, references, lang="zh", zh_tokenize="char", java_timeout=_JAVA_TIMEOUT):
    """Corpus caption metrics of ``predictions`` ({id: caption}) against ``references`` ({id: [captions]}).

    Both dicts must cover the same ids. Chinese text is normalised as the tokenizer normalises it, loses its
    punctuation and is split into the tokenizer's words (``zh_tokenize="char"``: each CJK character a word, runs of
    other letters/digits whole words; see ``caption_words``) or on whitespace (``"space"``, for pre-segmented text).
    English goes through the PTB tokenizer (lower-cased, punctuation dropped), or without Java through
    ``caption_words`` too. Returns ``bleu1..bleu4``, ``meteor``, ``rouge_l``, ``cider_d``,
    ``n_images`` and ``skipped`` (names of metrics/tools that could not run). A Java tool that fails or runs
    longer than ``java_timeout`` seconds is skipped with a notice instead of failing the evaluation. METEOR's
    stemming and paraphrase tables are English-only, so on Chinese it scores exact token matches only.
    """
    _check_inputs(predictions, references, lang, zh_tokenize)
    ids = list(references)
    java = shutil.which("java")
    skipped = []
    if java is None:
        skipped = ["METEOR"] + (["PTBTokenizer"] if lang == "en" else [])
        _notice(f"java not found on PATH; skipping {' and '.join(skipped)}"
                + (" (English uses a lower-case + punctuation split)" if lang == "en" else "")
                + "; install Java 8+ for the full set")
    texts = [predictions[key] for key in ids] + [ref for key in ids for ref in references[key]]
    if lang == "zh":
        tokens = [" ".join(tokenize_chinese(text, zh_tokenize)) for text in texts]
    else:
        tokens = _tokenize_english(texts, java, java_timeout, skipped)
    res = {key: [tokens[index]] for index, key in enumerate(ids)}
    gts, position = {}, len(ids)
    for key in ids:
        gts[key] = tokens[position:position + len(references[key])]
        position += len(references[key])

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result = {f"bleu{n + 1}": float(score) for n, score in enumerate(bleu)}
    if java is not None:
        try:
            result["meteor"] = _meteor(gts, res, java, java_timeout)
        except RuntimeError as error:
            _notice(f"METEOR skipped: {error}")
            skipped.append("METEOR")
    result["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    result["cider_d"] = float(Cider().compute_score(gts, res)[0])
    result["n_images"] = len(ids)
    result["skipped"] = skipped
    return result


def _notice(message):
    print(f"notice: {message}", file=sys.stderr)


def _check_inputs(predictions, references, lang, zh_tokenize):
    if lang not in LANGS:
        raise UserError(f"caption metrics: unknown language {lang!r}; use one of {', '.join(LANGS)}")
    if zh_tokenize not in ZH_TOKENIZERS:
        raise UserError(f"caption metrics: unknown zh_tokenize {zh_tokenize!r}; use one of {', '.join(ZH_TOKENIZERS)}")
    if not references:
        raise UserError("caption metrics: no references to evaluate against")
    check_same_ids("caption metrics", predictions, references, "references", "image")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise UserError(f"caption metrics: id {empty[0]!r} has no reference caption; give at least one")


def _tokenize_english(texts, java, timeout, skipped):
    """PTB tokens when Java works, else a lower-case + punctuation split (recorded in ``skipped``)."""
    if java is not None:
        try:
            return _ptb_tokenize(texts, java, timeout)
        except RuntimeError as error:
            _notice(f"PTB tokenizer skipped, English uses a lower-case + punctuation split: {error}")
            skipped.append("PTBTokenizer")
    return [" ".join(caption_words(text)) for text in texts]


def caption_words(text):
    """The words of a caption for scoring: the tokenizer's words (BERT's basic tokenizer, lower-cased: each CJK
    character a word, other runs kept whole, accents stripped, full-width forms kept) without the punctuation ones.
    References and predictions are normalised exactly as the tokenizer normalises text (`src.utils.text`)."""
    return words_without_punctuation(text, lower_case=True)


def tokenize_chinese(text, mode="char"):
    """Chinese caption tokens: `caption_words` for ``mode="char"``; for ``mode="space"`` (pre-segmented text) the
    same normalisation and punctuation removal, then a split at whitespace only."""
    if mode == "space":
        return remove_punctuation(normalize_text(text, lower_case=True), " ").split()
    return caption_words(text)


def _ptb_tokenize(texts, java, timeout):
    """Stanford PTB tokenizer (the jar shipped with pycocoevalcap), lower-cased, COCO punctuation dropped."""
    jar = os.path.join(os.path.dirname(coco_ptb.__file__), coco_ptb.STANFORD_CORENLP_3_4_1_JAR)
    command = [java, "-Dfile.encoding=UTF-8", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    lines = "\n".join(" ".join(text.split()) for text in texts) + "\n"
    try:
        done = subprocess.run(command, input=lines.encode("utf-8"), capture_output=True, timeout=timeout, check=True)
    except (subprocess.SubprocessError, OSError) as error:
        raise RuntimeError(f"PTB tokenizer failed: {error}") from error
    out = done.stdout.decode("utf-8").split("\n")[:len(texts)]
    if len(out) != len(texts):
        raise RuntimeError(f"PTB tokenizer returned {len(out)} lines for {len(texts)} captions")
    drop = set(coco_ptb.PUNCTUATIONS)
    return [" ".join(word for word in line.split() if word not in drop) for line in out]


def _meteor(gts, res, java, timeout):
    """Corpus METEOR 1.5 (the jar and settings pycocoevalcap uses: -l en -norm) in one Java process that is always
    killed on return; raises RuntimeError if it fails or runs longer than ``timeout`` seconds."""
    jar_dir = os.path.dirname(coco_meteor.__file__)
    command = [java, "-Dfile.encoding=UTF-8", "-Xmx2G", "-jar", coco_meteor.METEOR_JAR, "-", "-", "-stdio",
               "-l", "en", "-norm"]
    start = time.monotonic()
    with tempfile.TemporaryFile() as errors:
        try:
            with subprocess.Popen(command, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=errors) as process:
                watchdog = threading.Timer(timeout, process.kill)
                watchdog.start()
                try:
                    score = _meteor_dialogue(process, gts, res)
                finally:
                    watchdog.cancel()
                    process.kill()
        except (OSError, ValueError) as error:
            elapsed = time.monotonic() - start
            reason = f"timed out after {timeout:.0f} s" if elapsed >= timeout else f"failed ({error})"
            errors.seek(0)
            tail = " ".join(errors.read().decode("utf-8", "replace").split())[-300:]
            raise RuntimeError(f"METEOR {reason}" + (f"; java said: {tail}" if tail else "")) from error
    _LOG.info("METEOR on %d captions took %.1f s", len(gts), time.monotonic() - start)
    return score


def _meteor_dialogue(process, gts, res):
    """SCORE line per caption (returns its statistics), then one EVAL line (per-caption scores, then the corpus
    score). Raises OSError/ValueError if the process dies or answers something else."""
    def ask(line):
        process.stdin.write((line + "\n").encode("utf-8"))
        process.stdin.flush()
        return read()

    def read():
        answer = process.stdout.readline().decode("utf-8").strip()
        if not answer:
            raise OSError("the METEOR process stopped answering")
        return answer

    stats = [ask(" ||| ".join(["SCORE"] + [_meteor_text(ref) for ref in gts[key]] + [_meteor_text(res[key][0])]))
             for key in gts]
    ask(" ||| ".join(["EVAL"] + stats))
    for _ in range(len(stats) - 1):
        read()
    return float(read())


def _meteor_text(text):
    """METEOR's field separator and line breaks must not appear inside a caption."""
    return " ".join(text.replace("|||", " ").split())
