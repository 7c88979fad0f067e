"""Sequence generation from a `Decoder`: greedy search, beam search and temperature / top-k / top-p sampling.

The device work is one compiled Cell per step: `DecodeStep` (incremental decoding with the KV cache) or `FullStep`
(no cache: the whole fixed-size token buffer is re-decoded and the logits of the current position are read). The
search itself runs on the host in numpy and touches only the (rows, vocab) logits of each step.

Conventions shared by every strategy:
- the decoder's first input is `bos_id`; outputs exclude it and include the EOS token; after EOS a row holds `pad_id`;
- `pad_id` and `bos_id` are never generated; EOS cannot be generated at output index < `min_len`;
- `no_repeat_ngram=n > 0` forbids any n-gram of generated tokens from occurring twice in a row;
- a returned score is the sum of the model's log-probabilities log p(token | prefix) of the returned tokens (EOS
  included, temperature and filtering not applied), so it equals `score_sequences` of those tokens;
- beam search ranks finished hypotheses by score / lp(length) with the GNMT penalty lp(n) = ((5 + n) / 6) ** alpha
  (`gnmt_length_penalty`; n counts the EOS), the form the original OPT captioner used; alpha = 0 ranks by raw score.
The model must be in eval mode (`model.set_train(False)`) so that dropout is off.
"""
import functools
from types import SimpleNamespace

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from numpy.lib.stride_tricks import sliding_window_view

from src.errors import UserError

STRATEGIES = ("greedy", "beam", "sample")


class PrepareMemory(nn.Cell):
    """`Decoder.prepare` as a Cell: (memory, memory_mask) -> decoding state tuple."""

    def __init__(self, decoder):
        super().__init__(auto_prefix=False)  # keep the decoder's parameter names
        self.decoder = decoder

    def construct(self, memory, memory_mask):
        return self.decoder.prepare(memory, memory_mask)


class DecodeStep(nn.Cell):
    """One KV-cache decoding step with beam reordering built in.

    Inputs: token (R, 1) int32, position (1,) int32, origin (R,) int32, then the state tensors flat. Row r continues
    the hypothesis that was in row origin[r] (identity for greedy and sampling); the self-attention caches - every
    state tensor after the first 1 + 2 * num_layers, which hold the memory - are gathered by `origin` before the step.
    Returns (logits (R, vocab), *new_state).
    """

    def __init__(self, decoder):
        super().__init__(auto_prefix=False)
        self.decoder = decoder
        self.n_constant = 1 + 2 * decoder.num_layers

    def construct(self, token, position, origin, *state):
        caches = ()
        for cache in state[self.n_constant:]:
            caches = caches + (ops.gather(cache, origin, 0),)
        logits, new_state = self.decoder.step(token, position, state[:self.n_constant] + caches)
        return (logits,) + new_state


class FullStep(nn.Cell):
    """One step without a cache: tokens (R, max_len) buffer, position (1,) int32, memory, memory_mask ->
    logits (R, vocab) at `position`. Re-runs `Decoder.construct` (memory encoder included) on the whole buffer."""

    def __init__(self, decoder):
        super().__init__(auto_prefix=False)
        self.decoder = decoder

    def construct(self, tokens, position, memory, memory_mask):
        logits = self.decoder(tokens, memory, memory_mask)
        return ops.gather(logits, position, 1)[:, 0]


@functools.lru_cache(maxsize=8)
def decoding_cells(decoder):
    """The PrepareMemory / DecodeStep / FullStep Cells of `decoder`, built once so that repeated `generate` calls
    reuse the compiled graphs (one per batch shape)."""
    return SimpleNamespace(prepare=PrepareMemory(decoder), step=DecodeStep(decoder), full=FullStep(decoder))


def gnmt_length_penalty(length, alpha):
    """((5 + length) / 6) ** alpha; a finished hypothesis is ranked by its log-prob divided by this."""
    return ((5.0 + length) / 6.0) ** alpha


def log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sampling_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    """(R, V) logits -> (R, V) sampling distribution: logits / temperature, keep the top_k largest (0 = all; ties
    with the k-th value are kept), softmax, then keep the smallest most-probable set whose mass reaches top_p."""
    z = np.asarray(logits, np.float64) / temperature
    vocab = z.shape[1]
    if 0 < top_k < vocab:
        kth = np.partition(z, vocab - top_k, axis=1)[:, vocab - top_k:vocab - top_k + 1]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(log_softmax(z))
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, 1)
        keep_sorted = np.cumsum(sorted_probs, 1) - sorted_probs < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, 1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(1, keepdims=True)
    return probs


def _banned(values, history, step, eos_id, never, min_len, no_repeat_ngram):
    """Copy of (R, V) `values` with -inf on forbidden tokens. `history` (R, step) holds the tokens generated so far.
    A row with every token forbidden gets its EOS value back, so that it can always finish."""
    x = np.array(values, np.float64)
    x[:, never] = -np.inf
    if step < min_len:
        x[:, eos_id] = -np.inf
    n = no_repeat_ngram
    if n and step >= n:
        windows = sliding_window_view(history, n, axis=1)
        match = (windows[:, :, :-1] == history[:, None, step - n + 1:]).all(-1)
        rows, cols = np.nonzero(match)
        x[rows, windows[rows, cols, -1]] = -np.inf
    stuck = ~np.isfinite(x).any(1)
    x[stuck, eos_id] = values[stuck, eos_id]
    return x


class _CachedStepper:
    """Host side of KV-cache decoding: `step` has the `DecodeStep` signature (the Cell or an exported graph); the
    prepared `state` (from `PrepareMemory`) has its rows copied per beam, then is carried from step to step."""

    def __init__(self, step, state, copies):
        if copies > 1:
            state = tuple(ms.Tensor(np.repeat(s.asnumpy(), copies, 0)) for s in state)
        self.state, self.step = state, step

    def __call__(self, tokens, position, origin):
        out = self.step(ms.Tensor(tokens[:, None]), ms.Tensor(np.array([position], np.int32)), ms.Tensor(origin),
                        *self.state)
        self.state = out[1:]
        return out[0].asnumpy()


class _FullStepper:
    """Host side of decoding without a cache: a (rows, decoder.max_len) token buffer re-decoded at every step."""

    def __init__(self, cells, memory, memory_mask, copies, buffer_len, pad_id):
        self.memory = ms.Tensor(np.repeat(memory.asnumpy(), copies, 0))
        self.memory_mask = ms.Tensor(np.repeat(memory_mask.asnumpy(), copies, 0))
        self.buffer = np.full((self.memory.shape[0], buffer_len), pad_id, np.int32)
        self.full = cells.full

    def __call__(self, tokens, position, origin):
        self.buffer = self.buffer[origin]
        self.buffer[:, position] = tokens
        logits = self.full(ms.Tensor(self.buffer), ms.Tensor(np.array([position], np.int32)), self.memory,
                           self.memory_mask)
        return logits.asnumpy()


class _GuidedStepper:
    """Classifier-free guidance around a stepper whose rows are [conditional rows; unconditional rows] (`rows` each,
    unconditional row r + rows guiding row r): both halves take the same tokens and beam reordering, and the
    conditional rows get the guided log-probabilities log p_u + scale * (log p_c - log p_u)."""

    def __init__(self, stepper, rows, scale):
        self.stepper, self.rows, self.scale = stepper, rows, float(scale)

    def __call__(self, tokens, position, origin):
        logits = self.stepper(np.concatenate([tokens, tokens]), position,
                              np.concatenate([origin, origin + self.rows]).astype(np.int32))
        cond, uncond = log_softmax(logits[:self.rows]), log_softmax(logits[self.rows:])
        return uncond + self.scale * (cond - uncond)


def _as_tensor(x, dtype):
    return x if isinstance(x, ms.Tensor) else ms.Tensor(np.asarray(x), dtype)


def _check(decoder_len, strategy, max_len, beam_size, min_len, no_repeat_ngram, top_k, top_p, temperature):
    if strategy not in STRATEGIES:
        raise UserError(f"unknown decoding strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if not 1 <= max_len <= decoder_len:
        raise UserError(f"generation max_len {max_len} must lie in [1, {decoder_len}] (the decoder's max_len); "
                        "lower it or enlarge the decoder's max_len in the model config")
    checks = [(beam_size >= 1, "beam_size", beam_size, ">= 1"), (min_len >= 0, "min_len", min_len, ">= 0"),
              (no_repeat_ngram >= 0, "no_repeat_ngram", no_repeat_ngram, ">= 0 (0 = off)"),
              (top_k >= 0, "top_k", top_k, ">= 0 (0 = off)"), (0.0 < top_p <= 1.0, "top_p", top_p, "in (0, 1]"),
              (temperature > 0.0, "temperature", temperature, "> 0")]
    for ok, name, value, rule in checks:
        if not ok:
            raise UserError(f"generation {name} must be {rule}, got {value}; fix it in the generation settings")


def generate(decoder, memory, memory_mask, bos_id, eos_id, pad_id, max_len, strategy="greedy", beam_size=3,
             length_penalty=1.0, min_len=1, no_repeat_ngram=0, top_k=0, top_p=1.0, temperature=1.0, seed=0,
             use_cache=True, guidance=None):
    """Generate up to `max_len` tokens per memory row (see the module docstring for the conventions).

    memory (B, S, H) and memory_mask (B, S) are Tensors or arrays. Returns (tokens int32 (B, L), scores float64 (B,))
    with L the longest returned sequence. `use_cache=False` decodes without the KV cache (same results, slower).
    `guidance` = (unconditional memory (B, S', H), its mask (B, S'), scale): classifier-free guidance. Every step
    decodes both memories in one batch, and row b's next token comes from log p(. | memory b) guided away from
    log p(. | unconditional b) by `scale` (1 = no guidance); scores are then sums of these guided log-probs.
    """
    _check(decoder.max_len, strategy, max_len, beam_size, min_len, no_repeat_ngram, top_k, top_p, temperature)
    memory, memory_mask = _as_tensor(memory, ms.float32), _as_tensor(memory_mask, ms.float32)
    batch = memory.shape[0]
    copies = beam_size if strategy == "beam" else 1
    if guidance is not None:
        memory, memory_mask = _with_unconditional_rows(memory, memory_mask, *guidance[:2])
    cells = decoding_cells(decoder)
    if use_cache:
        stepper = _CachedStepper(cells.step, cells.prepare(memory, memory_mask), copies)
    else:
        stepper = _FullStepper(cells, memory, memory_mask, copies, decoder.max_len, pad_id)
    if guidance is not None:
        stepper = _GuidedStepper(stepper, batch * copies, guidance[2])
    return _search(stepper, batch, bos_id, eos_id, pad_id, max_len, strategy, beam_size, length_penalty,
                   min_len, no_repeat_ngram, top_k, top_p, temperature, seed)


def _with_unconditional_rows(memory, memory_mask, uncond, uncond_mask):
    """[memory; unconditional memory] and their masks as one batch; both sides must have the same shape."""
    uncond, uncond_mask = _as_tensor(uncond, ms.float32), _as_tensor(uncond_mask, ms.float32)
    if uncond.shape != memory.shape or uncond_mask.shape != memory_mask.shape:
        raise UserError(f"guidance memory {tuple(uncond.shape)} does not fit the memory {tuple(memory.shape)}: give "
                        "one unconditional row of the same length and width per row")
    return ops.concat((memory, uncond)), ops.concat((memory_mask, uncond_mask))


def generate_from_state(step, state, decoder_len, bos_id, eos_id, pad_id, max_len, strategy="greedy", beam_size=3,
                        length_penalty=1.0, min_len=1, no_repeat_ngram=0, top_k=0, top_p=1.0, temperature=1.0,
                        seed=0):
    """`generate` through any callables with the PrepareMemory / DecodeStep signatures, e.g. exported graphs:
    `state` is the prepared decoding state (B rows), `step` the DecodeStep callable and `decoder_len` the decoder's
    max_len. Same conventions and results as `generate`."""
    _check(decoder_len, strategy, max_len, beam_size, min_len, no_repeat_ngram, top_k, top_p, temperature)
    stepper = _CachedStepper(step, tuple(state), beam_size if strategy == "beam" else 1)
    return _search(stepper, state[0].shape[0], bos_id, eos_id, pad_id, max_len, strategy, beam_size, length_penalty,
                   min_len, no_repeat_ngram, top_k, top_p, temperature, seed)


def _search(stepper, batch, bos_id, eos_id, pad_id, max_len, strategy, beam_size, length_penalty, min_len,
            no_repeat_ngram, top_k, top_p, temperature, seed):
    """Run the decoding `strategy` for `batch` memory rows through `stepper(tokens, position, origin) -> logits`."""
    ban = functools.partial(_banned, eos_id=eos_id, never=sorted({pad_id, bos_id} - {eos_id}), min_len=min_len,
                            no_repeat_ngram=no_repeat_ngram)
    if strategy == "beam":
        return _beam_search(stepper, ban, batch, beam_size, bos_id, eos_id, pad_id, max_len, length_penalty)
    if strategy == "greedy":
        choose = _greedy_choice
    else:
        rng = np.random.default_rng(seed)
        choose = functools.partial(_sampled_choice, rng=rng, temperature=temperature, top_k=top_k, top_p=top_p)
    return _left_to_right(stepper, ban, choose, batch, bos_id, eos_id, pad_id, max_len)


def _greedy_choice(logits):
    return logits.argmax(1)


def _sampled_choice(logits, rng, temperature, top_k, top_p):
    probs = sampling_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(probs, 1)
    u = 1.0 - rng.random(len(probs))  # in (0, 1], so a zero-probability token is never drawn
    return np.minimum((cdf < u[:, None] * cdf[:, -1:]).sum(1), probs.shape[1] - 1)


def _left_to_right(stepper, ban, choose, batch, bos_id, eos_id, pad_id, max_len):
    """Greedy or sampled decoding: one token per row per step; finished rows emit pad and keep their score."""
    out = np.full((batch, max_len), pad_id, np.int32)
    scores = np.zeros(batch)
    finished = np.zeros(batch, bool)
    rows = np.arange(batch, dtype=np.int32)
    token = np.full(batch, bos_id, np.int32)
    length = 0
    for t in range(max_len):
        logits = stepper(token, t, rows)
        token = choose(ban(logits, out[:, :t], t)).astype(np.int32)
        token[finished] = pad_id
        scores += np.where(finished, 0.0, log_softmax(logits)[rows, token])
        out[:, t] = token
        finished |= token == eos_id
        length = t + 1
        if finished.all():
            break
    return out[:, :length], scores


def _beam_search(stepper, ban, batch, beams, bos_id, eos_id, pad_id, max_len, alpha):
    """Beam search over `beams` rows per memory row (row b * beams + k). Active beams are ranked by summed log-prob;
    each step looks at the best 2 * beams extensions: an EOS among the best `beams` finishes a hypothesis, the best
    `beams` non-EOS ones stay active. A memory row is done once it has `beams` finished hypotheses; at max_len the
    active beams are finished without EOS. Returns the best finished hypothesis by score / lp(length)."""
    rows = batch * beams
    base = (np.arange(batch) * beams)[:, None]
    beam_scores = np.full((batch, beams), -np.inf)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = np.zeros((rows, 0), np.int32)
    token = np.full(rows, bos_id, np.int32)
    origin = np.arange(rows, dtype=np.int32)
    finished = [[] for _ in range(batch)]  # (ranking score, log-prob, tokens)
    done = np.zeros(batch, bool)
    for t in range(max_len):
        logits = stepper(token, t, origin)
        logp = ban(log_softmax(logits), history, t)
        vocab = logp.shape[1]
        candidates = (beam_scores.reshape(rows, 1) + logp).reshape(batch, beams * vocab)
        top = _top_indices(candidates, min(2 * beams, beams * vocab))
        top_scores = np.take_along_axis(candidates, top, 1)
        from_beam, top_token = top // vocab, (top % vocab).astype(np.int32)
        is_eos = top_token == eos_id
        alive = np.isfinite(top_scores)
        closing = is_eos & alive & (np.arange(top.shape[1]) < beams) & ~done[:, None]
        for b, r in zip(*np.nonzero(closing)):
            seq = history[base[b, 0] + from_beam[b, r]].tolist() + [eos_id]
            finished[b].append((top_scores[b, r] / gnmt_length_penalty(t + 1, alpha), top_scores[b, r], seq))
        unusable = is_eos | ~alive
        keep = np.argsort(unusable, axis=1, kind="stable")[:, :beams]
        beam_scores = np.where(np.take_along_axis(unusable, keep, 1), -np.inf, np.take_along_axis(top_scores, keep, 1))
        origin = (base + np.take_along_axis(from_beam, keep, 1)).reshape(rows).astype(np.int32)
        token = np.take_along_axis(top_token, keep, 1).reshape(rows)
        history = np.concatenate([history[origin], token[:, None]], 1)
        done |= np.array([len(f) >= beams for f in finished])
        if done.all():
            break
    for b in np.nonzero(~done)[0]:
        for k in np.nonzero(np.isfinite(beam_scores[b]))[0]:
            seq = history[base[b, 0] + k].tolist()
            finished[b].append((beam_scores[b, k] / gnmt_length_penalty(len(seq), alpha), beam_scores[b, k], seq))
    best = [max(f, key=lambda h: h[0]) if f else (-np.inf, -np.inf, []) for f in finished]
    width = max(1, max(len(h[2]) for h in best))
    out = np.full((batch, width), pad_id, np.int32)
    for b, (_, _, seq) in enumerate(best):
        out[b, :len(seq)] = seq
    return out, np.array([h[1] for h in best], np.float64)


def _top_indices(scores, n):
    """Column indices of the n largest entries per row, best first (ties: lower index first)."""
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    values = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, 1)


def score_sequences(decoder, memory, memory_mask, tokens, bos_id, eos_id, pad_id):
    """Total log-prob of each row of `tokens` (B, L) (without BOS) given its memory row: positions up to and
    including the first EOS count, pad positions do not. Returns float64 (B,)."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.shape[1] > decoder.max_len:
        raise UserError(f"cannot score {tokens.shape[1]} tokens: the decoder reads at most {decoder.max_len}")
    inputs = np.concatenate([np.full((len(tokens), 1), bos_id, np.int32), tokens[:, :-1]], 1)
    logits = decoder(ms.Tensor(inputs), _as_tensor(memory, ms.float32), _as_tensor(memory_mask, ms.float32))
    picked = np.take_along_axis(log_softmax(logits.asnumpy()), tokens[..., None], -1)[..., 0]
    eos_before = np.cumsum(tokens == eos_id, 1) - (tokens == eos_id)
    counted = (eos_before == 0) & (tokens != pad_id)
    return np.where(counted, picked, 0.0).sum(1)
