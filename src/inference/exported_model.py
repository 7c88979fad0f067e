"""Run an export of `export.py` (MindIR graphs + manifest) through the same code as a checkpoint.

`ExportedModel(path)` reads PREFIX_export.json (`path` = that file, its PREFIX, or a folder holding exactly one) and
loads every graph with `ms.load` + `nn.GraphCell`. It provides what the checkpoint path uses:

- `text_generator(tokenizer, settings)`: a `TextGenerator` whose memory comes from the encoder graph and whose
  greedy / beam / sampled search (src.inference.generation) steps through the step graph;
- `retriever(batch_size)`: a `src.inference.retrieval.RetrievalRunner` over the tower and pair graphs.

`cfg` is the export's config with the `overrides` applied (data and decoding settings; the model's shapes are fixed
by the graphs) and data.vocab pointing at the exported vocabulary. Graphs are loaded on first use. A graph exported
with a static batch N takes up to N rows (N * beams for step graphs): a shorter batch is padded by repeating its last
row and the outputs are cut back. Closed-vocabulary VQA is not available: it scores candidates with the full
decoder, which is not exported.
"""
import json
import os

import mindspore as ms
import numpy as np
from mindspore import nn

from src.config import load_config
from src.errors import UserError
from src.inference.export_graphs import MANIFEST_SUFFIX, MANIFEST_VERSION
from src.inference.generation import generate_from_state
from src.inference.text_generator import TextGenerator
from src.inference.retrieval import RetrievalRunner, fill_batch


def find_manifest(path, task=None):
    """The manifest of `path`: a PREFIX_export.json file, its PREFIX, or a folder with exactly one manifest (of
    `task`, when given)."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(MANIFEST_SUFFIX))
        if task and len(found) > 1:
            found = [name for name in found if _read_json(name).get("task") == task]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(map(os.path.basename, found))})"
            raise UserError(f"--mindir {path}: this folder holds {what} *{MANIFEST_SUFFIX} manifests"
                            f"{' of task ' + task if task else ''}; give the export's PREFIX (the --file_name given "
                            "to export.py)")
        return found[0]
    if path.endswith(MANIFEST_SUFFIX) and os.path.isfile(path):
        return path
    if os.path.isfile(path + MANIFEST_SUFFIX):
        return path + MANIFEST_SUFFIX
    raise UserError(f"--mindir {path}: no export found (expected {path}{MANIFEST_SUFFIX}); write one with "
                    "export.py --file_name PREFIX")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable export manifest ({exc}); re-run export.py") from None


def preprocessing_settings(manifest):
    """Config values from the manifest's "preprocessing" block (exports before it had none: {}), so that inputs are
    prepared as the block says whatever the exported config file holds."""
    p = manifest.get("preprocessing")
    if not p:
        return {}
    image, text, audio = p["image"], p["text"], p["audio"]
    settings = {"data.lower_case": bool(text["lower_case"]), "model.text.max_len": int(text["max_len"]),
                "model.image.mode": image["mode"], "model.audio.mode": audio["mode"],
                "model.audio.max_frames": int(audio["max_frames"])}
    if image["mode"] == "pixels":
        settings["model.image.image_size"] = int(image["size"])
        if "fit" in image:  # exports before the image rules were crop onto white
            settings.update({"data.resize": image["fit"], "data.background": list(image["background"]),
                             "data.pad_color": list(image["pad_color"])})
    else:
        settings.update({"model.image.max_regions": int(image["regions"]),
                         "model.image.feature_dim": int(image["feature_dim"])})
    if audio["mode"] == "mel":
        settings["model.audio.n_mels"] = int(audio["n_mels"])
    else:
        settings["model.audio.feature_dim"] = int(audio["feature_dim"])
    return settings


class _Graph:
    """A loaded graph called like its Cell (numpy arrays or Tensors in, Tensors out)."""

    def __init__(self, path, record, name):
        if not os.path.isfile(path):
            raise UserError(f"graph file {path} of the export is missing; re-run export.py")
        self.name, self.cell = name, nn.GraphCell(ms.load(path))
        self.inputs = record["inputs"]
        self.rows = next((i["shape"][0] for i in self.inputs if i["batched"]), None)  # None: dynamic batch

    def __call__(self, *inputs):
        n = next(len(x) for x, spec in zip(inputs, self.inputs) if spec["batched"])
        pad = self.rows is not None and n != self.rows
        if pad and n > self.rows:
            raise UserError(f"the {self.name} graph was exported for {self.rows} rows and got {n}; use a batch size "
                            f"<= the export's (and the same beam size), or re-export with --batch_size 0 (dynamic)")
        tensors = []
        for x, spec in zip(inputs, self.inputs):
            dtype = getattr(ms, spec["dtype"])
            if pad and spec["batched"]:
                x = fill_batch(x.asnumpy() if isinstance(x, ms.Tensor) else np.asarray(x), self.rows)
            tensors.append(x if isinstance(x, ms.Tensor) and x.dtype == dtype else ms.Tensor(np.asarray(x), dtype))
        outputs = self.cell(*tensors)
        if pad:
            outputs = tuple(out[:n] for out in outputs) if isinstance(outputs, tuple) else outputs[:n]
        return outputs


class ExportedModel:
    """The manifest, config and loaded graphs of one export (see the module docstring)."""

    def __init__(self, path, task=None, overrides=()):
        self.path = find_manifest(path, task)
        folder = os.path.dirname(os.path.abspath(self.path))
        self.manifest = m = _read_json(self.path)
        if m.get("format_version") != MANIFEST_VERSION:
            raise UserError(f"{self.path} has manifest version {m.get('format_version')}, this code reads "
                            f"{MANIFEST_VERSION}; re-run export.py")
        if task and m["task"] != task:
            raise UserError(f"{self.path} is a {m['task']} export, not {task}; export the {task} graphs with "
                            f"export.py --task {task}")
        if m["file_format"] != "MINDIR":
            raise UserError(f"{self.path} holds {m['file_format']} graphs; this runner loads MINDIR exports "
                            "(export.py --file_format MINDIR)")
        self.task = m["task"]
        self.cfg = load_config(os.path.join(folder, m["config"]), list(overrides)).with_updates(
            {"data.vocab": os.path.join(folder, m["vocab"]), **preprocessing_settings(m)})
        self.folder, self._loaded = folder, {}

    def has(self, name):
        return name in self.manifest["graphs"]

    def graph(self, name, why=""):
        """The graph `name`, loaded on first use."""
        if not self.has(name):
            raise UserError(f"{self.path} has no {name} graph{why}; re-export (export.py) with a config that "
                            "includes it, or leave it out here")
        if name not in self._loaded:
            record = self.manifest["graphs"][name]
            self._loaded[name] = _Graph(os.path.join(self.folder, record["file"]), record, name)
        return self._loaded[name]

    def text_generator(self, tokenizer, settings):
        return ExportedTextGenerator(self, tokenizer, settings)

    def retriever(self, batch_size):
        def audio(*inputs):
            why = " (data.use_audio was false at export; evaluate with --set data.use_audio=false)"
            return self.graph("audio", why)(*inputs)
        return RetrievalRunner(None, batch_size, towers=(self.graph("text"), self.graph("image"), audio,
                                                   self.graph("pair")))


class ExportedTextGenerator(TextGenerator):
    """`TextGenerator` over the encoder and step graphs of a caption / VQA export. `memory(...)` returns
    (decoding state, step graph): the pair `generate` takes where the checkpoint path has (memory, mask)."""

    def __init__(self, exported, tokenizer, settings):  # the model-based set-up of TextGenerator does not apply
        m = exported.manifest
        self.exported, self.tokenizer, self.settings = exported, tokenizer, dict(settings)
        self.special = dict(bos_id=m["bos_id"], eos_id=m["eos_id"], pad_id=m["pad_id"])

    def memory(self, image, audio=None, frame_mask=None, question_ids=None, question_mask=None):
        with_question = self.exported.task == "vqa"
        if with_question != (question_ids is not None):
            raise UserError(f"a {self.exported.task} export {'needs' if with_question else 'takes no'} questions")
        suffix = "_audio" if audio is not None else ""
        encoder = self.exported.graph("encoder" + suffix, " (data.use_audio was false at export; evaluate with "
                                                          "--set data.use_audio=false)")
        inputs = ([question_ids, question_mask] if with_question else []) + [image] + \
                 ([audio, frame_mask] if suffix else [])
        step = self.exported.graph("step" + suffix if self.exported.has("step" + suffix) else "step")
        return encoder(*inputs), step

    def generate(self, memory, mask, **overrides):
        """Token rows (B, L) without BOS, ending at EOS (then pad), and their log-probs (B,); `memory` is the
        decoding state and `mask` the step graph, as returned by `memory`."""
        settings = {**self.settings, **overrides}
        return generate_from_state(mask, memory, self.exported.manifest["max_len"], **self.special, **settings)

    def candidate_tokens(self, candidates):
        raise UserError("closed-vocabulary VQA scores every candidate answer with the full decoder, which an export "
                        "does not contain; use --ckpt for it, or answer generatively with --mindir")
