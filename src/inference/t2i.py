"""Text-to-image generation with OPT's image decoder and a VQ image tokenizer.

    t2i = TextToImage.from_checkpoints("RUN/checkpoints/step_X", "VQRUN/checkpoints/step_Y")
    result = t2i.generate("左边有一个红色的圆")   # result.best: uint8 (H, W, 3); result.images: all, best first

Per prompt: the text goes through the cross-modal encoder with the image fully masked - exactly the input of the
pre-training image-decoding task (`IDTask.encode` with every patch masked: the mask token replaces every patch, so
the pixels fed in do not matter and are zeros). The image decoder then samples h*w codes `candidates` times with
temperature / top-k / top-p (`generate(strategy="sample")`, KV cache). EOS is forbidden until the grid is full
(min_len = h*w), so a candidate normally holds exactly h*w codes; should a token row still end early (EOS) or hold
PAD/BOS, `tokens_to_grid` fills each missing cell with the code above it (the one to its left in the first row,
code 0 when nothing was generated) and counts the filled cells. The VQ decoder turns codes into images; the
candidates are re-ranked by the model's own text-image score: the cosine of the contrastive towers' embeddings
(`rerank: itc`) or the matching head's logit (`rerank: itm`).

Determinism: a prompt's candidates depend only on (seed, prompt text, checkpoint, settings): each prompt is sampled
on its own with the generator seeded by [seed, crc32(prompt)].
"""
import os
import zlib
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from src.utils.progress import progress

from src.data.labels import IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_PAD_ID, codes_from_tokens
from src.data.masking import image_token_targets
from src.data.transforms import to_uint8
from src.errors import UserError
from src.inference.generation import generate
from src.inference.retrieval import ImageTower, PairScorer, TextTower, run_batched

RERANK = ("itc", "itm")


def t2i_settings(cfg, **overrides):
    """Generation settings: the config's `t2i` section (defaults in config/defaults.yaml), then the non-None
    `overrides`; checked."""
    settings = cfg.t2i.to_dict()
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if settings["rerank"] not in RERANK:
        raise UserError(f"t2i.rerank must be one of {', '.join(RERANK)}, got {settings['rerank']!r}")
    if int(settings["candidates"]) < 1:
        raise UserError(f"t2i.candidates must be >= 1, got {settings['candidates']}")
    if float(settings["guidance"]) < 0:
        raise UserError(f"t2i.guidance must be >= 0 (1 = off), got {settings['guidance']}")
    return settings


def prompt_seed(seed, prompt):
    """The sampling seed of one prompt: [seed, crc32 of its UTF-8 text]."""
    return [int(seed), zlib.crc32(prompt.encode("utf-8"))]


def tokens_to_grid(tokens, height, width):
    """Image-decoder tokens (L,) -> (codes int32 (height, width), number of filled cells).

    `codes_from_tokens` reads codes up to the first EOS (PAD and BOS dropped); codes beyond height*width are dropped;
    missing cells are filled row-major, each with the code above it, or in the first row the code to its left, or 0
    when no code was generated at all.
    """
    codes = codes_from_tokens(tokens)[:height * width]
    grid = np.zeros(height * width, np.int32)
    grid[:len(codes)] = codes
    for cell in range(len(codes), height * width):
        grid[cell] = grid[cell - width] if cell >= width else (grid[cell - 1] if cell else 0)
    return grid.reshape(height, width), height * width - len(codes)


class ImageCodeMemory(nn.Cell):
    """(text_ids, text_mask, image zeros, image_masked ones) -> (memory, mask) of the image decoder: the IDTask's own
    `encode`, without audio."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        from src.tasks.pretrain import IDTask
        self.task = IDTask(model, None, has_audio=False)

    def construct(self, text_ids, text_mask, image, image_masked):
        return self.task.encode(text_ids, text_mask, image, image_masked)


class CodeLogLikelihood(nn.Cell):
    """(decoder input, target, weights, memory, memory mask) -> (B,) the image decoder's teacher-forced
    log-probability of the targets, summed over the weighted positions."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.decoder = model.image_decoder

    def construct(self, inputs, targets, weights, memory, memory_mask):
        log_probs = ops.log_softmax(self.decoder(inputs, memory, memory_mask), -1)
        picked = ops.squeeze(ops.gather_elements(log_probs, 2, ops.expand_dims(targets, -1)), -1)
        return (picked * weights).sum(1)


@dataclass
class Generated:
    """The candidates of one prompt, best first (by `scores`)."""
    prompt: str
    images: np.ndarray          # uint8 (C, H, W, 3) at the VQ decoder's resolution
    scores: np.ndarray          # float64 (C,), the re-ranking score
    codes: np.ndarray           # int32 (C, h, w)
    order: np.ndarray           # int (C,), each candidate's index in sampling order
    filled: np.ndarray          # int (C,), cells filled by `tokens_to_grid`
    image_features: np.ndarray  # float32 (C, D), contrastive embeddings of the generated images
    text_features: np.ndarray   # float32 (D,), contrastive embedding of the prompt

    @property
    def best(self):
        return self.images[0]


def rank_candidates(scores):
    """Candidate indices sorted by descending score (ties keep sampling order)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


class TextToImage:
    """Generate images for prompts with an OPT checkpoint's image decoder and a VQ image tokenizer (see module doc)."""

    def __init__(self, model, vq, tokenizer, cfg, batch_size=16, **settings):
        dec = cfg.model.image_decoder
        if vq.codebook_size != dec.codebook_size:
            raise UserError(f"the VQ tokenizer has {vq.codebook_size} codes but the model's image decoder "
                            f"(model.image_decoder.codebook_size) was built for {dec.codebook_size}; use the VQ "
                            "checkpoint the model's image tokens were extracted with")
        self.height = self.width = vq.grid_size
        self.n_codes = self.height * self.width
        if self.n_codes > dec.max_len - 1:
            raise UserError(f"the VQ tokenizer makes {self.n_codes} codes per image but the image decoder reads at "
                            f"most {dec.max_len - 1} (+ EOS, model.image_decoder.max_len {dec.max_len}); use a VQ "
                            "with a coarser grid or a model with a longer image decoder")
        self.model, self.vq, self.tokenizer, self.cfg = model, vq, tokenizer, cfg
        self.batch_size = int(batch_size)
        self.settings = t2i_settings(cfg, **settings)
        self.image_size = cfg.model.image.image_size
        self.memory_cell = ImageCodeMemory(model)
        self.text_tower, self.image_tower = TextTower(model), ImageTower(model)
        self.pair_scorer = PairScorer(model)
        self.likelihood_cell = CodeLogLikelihood(model)
        self._unconditional = None

    @classmethod
    def from_checkpoints(cls, ckpt, vq_ckpt, config=None, vq_config=None, overrides=(), batch_size=16, **settings):
        """Load the OPT checkpoint (config: `config` or its run's config.yaml) and the VQ checkpoint (config:
        `vq_config` or its run's config.yaml)."""
        from src.data.tokenizer import Tokenizer
        from src.inference.loading import load_trained_model, resolve_config
        from src.inference.loading import load_vq
        for name, path in (("OPT checkpoint", ckpt), ("VQ checkpoint", vq_ckpt)):
            if not os.path.exists(path):
                raise UserError(f"{name} {path} does not exist; give a step directory such as "
                                "<run>/checkpoints/step_00000480")
        cfg = resolve_config(ckpt, config, overrides)
        vq = load_vq(vq_ckpt, vq_config)
        return cls(load_trained_model(cfg, ckpt), vq, Tokenizer(cfg.data.vocab, cfg.data.lower_case), cfg,
                   batch_size, **settings)

    # ----- steps -----
    def encode_texts(self, texts):
        """Prompts -> (ids, mask) int32 (P, text max_len)."""
        pairs = [self.tokenizer.encode_padded(t, self.cfg.model.text.max_len) for t in texts]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def memory(self, ids, mask):
        """The image decoder's memory (P, S, H) and mask (P, S) of tokenised prompts (numpy)."""
        enc = self.model.image_encoder
        image = np.zeros((len(ids), self.cfg.model.image.channels, self.image_size, self.image_size), np.float32)
        masked = np.ones((len(ids), enc.num_tokens), np.float32)
        return run_batched(self.memory_cell, [ids, mask, image, masked], self.batch_size, "t2i memory")

    def unconditional_memory(self):
        """Memory (1, S, H) and mask (1, S) of the empty prompt: the unconditional side of guidance."""
        if self._unconditional is None:
            self._unconditional = self.memory(*self.encode_texts([""]))
        return self._unconditional

    def sample_tokens(self, memory, memory_mask, seed, strategy="sample"):
        """`candidates` token rows (C, h*w) for one prompt's memory (S, H) / mask (S,)."""
        s, count = self.settings, int(self.settings["candidates"])
        rows = np.repeat(memory[None], count, 0), np.repeat(memory_mask[None], count, 0)
        guidance = None
        if float(s["guidance"]) != 1.0:
            guidance = tuple(np.repeat(x, count, 0) for x in self.unconditional_memory()) + (float(s["guidance"]),)
        tokens, _ = generate(self.model.image_decoder, *rows, IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_PAD_ID,
                             self.n_codes, strategy=strategy, min_len=self.n_codes, top_k=int(s["top_k"]),
                             top_p=float(s["top_p"]), temperature=float(s["temperature"]), seed=seed,
                             guidance=guidance)
        return tokens

    def code_log_likelihood(self, codes, memory, memory_mask, batch_size=None):
        """log p(codes | memory) (N,) of code grids (N, h, w) under memories (N, S, H) / masks (N, S): the image
        decoder reads the codes with teacher forcing, and the log-probabilities of the h*w codes are summed (the EOS
        that follows them is not counted). `batch_size`: rows per call (default: the generator's)."""
        rows = [image_token_targets(c, self.vq.codebook_size, self.cfg.model.image_decoder.max_len) for c in codes]
        inputs, targets, weights = (np.stack(column) for column in zip(*rows))
        weights[:, self.n_codes:] = 0.0
        (log_likelihood,) = run_batched(self.likelihood_cell, [inputs, targets, weights, memory, memory_mask],
                                        batch_size or self.batch_size, "t2i likelihood")
        return log_likelihood.astype(np.float64)

    def tower_input(self, images):
        """Decoded images at the VQ's size -> the model's image size (bilinear) when the two differ."""
        if images.shape[-1] == self.image_size and images.shape[-2] == self.image_size:
            return images
        return ops.interpolate(ms.Tensor(images), size=(self.image_size, self.image_size), mode="bilinear").asnumpy()

    def score(self, text, images):
        """Re-ranking scores (N,) of decoded `images` (normalised, any size) for one prompt, and the images'
        contrastive features (N, D); text = (tokens, mask, features) of the text tower (one row each)."""
        n = len(images)  # one batch: every call has the same shape (the number of candidates)
        tokens, mask, features = run_batched(self.image_tower, [self.tower_input(images)], n, "t2i images")
        if self.settings["rerank"] == "itc":
            return features @ text[2], features
        text_rows = [np.repeat(t[None], n, 0) for t in text[:2]]
        (logits,) = run_batched(self.pair_scorer, text_rows + [tokens, mask], n, "t2i pairs")
        return logits, features

    def generate(self, texts, strategy="sample"):
        """A `Generated` for one prompt, or a list of them for a list of prompts. `strategy="greedy"` decodes the
        single most likely code sequence instead (every candidate is then the same)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts:
            return []
        ids, mask = self.encode_texts(texts)
        memory, memory_mask = self.memory(ids, mask)
        text = run_batched(self.text_tower, [ids, mask], self.batch_size, "t2i texts")
        results = []
        for i, prompt in enumerate(progress(texts, desc="t2i", disable=len(texts) <= 1, leave=False)):
            tokens = self.sample_tokens(memory[i], memory_mask[i], prompt_seed(self.settings["seed"], prompt),
                                        strategy)
            grids = [tokens_to_grid(row, self.height, self.width) for row in tokens]
            codes = np.stack([g[0] for g in grids])
            images = self.vq.decode(codes)
            scores, features = self.score([t[i] for t in text], images)
            order = rank_candidates(scores)
            results.append(Generated(prompt=prompt, images=to_uint8(images)[order],
                                     scores=np.asarray(scores, np.float64)[order], codes=codes[order], order=order,
                                     filled=np.array([g[1] for g in grids])[order],
                                     image_features=features[order], text_features=text[2][i]))
        return results[0] if single else results
