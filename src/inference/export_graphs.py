"""Export a trained OPT model for serving: one graph file per network piece plus a manifest (`export.py`).

| task        | graphs (PREFIX_<name>.<ext>)                                                                     |
|-------------|---------------------------------------------------------------------------------------------------|
| retrieval   | text (TextTower), image (ImageTower), audio (AudioTower; when data.use_audio), pair (PairScorer)    |
| caption/vqa | encoder (inputs -> decoding state: MemoryEncoder + PrepareMemory), encoder_audio (the same with    |
|             | audio; when data.use_audio), step (DecodeStep: token, position, origin, *state -> logits, *state) |

VQA encoders take question_ids, question_mask, image [, audio, frame_mask]; caption encoders image [, audio,
frame_mask]. With a dynamic batch (`batch_size` 0) every batched input has shape [None, ...], and the step graph also
takes any memory length, so one step graph serves both encoders. With a static batch N the shapes are fixed: the
encoders take N rows, the step graphs (step, step_audio) N * beams rows (beams = <task>.beam_size when
<task>.strategy is beam, else 1).

Next to the graphs go PREFIX_config.yaml (the resolved config), PREFIX_vocab.txt (the tokenizer vocabulary) and
PREFIX_export.json, the manifest the runner (`src.inference.exported_model`) reads. Every file is written under a
temporary name and renamed once all of them exist, so a failed export leaves nothing behind.
"""
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import nn

from src.config import save_config
from src.errors import UserError
from src.inference.generation import DecodeStep, PrepareMemory
from src.inference.retrieval import AudioTower, ImageTower, PairScorer, TextTower

FORMATS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}
MANIFEST_SUFFIX = "_export.json"
MANIFEST_VERSION = 1
TASKS = ("retrieval", "caption", "vqa")
EXAMPLE_ROWS = 2  # rows of the example inputs that fix the shapes of the non-batch dimensions
_LEGAL_NAME = re.compile(r"^[0-9a-zA-Z@_\-.:/\\]+$")  # what ms.export accepts as a file name


class GenerationEncoder(nn.Cell):
    """[question_ids, question_mask,] image [, audio, frame_mask] -> the decoding state of `PrepareMemory`."""

    def __init__(self, model, with_question, with_audio):
        super().__init__(auto_prefix=False)
        from src.tasks.caption import MemoryEncoder
        self.encoder = MemoryEncoder(model, with_question, with_audio)
        self.prepare = PrepareMemory(model.text_decoder)

    def construct(self, *inputs):
        memory, memory_mask = self.encoder(*inputs)
        return self.prepare(memory, memory_mask)


@dataclass
class Graph:
    """One exported graph: its Cell, input names and example inputs (EXAMPLE_ROWS rows), the input axes that are
    dynamic besides the batch ({input index: (axis, ...)}), and which inputs have no batch axis."""
    name: str
    cell: nn.Cell
    input_names: tuple
    examples: tuple
    output_names: tuple
    free_axes: dict = field(default_factory=dict)
    unbatched: tuple = ()

    def specs(self, batch_size, rows):
        """Input Tensors for ms.export: `rows` rows when batch_size > 0, else [None, ...] (and None free axes)."""
        specs = []
        for i, x in enumerate(self.examples):
            shape = list(x.shape)
            if i not in self.unbatched:
                shape[0] = rows if batch_size else None
            if not batch_size:
                for axis in self.free_axes.get(i, ()):
                    shape[axis] = None
            specs.append(ms.Tensor(shape=shape, dtype=x.dtype) if None in shape else
                         ms.Tensor(np.zeros(shape, ms.dtype_to_nptype(x.dtype))))
        return specs


def model_inputs(cfg, with_question=False, with_audio=False):
    """Example inputs (EXAMPLE_ROWS rows) in the eval pipeline's dtypes: {name: Tensor}."""
    m, n = cfg.model, EXAMPLE_ROWS
    inputs = {}
    if with_question:
        inputs["question_ids"] = np.ones((n, m.text.max_len), np.int32)
        inputs["question_mask"] = np.ones((n, m.text.max_len), np.int32)
    if m.image.mode == "features":  # the packed region column (src.data.regions)
        width = m.image.feature_dim + m.image.box_dim + 1
        inputs["image"] = np.zeros((n, m.image.max_regions, width), np.float32)
    else:
        inputs["image"] = np.zeros((n, m.image.channels, m.image.image_size, m.image.image_size), np.float32)
    if with_audio:
        width = m.audio.n_mels if m.audio.mode == "mel" else m.audio.feature_dim
        inputs["audio"] = np.zeros((n, m.audio.max_frames, width), np.float32)
        inputs["frame_mask"] = np.ones((n, m.audio.max_frames), np.int32)
    return {name: ms.Tensor(value) for name, value in inputs.items()}


def eager(cell, *inputs):
    """`cell(*inputs)` run in PyNative mode (no graph compile just to learn output shapes), then the mode restored."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        return cell(*inputs)
    finally:
        ms.set_context(mode=mode)


def retrieval_graphs(cfg, model):
    """The tower graphs (text, image, audio when data.use_audio) and the pair scorer over the towers' outputs."""
    text = model_inputs(cfg, with_question=True)
    text = (text["question_ids"], text["question_mask"])
    image = (model_inputs(cfg)["image"],)
    text_tower, image_tower = TextTower(model), ImageTower(model)
    tower_outputs = ("tokens", "token_mask", "features")
    graphs = [Graph("text", text_tower, ("ids", "mask"), text, tower_outputs),
              Graph("image", image_tower, ("image",), image, tower_outputs)]
    if cfg.data.use_audio:
        audio = model_inputs(cfg, with_audio=True)
        graphs.append(Graph("audio", AudioTower(model), ("audio", "frame_mask"),
                            (audio["audio"], audio["frame_mask"]), ("features",)))
    pair_inputs = eager(text_tower, *text)[:2] + eager(image_tower, *image)[:2]
    graphs.append(Graph("pair", PairScorer(model), ("text_tokens", "text_mask", "image_tokens", "image_mask"),
                        pair_inputs, ("score",)))
    return graphs


def generation_graphs(cfg, model, task, batch_size):
    """Encoder graph(s) and step graph(s) of caption / VQA (see the module docstring)."""
    decoder = model.text_decoder
    variants = [False] + ([True] if cfg.data.use_audio else [])
    state_names = ["mem_bias"] + [f"{kv}_mem_{i}" for i in range(decoder.num_layers) for kv in "kv"] + \
                  [f"{kv}_cache_{i}" for i in range(decoder.num_layers) for kv in "kv"]
    n_memory = 1 + 2 * decoder.num_layers  # mem_bias (B,1,1,S) and k/v_mem (B,h,S,d) carry the memory length S
    free = {3 + i: ((3,) if i == 0 else (2,)) for i in range(n_memory)}
    graphs = []
    for with_audio in variants:
        suffix = "_audio" if with_audio else ""
        inputs = model_inputs(cfg, task == "vqa", with_audio)
        encoder = GenerationEncoder(model, task == "vqa", with_audio)
        state = eager(encoder, *inputs.values())
        graphs.append(Graph("encoder" + suffix, encoder, tuple(inputs), tuple(inputs.values()), tuple(state_names)))
        if with_audio and not batch_size:
            continue  # the dynamic step graph takes any memory length
        step_inputs = (ms.Tensor(np.ones((EXAMPLE_ROWS, 1), np.int32)), ms.Tensor(np.zeros(1, np.int32)),
                       ms.Tensor(np.arange(EXAMPLE_ROWS, dtype=np.int32))) + tuple(state)
        graphs.append(Graph("step" + suffix, DecodeStep(decoder), ("token", "position", "origin", *state_names),
                            step_inputs, ("logits", *state_names), free_axes=free, unbatched=(1,)))
    return graphs


def step_rows(cfg, task, batch_size):
    """Rows of a static step graph: batch_size * beam_size for beam search, else batch_size."""
    from src.inference.text_generator import decoding_settings
    settings = decoding_settings(cfg, task)
    return batch_size * (int(settings["beam_size"]) if settings["strategy"] == "beam" else 1)


def check_request(file_format, batch_size, prefix):
    """UserError for what cannot work before any compiling: the format on this device, a dynamic ONNX, the name."""
    if file_format not in FORMATS:
        raise UserError(f"--file_format {file_format} is unknown; use MINDIR (works everywhere), AIR or ONNX")
    if batch_size < 0:
        raise UserError(f"--batch_size must be >= 0 (0 = dynamic batch), got {batch_size}")
    if file_format == "AIR" and ms.get_context("device_target") != "Ascend":
        raise UserError(f"AIR export needs an Ascend device (this one is {ms.get_context('device_target')}); "
                        "export --file_format MINDIR instead (it runs on CPU, GPU and Ascend)")
    if file_format == "ONNX" and not batch_size:
        raise UserError("ONNX export needs static shapes: give --batch_size N (N >= 1), or export --file_format "
                        "MINDIR, which keeps the batch dynamic")
    if not _LEGAL_NAME.match(os.path.abspath(prefix)):
        raise UserError(f"--file_name {prefix}: MindSpore only writes file names made of letters, digits and "
                        "@ _ - . : / \\; choose another name or folder")


def export_model(cfg, model, task, prefix, file_format="MINDIR", batch_size=0, checkpoint=""):
    """Write the graphs of `task` (see the module docstring), the config, the vocabulary and the manifest for
    `model` (eval mode) under `prefix`. Returns the manifest path."""
    if task not in TASKS:
        raise UserError(f"export task {task!r} is unknown; use one of {', '.join(TASKS)}")
    check_request(file_format, batch_size, prefix)
    prefix = os.path.abspath(prefix)
    folder, base = os.path.dirname(prefix), os.path.basename(prefix)
    os.makedirs(folder, exist_ok=True)
    if task == "retrieval":
        graphs, rows = retrieval_graphs(cfg, model), {}
    else:
        graphs = generation_graphs(cfg, model, task, batch_size)
        rows = {g.name: step_rows(cfg, task, batch_size) for g in graphs if g.name.startswith("step")}
    staged = {}  # final name -> temporary path
    try:
        records = {}
        for graph in graphs:
            name = f"{base}_{graph.name}{FORMATS[file_format]}"
            staged[name] = _export_graph(graph, os.path.join(folder, f".{name}.partial"), file_format,
                                         batch_size, rows.get(graph.name, batch_size))
            records[graph.name] = _graph_record(graph, name, batch_size, rows.get(graph.name, batch_size))
        staged[f"{base}_vocab.txt"] = _staged_copy(cfg.data.vocab, os.path.join(folder, f".{base}_vocab.txt.partial"))
        staged[f"{base}_config.yaml"] = save_config(cfg, folder, f".{base}_config.yaml.partial")
        manifest = _manifest(cfg, model, task, base, file_format, batch_size, checkpoint, records)
        staged[base + MANIFEST_SUFFIX] = _staged_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                                      os.path.join(folder, f".{base}{MANIFEST_SUFFIX}.partial"))
    except BaseException:
        for path in staged.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for name, path in staged.items():
        os.replace(path, os.path.join(folder, name))
    return prefix + MANIFEST_SUFFIX


def _export_graph(graph, partial, file_format, batch_size, rows):
    """ms.export one graph to `partial` (+ the format's extension, which ms.export insists on); returns that path."""
    target = partial + FORMATS[file_format]
    try:
        ms.export(graph.cell, *graph.specs(batch_size, rows), file_name=partial, file_format=file_format)
    except (RuntimeError, ValueError, TypeError) as exc:
        if os.path.exists(target):
            os.remove(target)
        if file_format == "MINDIR":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MindSpore cannot export the {graph.name} graph as {file_format} ({reason}); export "
                        "--file_format MINDIR instead, which supports every graph") from None
    return target


def _graph_record(graph, file_name, batch_size, rows):
    inputs = []
    for i, spec in enumerate(graph.specs(batch_size, rows)):
        inputs.append({"name": graph.input_names[i], "shape": [None if d in (None, -1) else int(d)
                                                                for d in spec.shape],
                       "dtype": str(spec.dtype).lower(), "batched": i not in graph.unbatched})
    return {"file": file_name, "inputs": inputs, "outputs": list(graph.output_names)}


def preprocessing(cfg, tokenizer):
    """How a serving user turns raw inputs into the graphs' inputs (the manifest's "preprocessing" block); the
    runner (`src.inference.exported_model.ExportedModel`) takes its sizes from here, not from the config."""
    from src.data import transforms
    m = cfg.model
    if m.image.mode == "pixels":
        rules = transforms.image_rules(cfg.data)
        pad_color = rules["background"] if rules["pad_color"] is None else rules["pad_color"]
        resize = {"crop": "shorter side to size, bilinear without antialiasing (OpenCV INTER_LINEAR, as "
                          "mindspore.dataset.vision.Resize); then the central size x size square",
                  "pad": "longer side to size (the other side round(side * size / longer)), bilinear without "
                         "antialiasing (OpenCV INTER_LINEAR, as mindspore.dataset.vision.Resize); then centred on a "
                         "size x size square of pad_color (offsets (size - side) // 2)"}[rules["resize"]]
        image = {"mode": "pixels", "size": m.image.image_size, "color": "RGB", "decode": "any PIL-readable file",
                 "orientation": "EXIF orientation applied (PIL.ImageOps.exif_transpose)",
                 "alpha": "transparent pixels composited onto background (PIL.Image.alpha_composite)",
                 "background": list(rules["background"]), "fit": rules["resize"], "pad_color": list(pad_color),
                 "resize": resize,
                 "scale": "0-255 float32, then (x - mean) / std per channel",
                 "mean": [round(255.0 * v, 6) for v in transforms.IMAGENET_MEAN],
                 "std": [round(255.0 * v, 6) for v in transforms.IMAGENET_STD],
                 "layout": "CHW (batched: NCHW)", "dtype": "float32"}
    else:
        image = {"mode": "features", "regions": m.image.max_regions, "feature_dim": m.image.feature_dim,
                 "box_dim": m.image.box_dim, "boxes": "[x1, y1, x2, y2, w, h, w*h], normalised to 0-1",
                 "padding": "zero rows after the last region"}
    text = {"tokenizer": "BERT WordPiece (mindspore.dataset.text.BertTokenizer, suffix '##', unknown [UNK])",
            "vocab": "the export's PREFIX_vocab.txt (one token per line; id = line number from 0)",
            "lower_case": bool(cfg.data.lower_case),
            "normalisation": ("lower-case, Unicode NFD, accents removed" if cfg.data.lower_case else "none")
            + "; whitespace and punctuation split; each CJK character its own token",
            "max_len": m.text.max_len, "format": "[CLS] pieces [SEP], cut to max_len, padded with [PAD]; "
                                                 "mask 1 on real tokens",
            "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id, "pad_id": tokenizer.pad_id, "dtype": "int32"}
    if m.audio.mode == "mel":
        audio = {"mode": "mel", "sample_rate": transforms.SAMPLE_RATE, "channels": "mono (channels averaged)",
                 "resample": "to sample_rate", "window_s": transforms.WINDOW_SECONDS,
                 "hop_s": transforms.HOP_SECONDS, "window": "periodic Hann, frames centred with reflect padding",
                 "n_mels": m.audio.n_mels, "mel_scale": "htk (mindspore.dataset.audio.melscale_fbanks)",
                 "features": f"log(mel power + {transforms.LOG_EPS})", "max_frames": m.audio.max_frames,
                 "padding": "zero frames after the end, frame mask 1 on real frames (int32)", "dtype": "float32"}
    else:
        audio = {"mode": "features", "feature_dim": m.audio.feature_dim, "max_frames": m.audio.max_frames,
                 "padding": "zero frames after the end, frame mask 1 on real frames (int32)", "dtype": "float32"}
    return {"image": image, "text": text, "audio": audio}


def _manifest(cfg, model, task, base, file_format, batch_size, checkpoint, graphs):
    from src.data.tokenizer import Tokenizer
    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    manifest = {"format_version": MANIFEST_VERSION, "task": task, "file_format": file_format,
                "batch_size": batch_size or None, "dynamic_batch": not batch_size,
                "checkpoint": os.path.abspath(checkpoint) if checkpoint else "", "graphs": graphs,
                "config": f"{base}_config.yaml", "vocab": f"{base}_vocab.txt", "lower_case": cfg.data.lower_case,
                "has_audio": bool(cfg.data.use_audio), "preprocessing": preprocessing(cfg, tokenizer)}
    if task != "retrieval":
        from src.inference.text_generator import decoding_settings
        manifest.update(bos_id=tokenizer.cls_id, eos_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
                        max_len=model.text_decoder.max_len, decoder_layers=model.text_decoder.num_layers,
                        decoding=decoding_settings(cfg, task))
    return manifest


def _staged_copy(source, partial):
    if not os.path.isfile(source):
        raise UserError(f"data.vocab {source} not found; the export copies the tokenizer vocabulary, so set "
                        "data.vocab to the run's vocab.txt")
    shutil.copyfile(source, partial)
    return partial


def _staged_text(text, partial):
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    return partial
