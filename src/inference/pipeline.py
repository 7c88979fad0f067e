"""One-call inference: `Captioner(ckpt).caption(images)`, `VQA(ckpt).answer(image, question)`, `Retriever(ckpt)`.

Each class reads the run config next to the checkpoint (or `config=`), builds the model in eval mode, loads the
weights, applies the config's `run.mode` (graph by default: src.engine.context.setup_context) and works in batches of
`batch_size`; with `mindir=PREFIX` (and ckpt None) it runs the graphs of an `export.py` export instead
(src.inference.exported_model). Images are file paths, encoded bytes or float32 arrays
(3, S, S) already transformed; a single item gives a single result, a list gives a list.

Decoding itself is `src.inference.text_generator` (shared with evaluation, SCST and the MindIR runner).
"""
import os

import mindspore as ms
import numpy as np

from src.data.tokenizer import Tokenizer
from src.data.regions import pack_regions, read_regions
from src.data.transforms import image_rules, load_audio, load_image
from src.inference.retrieval import ImageTower, TextTower
from src.engine.context import setup_context
from src.errors import UserError
from src.inference.loading import load_trained_model, resolve_config
from src.inference.text_generator import Answerer, TextGenerator, decoding_settings

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
REGION_EXTENSIONS = (".npz",)   # model.image.mode features: one region-feature file per image (src.data.regions)


class _Loaded:
    """Config, tokenizer and model of a trained checkpoint, or with `mindir` (an export's PREFIX, manifest or
    folder) the config, tokenizer and graphs of an export (`self.model` is then None)."""
    task = None

    def __init__(self, ckpt, config=None, overrides=(), batch_size=16, mindir=None):
        if mindir:
            from src.inference.exported_model import ExportedModel
            self.exported = ExportedModel(mindir, self.task, overrides)
            self.cfg, self.model = self.exported.cfg, None
        else:
            if not ckpt or not os.path.exists(ckpt):
                raise UserError(f"checkpoint {ckpt} does not exist; give a step directory such as "
                                "<run>/checkpoints/step_00000480 or <run>/best/step_...")
            self.cfg = resolve_config(ckpt, config, overrides)
            self.model = load_trained_model(self.cfg, ckpt)
        # run.mode applies (graph by default): decoding in PyNative mode ran each step op by op, 3x slower
        setup_context(self.cfg.run)
        self.tokenizer = Tokenizer(self.cfg.data.vocab, self.cfg.data.lower_case)
        self.batch_size = int(batch_size)

    def text_generator(self, decoding):
        """The TextGenerator of this task with the config's decoding settings and the `decoding` overrides."""
        settings = decoding_settings(self.cfg, self.task, **decoding)
        if self.model is None:
            return self.exported.text_generator(self.tokenizer, settings)
        return TextGenerator(self.model, self.tokenizer, settings)

    def images(self, images):
        """Image files (pixels mode: resized, centre-cropped and normalised as the config says) or region-feature
        .npz files (features mode: packed as src.data.regions.pack_regions), or arrays already in that form."""
        image = self.cfg.model.image
        if image.mode == "features":
            def packed(x):
                return pack_regions(*read_regions(x, image.feature_dim, image.box_dim), image.max_regions)
            return np.stack([np.asarray(x, np.float32) if isinstance(x, np.ndarray) else packed(x) for x in images])
        rules = image_rules(self.cfg.data)
        return np.stack([np.asarray(x, np.float32) if isinstance(x, np.ndarray)
                         else load_image(x, image.image_size, **rules) for x in images])

    def audio(self, paths):
        a = self.cfg.model.audio
        loaded = [load_audio(p, a.max_frames, a.n_mels, None if a.mode == "mel" else a.feature_dim) for p in paths]
        return np.stack([x[0] for x in loaded]), np.stack([x[1] for x in loaded])

    def batches(self, count):
        return [slice(start, min(start + self.batch_size, count)) for start in range(0, count, self.batch_size)]


def _as_list(x):
    return (list(x), False) if isinstance(x, (list, tuple)) else ([x], True)


class Captioner(_Loaded):
    """`Captioner(ckpt).caption("img.jpg")` -> caption; a list of images -> list of captions. Decoding options
    (strategy, beam_size, max_len, ...) override the config's `caption.*` settings."""

    task = "caption"

    def __init__(self, ckpt, config=None, overrides=(), batch_size=16, mindir=None, **decoding):
        super().__init__(ckpt, config, overrides, batch_size, mindir)
        self.generator = self.text_generator(decoding)

    def caption(self, images, audio=None):
        """Captions of `images` (optionally with audio files, one per image)."""
        images, single = _as_list(images)
        audio = _as_list(audio)[0] if audio is not None else None
        if audio is not None and len(audio) != len(images):
            raise UserError(f"{len(audio)} audio files for {len(images)} images; give one per image or none")
        out = []
        for part in self.batches(len(images)):
            sound = self.audio(audio[part]) if audio is not None else (None, None)
            out += self.generator.run(self.images(images[part]), *sound)
        return out[0] if single else out


class VQA(_Loaded):
    """`VQA(ckpt).answer("img.jpg", "图中有几个圆？")` -> answer; lists of images and questions -> list of answers.
    With `answers` (a list of candidate answers) every question is answered by the candidate the decoder scores
    highest (closed vocabulary) instead of by free generation."""

    task = "vqa"

    def __init__(self, ckpt, config=None, overrides=(), batch_size=16, answers=None, mindir=None, **decoding):
        super().__init__(ckpt, config, overrides, batch_size, mindir)
        self.generator = self.text_generator(decoding)
        self.answerer = Answerer(self.generator, answers, self.cfg.vqa.rationale)

    def questions(self, questions):
        length = self.cfg.model.text.max_len
        pairs = [self.tokenizer.encode_padded(q, length) for q in questions]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def answer(self, images, questions):
        """Answers to `questions`, each about the image at the same position (one image for all is fine)."""
        responses = self.respond(images, questions)
        return responses[0] if isinstance(responses, tuple) else [answer for answer, _ in responses]

    def respond(self, images, questions):
        """Like `answer`, with (answer, rationale) pairs; the rationale is None unless the model was trained with
        vqa.rationale."""
        images, single = _as_list(images)
        questions, single_question = _as_list(questions)
        if len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        if len(images) != len(questions):
            raise UserError(f"{len(images)} images for {len(questions)} questions; give one image per question")
        out = []
        for part in self.batches(len(questions)):
            ids, mask = self.questions(questions[part])
            out += self.answerer.respond(self.images(images[part]), ids, mask)
        return out[0] if single and single_question else out



class Retriever(_Loaded):
    """`Retriever(ckpt).search("红色的圆", ["a.jpg", "b.jpg"])` -> image indices, best first, and their similarities.
    `embed_texts` / `embed_images` give the normalised contrastive embeddings of the two towers."""

    task = "retrieval"

    def __init__(self, ckpt, config=None, overrides=(), batch_size=16, mindir=None):
        super().__init__(ckpt, config, overrides, batch_size, mindir)
        if mindir:
            self._text, self._image = self.exported.graph("text"), self.exported.graph("image")
        else:
            self._text, self._image = TextTower(self.model), ImageTower(self.model)

    def embed_texts(self, texts):
        texts = _as_list(texts)[0]
        length = self.cfg.model.text.max_len
        out = []
        for part in self.batches(len(texts)):
            pairs = [self.tokenizer.encode_padded(t, length) for t in texts[part]]
            out.append(self._text(ms.Tensor(np.stack([p[0] for p in pairs])),
                                  ms.Tensor(np.stack([p[1] for p in pairs])))[2].asnumpy())
        return np.concatenate(out)

    def embed_images(self, images):
        images = _as_list(images)[0]
        return np.concatenate([self._image(ms.Tensor(self.images(images[part])))[2].asnumpy()
                               for part in self.batches(len(images))])

    def search(self, text, images):
        """(indices of `images` best first, cosine similarities in that order) for one query text."""
        sims = self.embed_images(images) @ self.embed_texts([text])[0]
        order = np.argsort(-sims, kind="stable")
        return order, sims[order]


def image_files(path, extensions=IMAGE_EXTENSIONS):
    """An image file, or the image files of a folder (sorted by name); `extensions` REGION_EXTENSIONS lists the
    region-feature files of a features-mode model."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(extensions))
        if not files:
            raise UserError(f"{path}: no images ({', '.join(extensions)}) in this folder")
        return files
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such image file or folder")
    return [path]
