"""Per-task `mindspore.dataset` pipelines over the MindRecord files of `src.data.build_mindrecord`.

Which samples a rank reads, and in which order, is decided here (`epoch_indices`) and handed to `MindDataset` as a
`SubsetSampler`: every rank reads its own slice of one seeded permutation per epoch, and resuming mid-epoch is slicing
that list. Each sample draws all its randomness (which caption, which tokens / patches / frames to mask) from
`sample_rng(seed, epoch, index)`, and matching from the index list of the global batch (every rank's batch of the
step), so a batch is a pure function of (seed, epoch, index list). Images are decoded and resized by C++ vision ops;
text and masking run in a Python map.
The optional augmentations data.random_crop / data.hflip are C++ ops drawing from `mindspore.dataset.config`'s seed:
with them on, the image crop is the one thing not fixed by (seed, epoch, index).

A stored record (see `record_schema` in build_mindrecord): `index` (row in accepted order), `id`, `image_id`, `image`
(encoded bytes), `regions` (region features | boxes, when the manifest gave region files; model.image.mode features),
`caption_ids` (every caption as [CLS] .. [SEP], concatenated) with `caption_lens`, `captions` (JSON),
`audio` (frames, D) with `audio_frames`, `question_ids`, `answers` (JSON), `answer_scores` (JSON: one confidence per
answer, or empty; only in MindRecords whose meta has `has_answer_scores`), `lang`, `image_tokens` (VQ codes).
MindRecord gives an empty array column back as a 0-d array; `stored_array` turns that into an empty array again.
"""
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import mindspore.dataset as ds

from src.data.build_mindrecord import vocab_sha256
from src.data.labels import ITM_IMAGE_SWAPPED, ITM_MATCHED
from src.data.masking import (gathered_rows, image_token_targets, itm_batch, mask_positions, mask_tokens,
                              mask_whole_text, modality_schedule, pair_match_batch, rank_rows, sample_rng,
                              text_generation_targets)
from src.data.tokenizer import tokenizer_fingerprint
from src.data.regions import pack_regions
from src.data.transforms import image_rules, image_transforms, pad_or_truncate
from src.errors import UserError

PRETRAIN_TASKS = ("mlm", "mvm", "mam", "itm", "itc", "td", "id")
_TASK_NEEDS = {"mam": ("audio",), "id": ("image_tokens",)}
_TASK_EXTRAS = {
    "mlm": ["mlm_positions", "mlm_labels", "mlm_weights"],
    "mvm": ["image_masked"],
    "mam": ["audio_masked"],
    "itm": ["itm_labels", "itm_image_src", "itm_audio_src"],
    "itc": [],
    "td": ["image_masked", "audio_masked", "dec_input", "dec_target", "dec_weights"],
    "id": ["image_masked", "img_dec_input", "img_dec_target", "img_dec_weights"],
}
ITM_STREAM = 1  # separates the random stream of in-batch matching from the per-sample streams


@dataclass(frozen=True)
class MindRecordInfo:
    """A built MindRecord: its data files (absolute paths), its meta dict and its number of records."""
    path: str
    files: tuple
    meta: dict
    count: int


def open_mindrecord(path, vocab_path):
    """Check the MindRecord at `path` (the --out of build_mindrecord, or its first shard) and return its info.

    Raises UserError when the meta file or a data file is missing, when `vocab_path` is not the vocabulary the
    token ids were made with (compared by sha256), or when they were made by other tokenizer rules (an older build:
    the meta's `tokenizer` fingerprint differs). `vocab_path=None` skips both checks (for reading raw text only).
    """
    meta_path = _meta_path(path)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    folder = os.path.dirname(os.path.abspath(meta_path))
    files = tuple(os.path.join(folder, name) for name in meta["files"])
    missing = [f for data in files for f in (data, f"{data}.db") if not os.path.isfile(f)]
    if missing:
        raise UserError(f"MindRecord {path}: missing {', '.join(missing)}; rebuild it with "
                        "`python -m src.data.build_mindrecord`")
    if vocab_path is not None:
        if vocab_sha256(vocab_path) != meta["vocab_sha256"]:
            raise UserError(f"MindRecord {path} was built with the vocabulary {meta['vocab']} (sha256 "
                            f"{meta['vocab_sha256'][:12]}...) but {vocab_path} differs, so its token ids would be "
                            "wrong; set data.vocab to the build's vocabulary or rebuild the MindRecord")
        _check_tokenizer(path, meta_path, meta, vocab_path)
    return MindRecordInfo(path=path, files=files, meta=meta, count=int(meta["count"]))


def _check_tokenizer(path, meta_path, meta, vocab_path):
    """UserError unless the records' token ids come from this code's tokenizer rules (the meta's fingerprint)."""
    expected = tokenizer_fingerprint(meta["vocab_sha256"], meta["lower_case"])
    found = meta.get("tokenizer")
    if found != expected:
        out = meta_path[: -len(".meta.json")]
        options = "".join([f" --shards {len(meta['files'])}" if len(meta["files"]) > 1 else "",
                           "" if meta["lower_case"] else " --lower_case false",
                           f" --max_frames {meta['max_frames']}" if meta.get("max_frames", 512) != 512 else ""])
        built = ("no tokenizer fingerprint (built before the BERT-exact tokenizer, by MindSpore's NFKC-folding "
                 "BertTokenizer)" if found is None else f"tokenizer fingerprint {found}, not this code's {expected}")
        raise UserError(f"MindRecord {path} has {built}, so its token ids are not this tokenizer's; rebuild it: "
                        f"python -m src.data.build_mindrecord --manifest {meta.get('manifest', 'M.jsonl')} "
                        f"--out {out} --vocab {vocab_path}{options}")


def _meta_path(path):
    """`<out>.meta.json` of a MindRecord given as its --out name or as one of its shard files."""
    candidates = [f"{path}.meta.json"]
    stripped = path.rstrip("0123456789")
    if stripped != path:
        candidates.append(f"{stripped}.meta.json")
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"MindRecord {path} not found (no {candidates[0]}); build it with "
                    f"`python -m src.data.build_mindrecord --manifest M.jsonl --out {path} --vocab V.txt`")


def epoch_indices(n, seed, epoch, rank, world, shuffle=True, drop_remainder_to=None):
    """Positions of the records rank `rank` of `world` reads in epoch `epoch`, in reading order.

    One permutation per epoch from np.random.default_rng([seed, epoch]) (identity when not `shuffle`); rank r takes
    perm[r::world]. With `drop_remainder_to` = batch size, the permutation is first cut so that every rank gets the
    same whole number of batches: in one epoch no record is read twice, by any rank.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n) if shuffle else np.arange(n)
    if drop_remainder_to:
        per_rank = n // world // drop_remainder_to * drop_remainder_to
        if per_rank == 0:
            raise UserError(f"{n} samples cannot give each of {world} device(s) one batch of {drop_remainder_to}; "
                            "lower train.batch_size or use more data")
        order = order[: per_rank * world]
    return order[rank::world].astype(np.int64)


def task_requirements(task):
    """The data fields a pretraining task needs beyond images and captions: a tuple from ("audio", "image_tokens")."""
    _check_task(task)
    return _TASK_NEEDS.get(task, ())


def task_columns(task, has_audio):
    """Names of the columns a `task` batch holds, in order (audio columns only when `has_audio`)."""
    if "audio" in task_requirements(task) and not has_audio:
        raise UserError(f"pretraining task '{task}' needs audio; switch it off with --set pretrain.tasks.{task}=0")
    base = ["text_ids", "text_mask", "image"] + (["audio", "frame_mask"] if has_audio else [])
    return base + [c for c in _TASK_EXTRAS[task] if has_audio or c not in ("audio_masked", "itm_audio_src")]


def _check_task(task):
    if task not in PRETRAIN_TASKS:
        raise UserError(f"unknown pretraining task '{task}'; choose from {', '.join(PRETRAIN_TASKS)}")


def _check_data(info, cfg, task=None):
    """Raise UserError when the data cannot feed the model of `cfg` (and `task`); return whether audio is used."""
    meta, model = info.meta, cfg.model
    if meta["lower_case"] != cfg.data.lower_case:
        raise UserError(f"MindRecord {info.path} was built with lower_case={meta['lower_case']} but data.lower_case "
                        f"is {cfg.data.lower_case}; make them agree or rebuild")
    if model.image.mode == "pixels" and not meta["has_image"]:
        raise UserError(f"model.image.mode is pixels but MindRecord {info.path} has no images; build it from a "
                        f"manifest with 'image' paths, or use region features (model.image.mode features)")
    if model.image.mode == "features":
        if not meta.get("has_regions"):
            raise UserError(f"model.image.mode is features but MindRecord {info.path} has no region features; give "
                            f"every manifest line a 'regions' .npz (docs/data_format.md) and rebuild it")
        if (meta["region_dim"], meta["region_box_dim"]) != (model.image.feature_dim, model.image.box_dim):
            raise UserError(f"MindRecord {info.path} holds regions of {meta['region_dim']}-d features and "
                            f"{meta['region_box_dim']}-d boxes but the model expects {model.image.feature_dim} and "
                            f"{model.image.box_dim} (model.image.feature_dim / box_dim)")
    has_audio = meta["has_audio"] and cfg.data.use_audio
    audio_dim = model.audio.n_mels if model.audio.mode == "mel" else model.audio.feature_dim
    if has_audio and meta["audio_dim"] != audio_dim:
        raise UserError(f"MindRecord {info.path} holds audio frames of width {meta['audio_dim']} but the model "
                        f"expects {audio_dim} (model.audio.mode {model.audio.mode!r}); fix the model's audio config "
                        "or set data.use_audio=false")
    if task is None:
        return has_audio
    if not meta["has_captions"]:
        raise UserError(f"MindRecord {info.path} has samples without captions; pretraining needs a caption for "
                        "every sample")
    unmet = unmet_needs(info, cfg, [task])
    if unmet:
        raise UserError(unmet_needs_message(unmet))
    return has_audio


def unmet_needs(info, cfg, tasks):
    """[(task, need, why)] of every pretraining task in `tasks` whose inputs the data of `info` cannot give."""
    meta = info.meta
    has_audio = meta["has_audio"] and cfg.data.use_audio
    unmet = []
    for task in tasks:
        for need in task_requirements(task):
            available = has_audio if need == "audio" else meta["has_image_tokens"]
            if not available:
                why = "data.use_audio is false" if need == "audio" and meta["has_audio"] else f"{info.path} has none"
                unmet.append((task, need.replace("_", " "), why))
    return unmet


def unmet_needs_message(unmet):
    """One message for all unmet needs, with the one --set that switches every such task off."""
    listed = "; ".join(f"task '{task}' needs {need} but {why}" for task, need, why in unmet)
    off = " ".join(dict.fromkeys(f"pretrain.tasks.{task}=0" for task, _, _ in unmet))
    return f"the data cannot feed {len({t for t, _, _ in unmet})} pretraining task(s): {listed}; give data that has " \
           f"them or switch the tasks off with --set {off}"


def _reader(info, columns, positions, workers):
    return ds.MindDataset(list(info.files), columns_list=columns, sampler=ds.SubsetSampler(positions.tolist()),
                          num_parallel_workers=workers)


def training_positions(info, cfg, batch_size, epoch, rank, world, start_batch):
    """This rank's record positions of a training epoch (whole batches), from batch `start_batch` on."""
    positions = epoch_indices(info.count, cfg.run.seed, epoch, rank, world, drop_remainder_to=batch_size)
    if not 0 <= start_batch < len(positions) // batch_size:
        raise UserError(f"cannot resume at batch {start_batch}: epoch {epoch} has {len(positions) // batch_size} "
                        "batches per device")
    return positions[start_batch * batch_size:]


class _RegionColumn:
    """Vision map of model.image.mode features: stored `regions` (K, D + box_dim) -> the packed `image` column
    (max_regions, D + box_dim + 1) of src.data.regions.pack_regions."""

    def __init__(self, image_cfg):
        self.dim, self.max_regions = image_cfg.feature_dim, image_cfg.max_regions

    def __call__(self, regions):
        regions = np.asarray(regions, np.float32)
        return pack_regions(regions[:, :self.dim], regions[:, self.dim:], self.max_regions)


def vision_column(cfg):
    """The stored column the image comes from: `image` (pixels mode) or `regions` (features mode)."""
    return "image" if cfg.model.image.mode == "pixels" else "regions"


def map_vision(data, cfg, train):
    """Turn the stored vision column into the model's `image` column: the image transforms (pixels) or the packed
    regions (features)."""
    workers = cfg.data.workers
    if cfg.model.image.mode == "features":
        return data.map(_RegionColumn(cfg.model.image), input_columns=["regions"], output_columns=["image"],
                        num_parallel_workers=workers)
    if train:
        transform = image_transforms(cfg.model.image.image_size, train=True, random_resized_crop=cfg.data.random_crop,
                                     crop_scale=cfg.data.crop_scale, hflip=cfg.data.hflip, **image_rules(cfg.data))
    else:
        transform = image_transforms(cfg.model.image.image_size, train=False, **image_rules(cfg.data))
    return data.map(transform, input_columns=["image"], num_parallel_workers=workers)


def training_samples(info, cfg, samples, positions):
    """Records at `positions` -> training image transform (or packed regions) -> the per-sample `samples` map."""
    workers = cfg.data.workers
    columns = ["index", vision_column(cfg)] + list(samples.input_columns[1:])
    data = map_vision(_reader(info, columns, positions, workers), cfg, train=True)
    return data.map(samples, input_columns=samples.input_columns, output_columns=samples.output_columns,
                    num_parallel_workers=workers)


def build_pretrain_dataset(data_path, task, cfg, tokenizer, batch_size, epoch, rank=0, world=1, start_batch=0):
    """The batches of pretraining `task` for one epoch on rank `rank` of `world`, from batch `start_batch` on.

    Columns as `task_columns(task, has_audio)`; fixed shapes from cfg.model; last partial batch dropped.
    """
    _check_task(task)
    info = open_mindrecord(data_path, cfg.data.vocab)
    has_audio = _check_data(info, cfg, task)
    if task == "itm" and batch_size * world < 3:
        raise UserError(f"pretraining task 'itm' swaps images and audio inside the global batch and needs one of at "
                        f"least 3 samples, got {batch_size} x {world} device(s); raise train.batch_size or switch it "
                        "off with --set pretrain.tasks.itm=0")
    positions = training_positions(info, cfg, batch_size, epoch, rank, world, start_batch)
    data = training_samples(info, cfg, _PretrainSample(task, cfg, tokenizer, epoch, has_audio), positions)
    workers = cfg.data.workers
    if task == "itm":
        batches = _global_batches(info, cfg, batch_size, epoch, rank, world, start_batch) if world > 1 else None
        draw = _MatchingPartners(cfg.run.seed, epoch, has_audio, rank, world, batches)
        data = data.batch(batch_size, drop_remainder=True, per_batch_map=draw, input_columns=draw.input_columns,
                          output_columns=draw.output_columns, num_parallel_workers=workers)
    else:
        data = data.batch(batch_size, drop_remainder=True, num_parallel_workers=workers)
    return data.project(task_columns(task, has_audio))


def _global_batches(info, cfg, batch_size, epoch, rank, world, start_batch):
    """{stored index of the first sample of each of this rank's batches: the stored indices of the global batch of
    that step (every rank's batch), in sample order (the order one process at batch_size * world reads them)}."""
    stored = np.array([int(row[0]) for row in ds.MindDataset(list(info.files), columns_list=["index"], shuffle=False)
                       .create_tuple_iterator(num_epochs=1, output_numpy=True)], np.int64)
    shards = [epoch_indices(info.count, cfg.run.seed, epoch, r, world, drop_remainder_to=batch_size)
              for r in range(world)]
    batches = {}
    for k in range(start_batch, len(shards[rank]) // batch_size):
        step = slice(k * batch_size, (k + 1) * batch_size)
        batches[int(stored[shards[rank][step][0]])] = stored[np.stack([s[step] for s in shards], 1).reshape(-1)]
    return batches


def build_eval_dataset(data_path, cfg, tokenizer, batch_size, rank=0, world=1, columns=None):
    """Ordered evaluation batches: rank r reads records r, r + world, ...; every record is counted exactly once.

    All ranks get the same number of batches; the last ones are filled up by repeating a row, and `valid` (B,) int32
    is 0 on those filler rows. Columns (all by default, or the `columns` asked for): `index` int64, `valid`,
    `text_ids` / `text_mask` of caption 0, `image` (eval transform), `audio` / `frame_mask` when the data has audio
    and data.use_audio is on, and `question_ids` / `question_mask` for VQA data.
    """
    info = open_mindrecord(data_path, cfg.data.vocab)
    has_audio = _check_data(info, cfg)
    has_vqa = info.meta["has_vqa"]
    available = (["index", "valid", "text_ids", "text_mask", "image"] + (["audio", "frame_mask"] if has_audio else [])
                 + (["question_ids", "question_mask"] if has_vqa else []))
    unknown = [c for c in columns or () if c not in available]
    if unknown:
        raise UserError(f"evaluation columns {unknown} are not available from {data_path}; choose from {available}")
    positions = epoch_indices(info.count, 0, 0, rank, world, shuffle=False)
    batches = math.ceil(math.ceil(info.count / world) / batch_size)
    samples = _EvalSample(cfg, tokenizer, has_audio, has_vqa)
    workers = cfg.data.workers
    read_columns = ["index", vision_column(cfg)] + samples.input_columns[1:]
    # filler rows repeat one record; a sampler may not list more indices than the file has, so they are a separate
    # one-record reader repeated and appended
    extra = batches * batch_size - len(positions)
    filler = _reader(info, read_columns, np.array([positions[-1] if len(positions) else 0]), workers).repeat(extra) \
        if extra else None
    if len(positions):
        data = _reader(info, read_columns, positions, workers)
        data = data + filler if filler is not None else data
    else:
        data = filler
    data = map_vision(data, cfg, train=False)
    data = data.map(samples, input_columns=samples.input_columns, output_columns=samples.output_columns,
                    num_parallel_workers=workers)
    flags = _ValidFlags(batch_size, len(positions))
    data = data.batch(batch_size, per_batch_map=flags, input_columns=["index"], output_columns=["index", "valid"])
    return data.project(list(columns) if columns else available)


def read_references(data_path):
    """The raw text of every record, as a list in `index` order: dicts with id, image_id, captions, answers, lang, and
    answer_scores (one confidence per answer; empty when the record has none, or the MindRecord predates them)."""
    info = open_mindrecord(data_path, None)
    scored = bool(info.meta.get("has_answer_scores", False))
    names = ["index", "id", "image_id", "captions", "answers", "lang"] + (["answer_scores"] if scored else [])
    rows = [None] * info.count
    reader = ds.MindDataset(list(info.files), columns_list=names, shuffle=False)
    for row in reader.create_dict_iterator(num_epochs=1, output_numpy=True):
        rows[int(row["index"])] = {
            "id": str(row["id"]), "image_id": str(row["image_id"]), "captions": json.loads(str(row["captions"])),
            "answers": json.loads(str(row["answers"])), "lang": str(row["lang"]),
            "answer_scores": json.loads(str(row["answer_scores"])) if scored else [],
        }
    return rows


# ------------------------------------------------------------------------------------------ per-sample arrays


def stored_array(value, dtype, width=None):
    """A variable-length column as read back: 0-d means the stored array was empty."""
    value = np.asarray(value, dtype=dtype)
    if value.ndim == 0:
        return np.zeros((0,) if width is None else (0, width), dtype=dtype)
    return value


def _split_captions(caption_ids, caption_lens):
    """The stored token ids of each caption ([CLS] .. [SEP])."""
    ids = stored_array(caption_ids, np.int32)
    bounds = np.cumsum(stored_array(caption_lens, np.int32))[:-1]
    return np.split(ids, bounds) if len(ids) else []


class _SampleArrays:
    """Text and audio arrays shared by the pretraining and evaluation samples."""

    def __init__(self, cfg, tokenizer, has_audio):
        self.text_len = cfg.model.text.max_len
        self.frames = cfg.model.audio.max_frames
        self.audio_dim = cfg.model.audio.n_mels if cfg.model.audio.mode == "mel" else cfg.model.audio.feature_dim
        self.pad_id, self.cls_id, self.sep_id = tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id
        self.has_audio = has_audio

    def text(self, ids):
        """Stored [CLS] .. [SEP] ids cut to the model's text length (keeping [SEP]) and padded: (ids, mask)."""
        if len(ids) == 0:
            ids = np.array([self.cls_id, self.sep_id], dtype=np.int32)
        if len(ids) > self.text_len:
            ids = np.append(ids[: self.text_len - 1], np.int32(self.sep_id))
        padded = np.full(self.text_len, self.pad_id, dtype=np.int32)
        padded[: len(ids)] = ids
        mask = np.zeros(self.text_len, dtype=np.int32)
        mask[: len(ids)] = 1
        return padded, mask

    def audio(self, audio, audio_frames):
        """Stored frames cut or padded to the model's frame count: (frames float32 (Tf, D), frame_mask int32 (Tf,))."""
        frames = stored_array(audio, np.float32, self.audio_dim)[: int(audio_frames)]
        return pad_or_truncate(frames, self.frames)


class _PretrainSample(_SampleArrays):
    """Python map of one pretraining task: stored record columns -> the task's per-sample arrays."""

    def __init__(self, task, cfg, tokenizer, epoch, has_audio):
        super().__init__(cfg, tokenizer, has_audio)
        self.task, self.seed, self.epoch = task, cfg.run.seed, epoch
        self.pretrain = cfg.pretrain
        image = cfg.model.image
        # masked vision modelling slots: patches, or region slots (MVMTask drops padded regions from its loss)
        self.patches = (image.max_regions if image.mode == "features" else (image.image_size // image.patch_size) ** 2)
        audio = cfg.model.audio
        self.subsample = audio.subsample if audio.mode == "mel" else 1
        self.audio_tokens = audio.max_frames // self.subsample
        self.mask_id, self.vocab_size = tokenizer.mask_id, tokenizer.vocab_size
        self.special_ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
        self.decoder_len = cfg.model.text_decoder.max_len
        self.id_uncond_prob = float(self.pretrain.id_uncond_prob)
        if not 0.0 <= self.id_uncond_prob <= 1.0:
            raise UserError(f"pretrain.id_uncond_prob must be in [0, 1], got {self.pretrain.id_uncond_prob}")
        self.codebook_size = cfg.model.image_decoder.codebook_size
        self.image_decoder_len = cfg.model.image_decoder.max_len
        self.input_columns = (["index", "caption_ids", "caption_lens"] + (["audio", "audio_frames"] if has_audio
                                                                           else [])
                              + (["image_tokens"] if task == "id" else []))
        not_made_here = ("image", "itm_labels", "itm_image_src", "itm_audio_src")  # vision map, batch map
        self.output_columns = ["index"] + [c for c in task_columns(task, has_audio) if c not in not_made_here]

    def __call__(self, index, caption_ids, caption_lens, *rest):
        rng = sample_rng(self.seed, self.epoch, int(index))
        captions = _split_captions(caption_ids, caption_lens)
        caption = captions[int(rng.integers(len(captions)))]
        ids, mask = self.text(caption)
        out = {"index": index, "text_ids": ids, "text_mask": mask}
        if self.has_audio:
            out["audio"], out["frame_mask"] = self.audio(rest[0], rest[1])
        getattr(self, f"_{self.task}")(out, rng, caption, rest)
        return tuple(out[c] for c in self.output_columns)

    def _audio_valid(self, out):
        return out["frame_mask"][:: self.subsample][: self.audio_tokens]

    def _mlm(self, out, rng, caption, rest):
        out["text_ids"], out["mlm_positions"], out["mlm_labels"], out["mlm_weights"] = mask_tokens(
            out["text_ids"], out["text_mask"], rng, mask_id=self.mask_id, vocab_size=self.vocab_size,
            special_ids=self.special_ids, max_predictions=self.pretrain.max_predictions, prob=self.pretrain.mlm_prob)

    def _mvm(self, out, rng, caption, rest):
        out["image_masked"] = mask_positions(np.ones(self.patches), rng, self.pretrain.mvm_prob)

    def _mam(self, out, rng, caption, rest):
        out["audio_masked"] = mask_positions(self._audio_valid(out), rng, self.pretrain.mam_prob)

    def _itm(self, out, rng, caption, rest):
        """Nothing per sample: the matching partners are drawn per batch (_MatchingPartners)."""

    def _itc(self, out, rng, caption, rest):
        """Nothing beyond the common columns."""

    def _td(self, out, rng, caption, rest):
        out["text_ids"] = mask_whole_text(out["text_ids"], out["text_mask"], self.mask_id)
        image_full, audio_full = (prob == 1.0 for prob in modality_schedule(rng))
        if not self.has_audio or not out["frame_mask"].any():
            # this sample has no audio (the data set has none, or its own clip is absent: no real frame), so with
            # text and image gone nothing would be left to decode from
            image_full = False
        image_prob = 1.0 if image_full else self.pretrain.mvm_prob
        out["image_masked"] = mask_positions(np.ones(self.patches), rng, image_prob)
        if self.has_audio:
            audio_prob = 1.0 if audio_full else self.pretrain.mam_prob
            out["audio_masked"] = mask_positions(self._audio_valid(out), rng, audio_prob)
        out["dec_input"], out["dec_target"], out["dec_weights"] = text_generation_targets(
            caption, np.ones(len(caption)), self.cls_id, self.sep_id, self.pad_id, self.decoder_len)

    def _id(self, out, rng, caption, rest):
        """Image decoding; with probability pretrain.id_uncond_prob from the empty prompt (condition dropout: the
        unconditional model that classifier-free guidance contrasts with)."""
        if self.id_uncond_prob > 0 and rng.random() < self.id_uncond_prob:
            out["text_ids"], out["text_mask"] = self.text(np.zeros(0, np.int32))
        out["image_masked"] = np.ones(self.patches, dtype=np.float32)
        codes = stored_array(rest[-1], np.int32)
        out["img_dec_input"], out["img_dec_target"], out["img_dec_weights"] = image_token_targets(
            codes, self.codebook_size, self.image_decoder_len)


class _MatchingPartners:
    """Batch map of matching: which image (and audio) each text is paired with, drawn over the global batch.

    The draw (masking.itm_batch with audio, else pair_match_batch labelled ITM_MATCHED / ITM_IMAGE_SWAPPED) covers
    all world * batch_size samples of the step, keyed by their stored indices in sample order, and this rank keeps
    its own rows: `itm_labels`, and `itm_image_src` / `itm_audio_src`, the partners' rows in the global batch as an
    AllGather lays it out (masking.gathered_rows). The ITM task gathers the images and audio of every rank and picks
    those rows, so a negative partner can be any rank's sample and the pairs of a step do not depend on how many
    devices share it. With one process the global batch is the batch and the rows index it directly.
    `global_batches` is _global_batches' table when world > 1.
    """

    def __init__(self, seed, epoch, has_audio, rank=0, world=1, global_batches=None):
        self.seed, self.epoch, self.has_audio = seed, epoch, has_audio
        self.rank, self.world, self.global_batches = rank, world, global_batches
        self.input_columns = ["index"]
        self.output_columns = ["index", "itm_labels", "itm_image_src"] + (["itm_audio_src"] if has_audio else [])

    def rng(self, index):
        return np.random.default_rng([int(self.seed), int(self.epoch), ITM_STREAM] + index.tolist())

    def __call__(self, index, batch_info):
        index = np.stack(index)
        everyone = index if self.world == 1 else self.global_batches[int(index[0])]
        rng = self.rng(everyone)
        if self.has_audio:
            labels, image_src, audio_src = itm_batch(len(everyone), rng)
        else:
            matched, image_src = pair_match_batch(len(everyone), rng)
            labels = np.where(matched == 1, ITM_MATCHED, ITM_IMAGE_SWAPPED).astype(np.int32)
        mine, rows = rank_rows(self.rank, self.world, len(index)), len(index)
        out = [index, labels[mine], gathered_rows(image_src[mine], self.world, rows)]
        if self.has_audio:
            out.append(gathered_rows(audio_src[mine], self.world, rows))
        return tuple(out)


class _EvalSample(_SampleArrays):
    """Python map of evaluation: caption 0, the question, audio."""

    def __init__(self, cfg, tokenizer, has_audio, has_vqa):
        super().__init__(cfg, tokenizer, has_audio)
        self.has_vqa = has_vqa
        self.input_columns = (["index", "caption_ids", "caption_lens"] + (["question_ids"] if has_vqa else [])
                              + (["audio", "audio_frames"] if has_audio else []))
        self.output_columns = (["index", "text_ids", "text_mask"] + (["question_ids", "question_mask"] if has_vqa
                                                                     else [])
                               + (["audio", "frame_mask"] if has_audio else []))

    def __call__(self, index, caption_ids, caption_lens, *rest):
        captions = _split_captions(caption_ids, caption_lens)
        out = [index, *self.text(captions[0] if captions else np.zeros(0, np.int32))]
        if self.has_vqa:
            out += self.text(stored_array(rest[0], np.int32))
            rest = rest[1:]
        if self.has_audio:
            out += self.audio(rest[0], rest[1])
        return tuple(out)


class _ValidFlags:
    """Batch map of evaluation: `valid` is 1 for the first `real` rows of the rank's stream, 0 for filler rows."""

    def __init__(self, batch_size, real):
        self.batch_size, self.real = batch_size, real

    def __call__(self, index, batch_info):
        start = batch_info.get_batch_num() * self.batch_size
        valid = (start + np.arange(len(index)) < self.real).astype(np.int32)
        return np.stack(index), valid
