"""Turn a manifest into MindRecord files: validate every sample, extract its features, count and report rejects.

    python -m src.data.build_mindrecord --manifest data/demo/train.jsonl --out data/mr/train.mindrecord \
        --vocab vocab/bert-base-chinese.txt [--shards 1] [--workers 2] [--strict] [--max_frames 512] [--image_size 0] \
        [--min_image_size 32] [--text_max_len 50]

One record per accepted manifest sample (fields in `record_schema`). Rejected samples are never dropped silently:
`<out>.report.json` counts them per reason and lists the first ones; `--strict` makes any reject an error. Next to
the data, `<out>.meta.json` records the vocabulary (path and sha256), the tokenizer's fingerprint (its rules,
lower_case and vocabulary: `tokenizer_fingerprint`) and what the data holds; the dataset builders
(`src/data/pretrain_data.py`, `src/data/finetune_data.py`) read it. Output is atomic: files are written in a
temporary folder, then moved into place, the meta file last. A build that fails (`--strict` with rejects, or nothing
accepted) removes the MindRecord of an earlier build at `<out>`, so that it cannot pass for this manifest's; the
error and the report's `removed_previous` name the removed files.
"""
import argparse
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from collections import Counter

import numpy as np
from PIL import Image
from src.utils.progress import progress

from src.data.manifest import _resolved, captions_of, check_sample
from src.data.regions import read_regions
from src.data.tokenizer import Tokenizer, tokenizer_fingerprint
from src.data.transforms import load_audio, to_rgb
from src.errors import UserError
from src.utils.files import atomic_write_text

MAX_TEXT_TOKENS = 512        # stored token ids per caption / question, [CLS] and [SEP] included
N_MELS = 80                  # log-mel bins of audio read from .wav files
KEPT_IMAGE_FORMATS = ("JPEG", "PNG")
JPEG_QUALITY = 95
WRITE_CHUNK = 64             # records per FileWriter.write_raw_data call
REPORTED_REJECTS = 20
SHOWN_IN_ERROR = 3
# Images whose shorter side is below this are reported as upsampled (a warning, not a reject: --strict accepts them).
# 32 px: below it an image is an icon or thumbnail that holds little detail once stretched to a model's 224 px
# (32 px is also the smallest resolution images are commonly trained at, as ImageNet 32x32 / CIFAR); the repository's
# own small data (the demo's 64 px images, the tiny test model's 32 px) stay unflagged.
MIN_IMAGE_SIZE = 32
TEXT_MAX_LEN = 50            # config/defaults.yaml model.text.max_len: texts longer are cut when a model reads them
# per-record counts whose first REPORTED_REJECTS sample ids (of samples with a non-zero count) the report lists
LISTED_IDS = ("upsampled", "texts_with_unk", "texts_over_max_len")
STATS = "_stats"             # per-record counts for the report, removed before writing

REASONS = {
    "invalid_utf8": "the line is not UTF-8",
    "invalid_json": "the line is not a JSON object",
    "invalid_sample": "a field breaks the manifest format",
    "duplicate_id": "the id repeats an earlier line",
    "empty_text": "no usable caption, or an empty question / answer / rationale",
    "missing_image": "no image field or no image file",
    "bad_image": "the image cannot be decoded or is truncated",
    "bad_audio": "the audio cannot be read",
    "bad_image_tokens": "the image-token file cannot be read",
    "missing_regions": "no region-feature file while other samples have one",
    "bad_regions": "the region-feature file cannot be read or has the wrong shapes",
}


class Rejected(Exception):
    """A sample that cannot be used; `reason` is a key of REASONS, the message says what is wrong."""

    def __init__(self, reason, message, sample_id=None):
        super().__init__(message)
        self.reason = reason
        self.sample_id = sample_id


def record_schema(audio_dim, region_width=0):
    """The MindRecord schema of one sample (see the module docstring of src/data/pretrain_data.py for the meaning).
    `region_width` > 0 adds `regions` (K, feature_dim + box_dim) float32: the image's region features and boxes."""
    regions = {"regions": {"type": "float32", "shape": [-1, region_width]}} if region_width else {}
    return {**regions,
        "index": {"type": "int64"},
        "id": {"type": "string"},
        "image_id": {"type": "string"},
        "image": {"type": "bytes"},
        "caption_ids": {"type": "int32", "shape": [-1]},
        "caption_lens": {"type": "int32", "shape": [-1]},
        "captions": {"type": "string"},
        "audio": {"type": "float32", "shape": [-1, audio_dim]},
        "audio_frames": {"type": "int32"},
        "question_ids": {"type": "int32", "shape": [-1]},
        "answers": {"type": "string"},
        "answer_scores": {"type": "string"},
        "rationales": {"type": "string"},
        "lang": {"type": "string"},
        "image_tokens": {"type": "int32", "shape": [-1]},
    }


def vocab_sha256(path):
    """sha256 of the vocabulary file's bytes: records hold token ids, valid only with this exact vocabulary."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as err:
        raise UserError(f"vocabulary file {path} cannot be read ({err.strerror}); check --vocab / data.vocab") from err


# ------------------------------------------------------------------------------------------- reading the manifest


def scan_manifest(path):
    """Read the manifest line by line as bytes; return (jobs, rejects).

    jobs: (line_no, sample) with the sample resolved like `read_manifest` does; rejects: dicts (line, id, reason,
    message; a repeated id also first_line, the line that used it first) for lines that are not UTF-8, not JSON, break
    the format, repeat an id or have no usable text.
    """
    if not os.path.isfile(path):
        raise UserError(f"manifest {path} not found")
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    if raw_lines and raw_lines[0].startswith(b"\xef\xbb\xbf"):
        raw_lines[0] = raw_lines[0][3:]
    jobs, rejects, line_of_id = [], [], {}
    for line_no, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            sample = _parse_line(raw, where)
            if sample["id"] in line_of_id:
                raise Rejected("duplicate_id", f"{where}: id {sample['id']!r} already used on line "
                                               f"{line_of_id[sample['id']]}; ids must be unique", sample["id"])
        except Rejected as err:
            rejects.append(_reject_entry(line_no, err))
            if err.reason == "duplicate_id":
                rejects[-1]["first_line"] = line_of_id[err.sample_id]
            continue
        line_of_id[sample["id"]] = line_no
        resolved = _resolved(sample, folder)
        if "image_tokens" in resolved:
            resolved["image_tokens_path"] = os.path.normpath(os.path.join(folder, resolved["image_tokens"]))
        jobs.append((line_no, resolved))
    return jobs, rejects


def _parse_line(raw, where):
    """One manifest line (bytes) -> the sample dict, or Rejected."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected("invalid_utf8", f"{where}: not UTF-8 (bad byte at column {err.start + 1}); "
                                       "save the manifest as UTF-8") from None
    try:
        sample = json.loads(text)
    except json.JSONDecodeError as err:
        raise Rejected("invalid_json", f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                                       "fix or remove the line") from None
    if not isinstance(sample, dict):
        raise Rejected("invalid_json", f"{where}: expected a JSON object, got {type(sample).__name__}; "
                                       "fix or remove the line")
    sample_id = sample.get("id") if isinstance(sample.get("id"), str) else None
    try:
        _check_text(sample, where)
        check_sample(sample, where)
    except Rejected as err:
        err.sample_id = sample_id
        raise
    except UserError as err:
        raise Rejected("invalid_sample", str(err), sample_id) from None
    return sample


def _blank(value):
    return isinstance(value, str) and not value.strip()


def _check_text(sample, where):
    """Reject a sample without text: VQA lines need a non-blank question and, when `answers` is given (it may be left
    out for unlabelled test questions), at least one answer and no blank one, and no blank rationale; other lines need
    non-blank captions."""
    if "question" in sample or "answers" in sample:
        answers, rationales = sample.get("answers"), sample.get("rationales", [])
        if _blank(sample.get("question", "")) or answers == [] or (
                isinstance(answers, list) and any(_blank(answer) for answer in answers)):
            raise Rejected("empty_text", f"{where}: empty question or answers; write them or remove the line")
        if isinstance(rationales, list) and any(_blank(rationale) for rationale in rationales):
            raise Rejected("empty_text", f"{where}: blank rationale; write it or remove it from 'rationales'")
        scores = sample.get("answer_scores", [])
        if isinstance(scores, list) and any(isinstance(score, (int, float)) and not 0 <= score < float("inf")
                                            for score in scores):
            raise Rejected("invalid_sample", f"{where}: 'answer_scores' must be finite and >= 0 (confidences); "
                                             "fix them or remove the field")
        return
    captions = sample.get("captions", [sample["text"]] if "text" in sample else [])
    if isinstance(captions, list) and (not captions or any(_blank(caption) for caption in captions)):
        raise Rejected("empty_text", f"{where}: missing or blank caption; write the caption or remove it")


def _reject_entry(line_no, err):
    return {"line": line_no, "id": err.sample_id, "reason": err.reason, "message": str(err)}


def _region_dims(jobs):
    """(feature_dim, box_dim) of the first readable region-feature file, or (0, 0) when no sample has one."""
    for _, sample in jobs:
        path = sample.get("regions_path")
        if path is None:
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                feat = data["feat"]
                boxes = data["boxes"] if "boxes" in data.files else np.zeros((len(feat), 7))
        except (OSError, ValueError, KeyError):
            continue
        if feat.ndim == 2 and boxes.ndim == 2:
            return int(feat.shape[1]), int(boxes.shape[1])
    return 0, 0


def _audio_dim(jobs):
    """Width D of the stored audio frames: N_MELS for .wav files, else that of the first readable .npy file."""
    for _, sample in jobs:
        path = sample.get("audio_path")
        if path is None:
            continue
        if not path.lower().endswith(".npy"):
            return N_MELS
        try:
            features = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            continue
        if features.ndim == 2:
            return int(features.shape[1])
    return N_MELS


# ------------------------------------------------------------------------------------------ one sample -> record

_SETTINGS = {}


def _init_worker(settings):
    """Set up this process for `process_sample` (called once per pool worker, or once in the main process)."""
    _SETTINGS.clear()
    _SETTINGS.update(settings)
    _SETTINGS["tokenizer"] = Tokenizer(settings["vocab"], lower_case=settings["lower_case"])


def process_sample(job):
    """(line_no, sample) -> ("ok", line_no, record without index) or ("rejected", line_no, reject entry)."""
    line_no, sample = job
    where = f"line {line_no} (id {sample['id']!r})"
    try:
        record = _record(sample, where, _SETTINGS)
    except Rejected as err:
        err.sample_id = sample["id"]
        return "rejected", line_no, _reject_entry(line_no, err)
    return "ok", line_no, record


def _record(sample, where, settings):
    tokenizer = settings["tokenizer"]
    captions = captions_of(sample)
    caption_ids = [tokenizer.encode(caption, MAX_TEXT_TOKENS) for caption in captions]
    question = sample.get("question", "")
    stats = _text_stats(tokenizer, captions + ([question] if question else []), settings["text_max_len"])
    image = b""
    if "image_path" in sample:
        image, image_stats = _image_bytes(sample["image_path"], where, settings["image_size"])
        stats["upsampled"] = image_stats.pop("shorter") < settings["min_image_size"]
        stats.update(image_stats)
    elif settings["require_image"]:
        raise Rejected("missing_image", f"{where}: no 'image' field while other samples have one; add the image")
    audio = _empty((0, settings["audio_dim"]), np.float32)
    if "audio_path" in sample:
        audio = _audio_frames(sample["audio_path"], where, settings)
    regions = {}
    if settings["region_dim"]:
        if "regions_path" not in sample:
            raise Rejected("missing_regions", f"{where}: no 'regions' field while other samples have one; add the "
                                              f"image's region-feature .npz")
        try:
            feats, boxes = read_regions(sample["regions_path"], settings["region_dim"], settings["region_box_dim"])
        except UserError as err:
            raise Rejected("bad_regions", f"{where}: {err}") from None
        regions = {"regions": np.concatenate([feats, boxes], 1)}
    tokens = _empty((0,), np.int32)
    if "image_tokens_path" in sample:
        tokens = _image_tokens(sample["image_tokens_path"], where)
    return {
        **regions,
        "id": sample["id"],
        "image_id": sample["image_id"],
        "image": image,
        "caption_ids": np.concatenate(caption_ids) if caption_ids else _empty((0,), np.int32),
        "caption_lens": np.array([len(ids) for ids in caption_ids], dtype=np.int32),
        "captions": json.dumps(captions, ensure_ascii=False),
        "audio": audio,
        "audio_frames": np.int32(len(audio)),
        "question_ids": tokenizer.encode(question, MAX_TEXT_TOKENS) if question else _empty((0,), np.int32),
        "answers": json.dumps(sample.get("answers", []), ensure_ascii=False),
        "answer_scores": json.dumps([float(score) for score in sample.get("answer_scores", [])]),
        "rationales": json.dumps(sample.get("rationales", []), ensure_ascii=False),
        "lang": sample["lang"],
        "image_tokens": tokens,
        STATS: stats,
    }


def _text_stats(tokenizer, texts, max_len):
    """Counts over a sample's tokenised texts (captions and question): tokens and [UNK] tokens ([CLS] / [SEP] not
    counted), texts holding [UNK], texts cut at the stored MAX_TEXT_TOKENS, texts longer than `max_len` (with
    [CLS] and [SEP]); the *_with_unk / *_over_max_len flags say whether any text of the sample is."""
    pieces = [tokenizer.ids(text) for text in texts]
    unk = [piece.count(tokenizer.unk_id) for piece in pieces]
    return {"texts": len(texts), "text_tokens": sum(map(len, pieces)), "unk_tokens": sum(unk),
            "texts_with_unk": sum(n > 0 for n in unk),
            "texts_cut": sum(len(piece) + 2 > MAX_TEXT_TOKENS for piece in pieces),
            "texts_over_max_len": sum(len(piece) + 2 > max_len for piece in pieces)}


def _empty(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def _image_bytes(path, where, image_size):
    """(bytes, stats) of the image file after a full decode check. The bytes are the file's own, or, when it is not
    JPEG/PNG or is downscaled, the image re-encoded with its EXIF orientation applied (`to_rgb`): as PNG when it has
    transparency (kept: the reader composites it onto data.background), else as JPEG. stats: rotated (EXIF
    orientation), composited (some pixel not opaque)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise Rejected("missing_image", f"{where}: image {path} cannot be read ({err.strerror}); "
                                        "fix the path or remove the line") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise Rejected("bad_image", f"{where}: image {path} is corrupt or truncated ({err}); "
                                    "replace the file or remove the line") from None
    kept_format = image.format in KEPT_IMAGE_FORMATS
    image, rotated, composited = to_rgb(image, background=None)
    shorter = min(image.size)
    stats = {"rotated": rotated, "composited": composited, "shorter": shorter}
    downscale = 0 < image_size < shorter
    if kept_format and not downscale:
        return data, stats
    if downscale:
        scale = image_size / shorter
        size = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    if image.mode == "RGBA":
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), stats


def _audio_frames(path, where, settings):
    """float32 (T, D) frames, T <= max_frames: log-mel of a .wav or the features of a .npy."""
    try:
        frames, mask = load_audio(path, settings["max_frames"], n_mels=N_MELS)
    except (UserError, RuntimeError) as err:
        raise Rejected("bad_audio", f"{where}: {err}") from None
    frames = frames[: int(mask.sum())]
    if frames.shape[1] != settings["audio_dim"]:
        raise Rejected("bad_audio", f"{where}: audio {path} has frames of width {frames.shape[1]}, other samples "
                                    f"{settings['audio_dim']}; use one feature size in a manifest")
    if not np.isfinite(frames).all():
        raise Rejected("bad_audio", f"{where}: audio {path} holds NaN or infinite values; re-extract it")
    return np.ascontiguousarray(frames, dtype=np.float32)


def _image_tokens(path, where):
    """VQ codes of an image from a .npy integer grid, flattened row-major to int32."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise Rejected("bad_image_tokens", f"{where}: image tokens {path} cannot be read ({err}); "
                                           "re-extract them") from None
    if codes.size == 0 or codes.dtype.kind not in "iu":
        raise Rejected("bad_image_tokens", f"{where}: image tokens {path} must be a non-empty integer array, "
                                           f"got shape {codes.shape} dtype {codes.dtype}")
    return codes.reshape(-1).astype(np.int32)


# ------------------------------------------------------------------------------------------------------- writing


def build_mindrecord(manifest, out, vocab, shards=1, workers=2, strict=False, max_frames=512, image_size=0,
                     lower_case=True, min_image_size=MIN_IMAGE_SIZE, text_max_len=TEXT_MAX_LEN):
    """Validate `manifest`, write the accepted samples to MindRecord `out` (+ shards); return the report dict.

    Always writes `<out>.report.json`. Raises UserError when nothing is accepted, or with `strict` when anything is
    rejected (then no MindRecord is written).
    """
    if shards < 1 or workers < 1 or max_frames < 1 or image_size < 0 or min_image_size < 0 or text_max_len < 2:
        raise UserError(f"--shards, --workers and --max_frames must be >= 1, --image_size, --min_image_size >= 0 and "
                        f"--text_max_len >= 2, got {shards}, {workers}, {max_frames}, {image_size}, {min_image_size}, "
                        f"{text_max_len}")
    Tokenizer(vocab, lower_case=lower_case)  # fail early on a bad vocabulary file
    jobs, rejects = scan_manifest(manifest)
    scanned = len(jobs) + len(rejects)
    settings = {"vocab": vocab, "lower_case": lower_case, "max_frames": max_frames, "image_size": image_size,
                "min_image_size": min_image_size, "text_max_len": text_max_len,
                "audio_dim": _audio_dim(jobs), "require_image": any("image_path" in s for _, s in jobs)}
    settings["region_dim"], settings["region_box_dim"] = _region_dims(jobs)
    out = os.path.abspath(out)
    folder, name = os.path.split(out)
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(dir=folder, prefix=f"{name}.tmp")
    try:
        summary = _write_records(jobs, os.path.join(tmp_dir, name), shards, workers, settings, rejects)
        report = _report(manifest, out, vocab, settings, summary, rejects, strict)
        failure = None
        if rejects and strict:
            shown = "; ".join(entry["message"] for entry in rejects[:SHOWN_IN_ERROR])
            failure = f"--strict: {len(rejects)} of {scanned} samples rejected, first: {shown}"
        elif summary["accepted"] == 0:
            failure = f"no sample of {manifest} was accepted"
        if failure:
            # a MindRecord of an earlier build must not pass for this manifest's: remove it, and say so
            report["removed_previous"] = _remove_previous(folder, name)
        atomic_write_text(f"{out}.report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if failure:
            removed = report["removed_previous"]
            if removed:
                failure += (f"; the previous MindRecord at {out} ({', '.join(removed)}) was removed so that it "
                            "cannot be taken for this manifest's; fix the manifest and rebuild")
            raise UserError(f"{failure}; see {out}.report.json")
        _move_into_place(tmp_dir, folder, summary["files"])
        atomic_write_text(f"{out}.meta.json", json.dumps(_meta(report, summary), indent=2, ensure_ascii=False))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return report


def _write_records(jobs, tmp_out, shards, workers, settings, rejects):
    """Process the jobs (in a pool when workers > 1), stream accepted records into FileWriter; append rejects."""
    from mindspore.mindrecord import FileWriter  # heavy import, only where records are written

    writer = FileWriter(tmp_out, shard_num=shards, overwrite=True)
    writer.add_schema(record_schema(settings["audio_dim"], _region_width(settings)), "OPT manifest samples")
    flags = {"has_audio": False, "has_vqa": False, "has_answer_scores": False, "has_image_tokens": False,
             "has_captions": True, "has_rationales": True, "has_image": settings["require_image"]}
    pending, accepted, counts, listed = [], 0, Counter(), {key: [] for key in LISTED_IDS}
    audio_samples = 0  # records with a clip; the others store 0 frames (audio_frames 0: no real frame)
    bar = progress(total=len(jobs), desc="mindrecord", unit="sample")
    for status, _, result in _processed(jobs, workers, settings):
        bar.update()
        if status == "rejected":
            rejects.append(result)
            continue
        result["index"] = accepted
        stats = result.pop(STATS)
        counts.update({key: int(value) for key, value in stats.items()})
        for key, ids in listed.items():
            if stats.get(key) and len(ids) < REPORTED_REJECTS:
                ids.append(result["id"])
        accepted += 1
        flags["has_audio"] |= len(result["audio"]) > 0
        audio_samples += len(result["audio"]) > 0
        flags["has_vqa"] |= len(result["question_ids"]) > 0
        flags["has_answer_scores"] |= result["answer_scores"] != "[]"
        flags["has_image_tokens"] |= len(result["image_tokens"]) > 0
        flags["has_captions"] &= len(result["caption_lens"]) > 0
        flags["has_rationales"] &= result["rationales"] != "[]"
        pending.append(result)
        if len(pending) == WRITE_CHUNK:
            writer.write_raw_data(pending)
            pending = []
    bar.close()
    if pending:
        writer.write_raw_data(pending)
    if accepted:
        writer.commit()
    # FileWriter numbers shards with zero-padded suffixes from 11 shards on (name00 ... name31)
    width = len(str(shards - 1))
    files = [os.path.basename(tmp_out)] if shards == 1 else [f"{os.path.basename(tmp_out)}{str(k).rjust(width, '0')}"
                                                             for k in range(shards)]
    rejects.sort(key=lambda entry: entry["line"])
    return {"accepted": accepted, "files": files, "counts": counts, "listed": listed, "audio_samples": audio_samples,
            **flags}


def _processed(jobs, workers, settings):
    """Yield process_sample results in manifest order."""
    if workers == 1:
        _init_worker(settings)
        yield from map(process_sample, jobs)
        return
    # spawn, not fork: this process already runs MindSpore threads, which a forked child must not inherit
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (settings,)) as pool:
        yield from pool.imap(process_sample, jobs, chunksize=8)


def _move_into_place(tmp_dir, folder, files):
    """Move the new data files (and their .db index files) into `folder`; remove shards of an earlier build."""
    name = files[0] if len(files) == 1 else files[0][:-1]
    meta = os.path.join(folder, f"{name}.meta.json")
    if os.path.exists(meta):
        os.remove(meta)
    new = {f for data in files for f in (data, f"{data}.db")}
    stale = re.compile(re.escape(name) + r"\d*(\.db)?")
    for old in os.listdir(folder):
        if stale.fullmatch(old) and old not in new:
            os.remove(os.path.join(folder, old))
    for f in sorted(new):
        os.chmod(os.path.join(tmp_dir, f), 0o644)  # FileWriter creates 0600; data is meant to be shared
        os.replace(os.path.join(tmp_dir, f), os.path.join(folder, f))


def _remove_previous(folder, name):
    """Remove the files of an earlier build at `folder/name` (data, shards, .db index files, meta); return their
    names. The meta goes first: without it no pipeline opens the data."""
    meta = f"{name}.meta.json"
    removed = [meta] if os.path.exists(os.path.join(folder, meta)) else []
    if removed:
        os.remove(os.path.join(folder, meta))
    data = re.compile(re.escape(name) + r"\d*(\.db)?")
    for old in sorted(os.listdir(folder)):
        if data.fullmatch(old) and os.path.isfile(os.path.join(folder, old)):
            os.remove(os.path.join(folder, old))
            removed.append(old)
    return removed


def _region_width(settings):
    return settings["region_dim"] + settings["region_box_dim"] if settings["region_dim"] else 0


def _report(manifest, out, vocab, settings, summary, rejects, strict):
    return {
        "manifest": os.path.abspath(manifest),
        "out": out,
        "written": not (strict and rejects) and summary["accepted"] > 0,
        "accepted": summary["accepted"],
        "audio_samples": summary["audio_samples"],
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(entry["reason"] for entry in rejects).items())),
        "first_rejected": rejects[:REPORTED_REJECTS],
        "images": {"rotated": summary["counts"]["rotated"], "composited": summary["counts"]["composited"],
                   "upsampled": summary["counts"]["upsampled"], "first_upsampled": summary["listed"]["upsampled"]},
        "image_notes": {"rotated": "EXIF orientation applied when read (src.data.transforms.to_rgb)",
                        "composited": "some pixels transparent: composited onto data.background when read",
                        "upsampled": f"shorter side below --min_image_size {settings['min_image_size']} px: kept "
                                     "(a warning, not a reject), but stretched a lot to the model's size"},
        "texts": _text_report(summary, settings),
        "reasons": REASONS,
        "vocab": os.path.abspath(vocab),
        "vocab_sha256": vocab_sha256(vocab),
        "settings": {key: settings[key] for key in ("lower_case", "max_frames", "image_size", "min_image_size",
                                                    "text_max_len", "audio_dim", "region_dim", "region_box_dim")},
        "schema": record_schema(settings["audio_dim"], _region_width(settings)),
    }


def _text_report(summary, settings):
    """Tokenised captions and questions: [UNK] counts and share, texts cut (stored limit) or longer than the
    model's text length (--text_max_len), each with the first sample ids."""
    counts, listed = summary["counts"], summary["listed"]
    return {"count": counts["texts"], "tokens": counts["text_tokens"], "unk_tokens": counts["unk_tokens"],
            "unk_share": round(counts["unk_tokens"] / counts["text_tokens"], 6) if counts["text_tokens"] else 0.0,
            "with_unk": counts["texts_with_unk"], "first_with_unk": listed["texts_with_unk"],
            "cut_at_stored_limit": counts["texts_cut"], "stored_limit": MAX_TEXT_TOKENS,
            "over_max_len": counts["texts_over_max_len"], "max_len": settings["text_max_len"],
            "first_over_max_len": listed["texts_over_max_len"],
            "notes": "tokens exclude [CLS] / [SEP]; with_unk: texts holding at least one [UNK] (characters the "
                     "vocabulary lacks: rebuild it with src.data.vocab or check lower_case); over_max_len: texts "
                     "that [CLS] pieces [SEP] makes longer than max_len, cut when a model with model.text.max_len = "
                     "max_len reads them"}


def _meta(report, summary):
    return {
        "files": summary["files"],
        "count": summary["accepted"],
        "vocab": report["vocab"],
        "vocab_sha256": report["vocab_sha256"],
        "tokenizer": tokenizer_fingerprint(report["vocab_sha256"], report["settings"]["lower_case"]),
        "lower_case": report["settings"]["lower_case"],
        "max_frames": report["settings"]["max_frames"],
        "has_image": summary["has_image"],
        "has_captions": summary["has_captions"],
        "has_audio": summary["has_audio"],
        "audio_samples": summary["audio_samples"],
        "audio_dim": report["settings"]["audio_dim"],
        "has_vqa": summary["has_vqa"],
        "has_answer_scores": summary["has_answer_scores"],
        "has_image_tokens": summary["has_image_tokens"],
        "has_regions": report["settings"]["region_dim"] > 0 and summary["accepted"] > 0,
        "region_dim": report["settings"]["region_dim"],
        "region_box_dim": report["settings"]["region_box_dim"],
        "has_rationales": summary["has_rationales"] and summary["accepted"] > 0,
        "manifest": report["manifest"],
        "rejected": report["rejected"],
    }


def summary_line(report):
    """One line for the console: accepted / rejected per reason / where the data went."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in report["rejected_by_reason"].items())
    rejected = f"rejected {report['rejected']}" + (f" ({reasons})" if reasons else "")
    where = report["out"] if report["written"] else "nothing written"
    if report.get("removed_previous"):
        where += f" (previous MindRecord removed: {', '.join(report['removed_previous'])})"
    images, texts = report["images"], report["texts"]
    notes = [f"{n} {what}" for n, what in ((images["upsampled"], "images upsampled"),
                                            (texts["with_unk"], "texts with [UNK]"),
                                            (texts["over_max_len"], f"texts over {texts['max_len']} tokens")) if n]
    notes = f"; warnings: {', '.join(notes)}" if notes else ""
    return f"accepted {report['accepted']}, {rejected}{notes}; {where}; report {report['out']}.report.json"


def _bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.data.build_mindrecord",
                                     description="Validate a manifest and write its samples as MindRecord.")
    parser.add_argument("--manifest", required=True, help="manifest JSONL (see src/data/manifest.py)")
    parser.add_argument("--out", required=True, help="output file, e.g. data/mr/train.mindrecord")
    parser.add_argument("--vocab", required=True, help="vocabulary file the token ids refer to")
    parser.add_argument("--shards", type=int, default=1, help="number of MindRecord files (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes validating and extracting (default 2)")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) if any sample is rejected")
    parser.add_argument("--max_frames", type=int, default=512, help="audio frames kept per sample (default 512)")
    parser.add_argument("--image_size", type=int, default=0,
                        help="downscale images whose shorter side is larger to this size (default 0 = keep)")
    parser.add_argument("--min_image_size", type=int, default=MIN_IMAGE_SIZE,
                        help=f"report images whose shorter side is smaller as upsampled (default {MIN_IMAGE_SIZE}; "
                             "a warning, never a reject)")
    parser.add_argument("--text_max_len", type=int, default=TEXT_MAX_LEN,
                        help=f"report texts longer than this (model.text.max_len, default {TEXT_MAX_LEN})")
    parser.add_argument("--lower_case", type=_bool, default=True, help="lower-case text (default true)")
    args = parser.parse_args(argv)
    try:
        report = build_mindrecord(args.manifest, args.out, args.vocab, shards=args.shards, workers=args.workers,
                                  strict=args.strict, max_frames=args.max_frames, image_size=args.image_size,
                                  lower_case=args.lower_case, min_image_size=args.min_image_size,
                                  text_max_len=args.text_max_len)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
