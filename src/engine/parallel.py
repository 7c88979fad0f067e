"""How the model is spread over devices: data parallel, or Megatron-style tensor parallel in SEMI_AUTO_PARALLEL mode,
plus the per-device memory model behind `scripts/plan_parallel.py`. See docs/parallel.md.

Layout: `dp * mp` devices. `dp` model replicas each see different samples; inside a replica, `mp` devices share every
transformer block: query/key/value and FFN fc1 weights are split on their output dimension (column parallel), the
attention output projection and FFN fc2 on their input dimension (row parallel, followed by an all-reduce), so every
device holds `heads / mp` heads. Vocabulary tables are split by `mp` on the vocabulary dimension, or replicated with
`vocab_dp`. Everything else (LayerNorms, heads, projections, position tables) is replicated and only split on the
batch. Operators without a strategy get MindSpore's default, the batch split over all `dp * mp` devices.

Batch: `train.batch_size` is what each device reads per step in both modes (the pipeline shards by rank, as in data
parallel; SEMI_AUTO runs with `full_batch=False`). A replica therefore processes `batch_size * mp` samples and the
global batch is `batch_size * dp * mp`.

A strategy map is {path of a primitive inside the model: shard strategy}, e.g.
`"cross_encoder.blocks.0.attn.query.matmul": ((dp, 1), (mp, 1))`. MindSpore's Dense keeps its weight as [out, in]
and multiplies with `transpose_b=True`, so the second tuple of a Dense strategy is (out split, in split).
"""
import os
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn
from mindspore.communication import GlobalComm, get_group_size, get_rank

from src.errors import UserError
from src.models.layers import Attention, DecoderBlock, EncoderBlock, FeedForward
from src.models.opt import IMAGE_TOKEN_OFFSET

MODES = ("data", "semi_auto")
CPU_MESSAGE = "tensor/semi-auto parallel needs Ascend or GPU; on CPU use parallel.mode=data with mp=1"
OPTIMIZER_SHARD_CPU_MESSAGE = ("parallel.optimizer_shard needs Ascend or GPU; set parallel.optimizer_shard: false on "
                               "CPU")

COLUMN, ROW, REPLICATED = "column", "row", "replicated"
_DENSE_ROLES = {Attention: {"query": COLUMN, "key": COLUMN, "value": COLUMN, "out": ROW},
                FeedForward: {"fc1": COLUMN, "fc2": ROW}}
# Primitives that exist only when src/models writes these matmuls as primitive attributes (see docs/parallel.md).
_ATTENTION_MATMULS = ("score_matmul", "context_matmul")
_LOGITS_MATMUL = "logits_matmul"
# (embedding table, the output projection tied to it), relative to the cell that owns both.
_TIED_TABLES = (("text_encoder.word_embeddings", "mlm_head"), ("token_embeddings", ""))

# Model sections made of transformer blocks, with the config keys that count their blocks.
_BLOCK_SECTIONS = (("text", ("layers",)), ("image", ("layers",)), ("audio", ("layers",)), ("cross", ("layers",)),
                   ("text_decoder", ("memory_layers", "layers")), ("image_decoder", ("memory_layers", "layers")))

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "momentum": 4, "sgd": 0}  # fp32 state per parameter
GB = 2 ** 30  # as MindSpore's max_device_memory
DEVICES = ("cpu", "ascend", "gpu")


# ----- strategies -----------------------------------------------------------------------------------------------

def _join(path, name):
    return f"{path}.{name}" if path and name else path or name


def _dense_strategies(role, dp, mp, has_bias):
    """Strategies of an nn.Dense's `matmul` (x [N, in] times weight [out, in]^T) and `bias_add`."""
    if role == COLUMN:
        plan = {"matmul": ((dp, 1), (mp, 1)), "bias_add": ((dp, mp), (mp,))}
    elif role == ROW:
        plan = {"matmul": ((dp, mp), (1, mp)), "bias_add": ((dp, 1), (1,))}
    else:
        plan = {"matmul": ((dp, 1), (1, 1)), "bias_add": ((dp, 1), (1,))}
    if not has_bias:
        del plan["bias_add"]
    return plan


def model_strategies(model, dp, mp, vocab_dp=True):
    """Strategy map for every shardable primitive of `model` (an OPTModel or any Cell built from src.models)."""
    vocab_split = 1 if vocab_dp else mp
    roles, strategies = {}, {}
    for path, cell in model.cells_and_names():
        for cls, children in _DENSE_ROLES.items():
            if isinstance(cell, cls):
                roles.update({_join(path, child): role for child, role in children.items()})
        if isinstance(cell, nn.Dense):
            plan = _dense_strategies(roles.get(path, REPLICATED), dp, mp, cell.has_bias)
        elif isinstance(cell, nn.Embedding):
            # position tables are read with (1, L) position ids: no batch to split
            positions = path.rsplit(".", 1)[-1] == "position_embeddings"
            plan = {"gather": ((1, 1), (1,)) if positions else ((vocab_split, 1), (dp,))}
        elif isinstance(cell, nn.LayerNorm):
            plan = {"layer_norm": ((dp, 1, 1), (1,), (1,))}
        else:
            plan = {}
        if isinstance(cell, Attention):
            plan.update({name: ((dp, mp, 1, 1), (dp, mp, 1, 1)) for name in _ATTENTION_MATMULS
                         if hasattr(cell, name)})
        if hasattr(cell, _LOGITS_MATMUL):
            plan[_LOGITS_MATMUL] = ((dp, 1), (vocab_split, 1))
        strategies.update({_join(path, name): strategy for name, strategy in plan.items()})
    return strategies


def plan_strategies(model_cfg, dp, mp, vocab_dp=True, vocab_size=None):
    """Strategy map for the model that `model_cfg` describes (built without allocating its parameters)."""
    from src.models.summary import build_unallocated
    return model_strategies(build_unallocated(model_cfg, vocab_size=vocab_size), dp, mp, vocab_dp)


def apply_strategies(model, strategies):
    """Call `.shard(strategy)` on every primitive of the map; returns how many were sharded."""
    cells = dict(model.cells_and_names())
    for path, strategy in strategies.items():
        cell_path, _, name = path.rpartition(".")
        primitive = getattr(cells.get(cell_path), name, None)
        if primitive is None:
            raise ValueError(f"strategy for '{path}', but the model has no such primitive")
        primitive.shard(strategy)
        if hasattr(cells[cell_path], "lean_backward"):
            # a sharded cell runs through these primitives, not its hand-written backward (Attention's
            # RecomputedAttention, Dense's BiasAdd)
            cells[cell_path].lean_backward = False
    return len(strategies)


def apply_recompute(model):
    """Recompute every transformer block in the backward pass instead of keeping its activations; returns the count."""
    blocks = [cell for _, cell in model.cells_and_names() if isinstance(cell, (EncoderBlock, DecoderBlock))]
    for block in blocks:
        block.recompute()
    return len(blocks)


# ----- validation -----------------------------------------------------------------------------------------------

def shape_problems(model_cfg, dp, mp, vocab_dp=True, batch_size=None, grad_accumulation=1):
    """Sharded dimensions that `mp` does not divide, and batch sizes that do not split, as one message each."""
    if dp < 1 or mp < 1:
        return [f"parallel.dp={dp} and parallel.mp={mp} must be >= 1"]
    problems = []
    for section, layer_keys in _BLOCK_SECTIONS:
        sec = model_cfg[section]
        if mp > 1 and sum(sec[key] for key in layer_keys) > 0:
            problems += [f"model.{section}.{key}={sec[key]} is not divisible by parallel.mp={mp}"
                         for key in ("hidden", "heads", "ffn") if sec[key] % mp]
    if mp > 1 and not vocab_dp:
        vocabularies = (("model.text.vocab_size", model_cfg.text.vocab_size),
                        ("model.image_decoder.codebook_size + 3 specials",
                         model_cfg.image_decoder.codebook_size + IMAGE_TOKEN_OFFSET))
        problems += [f"{name}={size} is not divisible by parallel.mp={mp} (or set parallel.vocab_dp: true)"
                     for name, size in vocabularies if size % mp]
    if batch_size is not None and (grad_accumulation < 1 or batch_size % grad_accumulation):
        problems.append(f"train.batch_size={batch_size} is not divisible by "
                        f"train.grad_accumulation={grad_accumulation}")
    return problems


def _weight_split(strategies, path, axis):
    """Split of the weight (second input) of the matmul at `path` on `axis` (0: out, 1: in), None if absent."""
    strategy = strategies.get(path)
    return None if strategy is None else strategy[1][axis]


def strategy_problems(strategies):
    """Inconsistent splits inside the map: q/k/v out split = head split = out-projection in split; FFN fc1 out split
    = fc2 in split; a vocabulary table split like the output projection tied to it."""
    problems = []
    for path in strategies:
        if path.endswith(".query.matmul"):
            attn = path[:-len(".query.matmul")]
            splits = {f"{attn}.{name}": _weight_split(strategies, f"{attn}.{name}.matmul", 0)
                      for name in ("query", "key", "value")}
            splits[f"{attn}.out (input)"] = _weight_split(strategies, f"{attn}.out.matmul", 1)
            for name in _ATTENTION_MATMULS:
                if f"{attn}.{name}" in strategies:
                    splits[f"{attn}.{name} (heads)"] = strategies[f"{attn}.{name}"][0][1]
            if len(set(splits.values())) > 1:
                problems.append(f"{attn}: head splits differ: " + ", ".join(f"{k}={v}" for k, v in splits.items()))
        elif path.endswith(".fc1.matmul"):
            ffn = path[:-len(".fc1.matmul")]
            fc1, fc2 = _weight_split(strategies, path, 0), _weight_split(strategies, f"{ffn}.fc2.matmul", 1)
            if fc1 != fc2:
                problems.append(f"{ffn}: fc1 output split {fc1} differs from fc2 input split {fc2}")
        for table, projection in _TIED_TABLES:
            if not path.endswith(f"{table}.gather") or strategies[path][0][0] == 1:
                continue
            owner = path[:-len(f"{table}.gather")].rstrip(".")
            tied = _join(_join(owner, projection), _LOGITS_MATMUL)
            if tied not in strategies:
                problems.append(f"{path[:-len('.gather')]} is split by vocabulary but its tied output projection is "
                                "not a shardable primitive; set parallel.vocab_dp: true")
            elif strategies[tied][1][0] != strategies[path][0][0]:
                problems.append(f"{tied} splits the vocabulary {strategies[tied][1][0]} ways, its table "
                                f"{strategies[path][0][0]} ways")
    return problems


def validate_strategies(model_cfg, dp, mp, vocab_dp=True, batch_size=None, grad_accumulation=1, strategies=None):
    """Every problem of running `model_cfg` on dp x mp devices (empty list = fine). `strategies` defaults to
    `plan_strategies(model_cfg, dp, mp, vocab_dp)`."""
    if strategies is None:
        strategies = plan_strategies(model_cfg, dp, mp, vocab_dp)
    return shape_problems(model_cfg, dp, mp, vocab_dp, batch_size, grad_accumulation) + strategy_problems(strategies)


# ----- run-time set-up ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParallelLayout:
    mode: str
    dp: int
    mp: int

    @property
    def devices(self):
        return self.dp * self.mp


def resolve_layout(parallel_cfg, world_size):
    """The layout `parallel_cfg` asks for on `world_size` devices (`dp: 0` = world_size / mp); UserError if it
    cannot be had."""
    mode, mp = parallel_cfg.mode, parallel_cfg.mp
    if mode not in MODES:
        raise UserError(f"parallel.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mp < 1 or parallel_cfg.dp < 0:
        raise UserError(f"parallel.mp must be >= 1 and parallel.dp >= 0 (0 = all devices / mp), got "
                        f"mp={mp}, dp={parallel_cfg.dp}")
    if mode == "data" and mp > 1:
        raise UserError(f"parallel.mp={mp} needs parallel.mode=semi_auto (data mode replicates the model)")
    dp = parallel_cfg.dp or world_size // mp
    if dp * mp != world_size:
        raise UserError(f"parallel.dp={dp} x parallel.mp={mp} = {dp * mp} devices, but the job has {world_size}; "
                        "set parallel.dp: 0 or launch dp * mp ranks")
    return ParallelLayout(mode, dp, mp)


def _world_size():
    return get_group_size() if GlobalComm.INITED else 1


def _is_rank0():
    return not GlobalComm.INITED or get_rank() == 0


def check_device_support(parallel_cfg, device):
    """Refuse, with the one-line messages of docs/parallel.md, settings that `device` cannot run (CPU: anything but
    plain data parallelism). Pure: touches no MindSpore state, so entry points call it before anything else."""
    if device != "CPU":
        return
    if parallel_cfg.mode == "semi_auto" or parallel_cfg.mp > 1:
        raise UserError(CPU_MESSAGE)
    if parallel_cfg.optimizer_shard:
        raise UserError(OPTIMIZER_SHARD_CPU_MESSAGE)


def parallel_context(cfg, layout):
    """The keyword arguments `set_parallel_context` passes to `mindspore.set_auto_parallel_context` (None: nothing to
    set, a single device in data mode)."""
    p = cfg.parallel
    if layout.mode == "semi_auto":
        context = {"parallel_mode": ms.ParallelMode.SEMI_AUTO_PARALLEL, "gradients_mean": False,
                   "full_batch": False, "enable_parallel_optimizer": bool(p.optimizer_shard)}
        if _is_rank0():  # the layout of every sliced parameter, to merge per-rank checkpoints later
            context["strategy_ckpt_config"] = {"save_file": os.path.join(cfg.run.output_dir, "strategy.ckpt"),
                                               "only_trainable_params": False}
        return context
    if layout.devices > 1:
        return {"parallel_mode": ms.ParallelMode.DATA_PARALLEL, "gradients_mean": True,
                "enable_parallel_optimizer": bool(p.optimizer_shard)}
    return None


def set_parallel_context(cfg, device):
    """Check `cfg.parallel` against the device and the job's size, validate a semi-auto split against the model
    config, and set MindSpore's auto-parallel context; return the ParallelLayout.

    Called by `src.engine.context.setup_context` (every entry point) after communication is initialised and before
    any model is built.
    """
    p = cfg.parallel
    check_device_support(p, device)
    layout = resolve_layout(p, _world_size())
    if layout.mode == "semi_auto":
        problems = shape_problems(cfg.model, layout.dp, layout.mp, p.vocab_dp, cfg.train.batch_size,
                                  cfg.train.grad_accumulation)
        if problems:
            raise UserError(f"parallel.dp={layout.dp} parallel.mp={layout.mp} does not fit the model: "
                            + "; ".join(problems))
    context = parallel_context(cfg, layout)
    if context:
        ms.set_auto_parallel_context(**context)
    return layout


def prepare_model(cfg, model):
    """Shard `model` (semi-auto mode) and mark its blocks for recompute as `cfg.parallel` asks; return the layout.

    Call after `set_parallel_context` and before building the optimizer (optimizer sharding is decided when the
    optimizer is created). Every trainer goes through `src.engine.trainer.Trainer`, which calls it.
    """
    p = cfg.parallel
    layout = resolve_layout(p, _world_size())
    if layout.mode == "semi_auto":
        strategies = model_strategies(model, layout.dp, layout.mp, p.vocab_dp)
        problems = strategy_problems(strategies)
        if problems:
            raise UserError(f"parallel.dp={layout.dp} parallel.mp={layout.mp} does not fit the model: "
                            + "; ".join(problems))
        apply_strategies(model, strategies)
    if p.recompute:
        apply_recompute(model)
    return layout


def configure_parallel(cfg, device, model):
    """`set_parallel_context` then `prepare_model`: the whole `parallel:` section for one model; returns the layout.

    A problem of the split raises before the context changes.
    """
    check_device_support(cfg.parallel, device)
    layout = resolve_layout(cfg.parallel, _world_size())
    if layout.mode == "semi_auto":
        strategies = model_strategies(model, layout.dp, layout.mp, cfg.parallel.vocab_dp)
        problems = shape_problems(cfg.model, layout.dp, layout.mp, cfg.parallel.vocab_dp, cfg.train.batch_size,
                                  cfg.train.grad_accumulation) + strategy_problems(strategies)
        if problems:
            raise UserError(f"parallel.dp={layout.dp} parallel.mp={layout.mp} does not fit the model: "
                            + "; ".join(problems))
    set_parallel_context(cfg, device)
    return prepare_model(cfg, model)


# ----- memory per device ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stack:
    """`layers` identical transformer blocks over `seq` tokens; `memory` > 0 adds cross-attention to that many
    memory tokens (decoder blocks), `vocab` > 0 the size of the vocabulary a decoder's logits cover. Stacks of one
    `group` run together; see `activation_bytes`."""

    name: str
    group: str
    layers: int
    seq: int
    width: int
    heads: int
    ffn: int
    memory: int = 0
    vocab: int = 0


def token_counts(model_cfg):
    """(text, image, audio) tokens the cross-modal encoder sees at the configured lengths (image with its global
    token)."""
    image, audio = model_cfg.image, model_cfg.audio
    image_tokens = (image.image_size // image.patch_size) ** 2 if image.mode == "pixels" else image.max_regions
    audio_tokens = audio.max_frames // audio.subsample if audio.mode == "mel" else audio.max_frames
    return model_cfg.text.max_len, image_tokens + 1, audio_tokens


def transformer_stacks(model_cfg, text_len, image_len, audio_len, vocab_size=None):
    """The model's transformer stacks at the given token counts (0 = modality absent). `vocab_size` stands for
    `model.text.vocab_size: 0` (the tokenizer's) in the text decoder's logits."""
    c = model_cfg
    cross_len = text_len + image_len + audio_len
    stacks = [Stack(f"{name} encoder", "encoders", sec.layers, length, sec.hidden, sec.heads, sec.ffn)
              for name, sec, length in (("text", c.text, text_len), ("image", c.image, image_len),
                                        ("audio", c.audio, audio_len)) if length]
    stacks.append(Stack("cross-modal encoder", "encoders", c.cross.layers, cross_len, c.cross.hidden, c.cross.heads,
                        c.cross.ffn))
    vocabularies = {"text decoder": c.text.vocab_size or vocab_size or 0,
                    "image decoder": c.image_decoder.codebook_size + IMAGE_TOKEN_OFFSET}
    for name, d in (("text decoder", c.text_decoder), ("image decoder", c.image_decoder)):
        stacks.append(Stack(f"{name} memory", name, d.memory_layers, cross_len, d.hidden, d.heads, d.ffn))
        stacks.append(Stack(name, name, d.layers, d.max_len, d.hidden, d.heads, d.ffn, memory=cross_len,
                            vocab=vocabularies[name]))
    return [s for s in stacks if s.layers > 0]


def _attention_bytes(sq, sk, b, h, a, mp, e):
    """Activations one attention sub-block keeps for backward (Korthikanti et al. 2022, generalised to key length
    `sk` and element size `e`; dropout masks are 1 byte). src.models.layers.Attention runs the softmax in fp32, so its
    output is kept in 4 bytes whatever the compute dtype, plus its cast back to `e` bytes (the dropout input)."""
    replicated = e * 2 * sq * b * h + sq * b * h          # LayerNorm input, q/k/v input; output dropout mask
    sharded = (e * (2 * sq * b * h + 2 * sk * b * h)       # q and the out-projection input; k, v
               + (4 + e) * a * sq * sk * b                 # fp32 softmax output; attention-dropout output
               + a * sq * sk * b)                          # attention-dropout mask
    return replicated + sharded / mp


def _ffn_bytes(s, b, h, f, mp, e):
    replicated = e * 2 * s * b * h + s * b * h             # LayerNorm input, fc1 input; dropout mask
    return replicated + e * 2 * s * b * f / mp             # GELU input and output


def layer_activation_bytes(stack, batch, mp, e):
    """Bytes one block of `stack` keeps for backward at `batch` samples per replica. For a plain block at fp16 this
    is s*b*h*(10 + 24/mp + 7*a*s/(h*mp)) when ffn = 4h (Korthikanti's 5*a*s/h, plus 2 for the fp32 softmax)."""
    s, h, a = stack.seq, stack.width, stack.heads
    total = _attention_bytes(s, s, batch, h, a, mp, e) + _ffn_bytes(s, batch, h, stack.ffn, mp, e)
    if stack.memory:
        total += _attention_bytes(s, stack.memory, batch, h, a, mp, e)
    return total


def stack_activation_bytes(stack, batch, mp, e, recompute):
    """All blocks of `stack`: every block's activations, or with full recompute only each block's input plus one
    block's activations while it is recomputed. Decoder stacks also keep the memory they attend to."""
    one_layer = layer_activation_bytes(stack, batch, mp, e)
    if recompute:
        kept = stack.layers * e * stack.seq * batch * stack.width + one_layer
    else:
        kept = stack.layers * one_layer
    return kept + e * stack.memory * batch * stack.width


def activation_bytes(stacks, batch, mp, e, recompute):
    """Encoders (single-modal and cross-modal) plus the heavier decoder: a step trains at most one decoder."""
    groups = {}
    for stack in stacks:
        groups[stack.group] = groups.get(stack.group, 0) + stack_activation_bytes(stack, batch, mp, e, recompute)
    encoders = groups.pop("encoders", 0)
    return encoders + max(groups.values(), default=0)


def split_parameter_counts(model, strategies):
    """(parameters split by mp, parameters every device holds in full) under `strategies`."""
    sharded = 0
    for path, cell in model.cells_and_names():
        if isinstance(cell, nn.Dense):
            matmul = strategies.get(_join(path, "matmul"), ((1, 1), (1, 1)))
            sharded += cell.weight.size if matmul[1][0] * matmul[1][1] > 1 else 0
            if cell.has_bias and strategies.get(_join(path, "bias_add"), ((1,), (1,)))[1][0] > 1:
                sharded += cell.bias.size
        elif isinstance(cell, nn.Embedding) and strategies.get(_join(path, "gather"), ((1, 1),))[0][0] > 1:
            sharded += cell.embedding_table.size
    return sharded, sum(p.size for p in model.get_parameters()) - sharded


DROPOUT_MASKS = ("step", "kernel")   # train.dropout_masks: the trainer's StepDropout or MindSpore's Dropout kernel


def check_dropout_masks(choice):
    """`choice` if it names a way to draw dropout masks (DROPOUT_MASKS), else a UserError naming the key."""
    if choice not in DROPOUT_MASKS:
        raise UserError(f"train.dropout_masks must be one of {', '.join(DROPOUT_MASKS)}, got {choice!r}")
    return choice


@dataclass(frozen=True)
class DeviceTerms:
    """What one device kind adds to the core formula (weights, gradients, optimizer state, Korthikanti activations).

    runtime: bytes of framework, runtime and compiled graphs, whatever the batch;
    activation_factor: activations the device's graph keeps for backward, as a multiple of the Korthikanti count;
    logit_copies: fp32 tensors of a decoder's logits size (logits, softmax, their gradients) kept per step;
    step_mask_bytes, kernel_mask_bytes: bytes per element that a dropout layer masks, by how the masks are drawn
        (train.dropout_masks: the trainer's StepDropout or the framework's kernel), beyond the 1-byte mask
        Korthikanti counts;
    recompute_frees: whether recomputing the blocks (parallel.recompute) lowers the peak at all.
    """

    runtime: float
    activation_factor: float
    logit_copies: float
    step_mask_bytes: float
    kernel_mask_bytes: float
    recompute_frees: bool

    def mask_bytes(self, masks):
        return self.step_mask_bytes if check_dropout_masks(masks) == "step" else self.kernel_mask_bytes


# CPU: fitted on 2026-12-07 to the peak RSS of train steps on the 2-core test machine (MindSpore 2.10, graph mode,
# fp32; docs/parallel.md, "Planner against measured peak memory"). Without dropout: small MLM at batch 1, 4, 16, small
# TD at 4, 16, base MLM at 1, 2, 4; runtime and activation_factor are the minimax pair over the MLM runs (-8% .. +6%),
# logit_copies the TD runs' excess over them. step_mask_bytes / kernel_mask_bytes: base MLM at batch 4 with dropout
# 0.1 peaks 0.6 / 0.8 GB above the same step without, over 238 M masked elements (2026-12-08, commit 11e1d3a: step
# masks run in the native kernels, which form no mask; without a compiler they cost 7 bytes). recompute_frees:
# parallel.recompute on base at batch 4 lowered MindSpore's pool peak by 0.65 GB and raised peak RSS by 0.3 GB (the
# recomputed kernels' own buffers), 29% slower.
# Ascend and GPU: assumed 0 / 1 / 0 / 0 / 0 / recompute frees (device memory excludes the host runtime, fused kernels
# keep what Korthikanti counts, logits are left to the margin); not yet measured.
DEVICE_TERMS = {
    "cpu": DeviceTerms(runtime=0.95 * GB, activation_factor=1.5, logit_copies=11.0,
                       step_mask_bytes=2.5, kernel_mask_bytes=3.4, recompute_frees=False),
    "ascend": DeviceTerms(runtime=0.0, activation_factor=1.0, logit_copies=0.0, step_mask_bytes=0.0,
                          kernel_mask_bytes=0.0, recompute_frees=True),
    "gpu": DeviceTerms(runtime=0.0, activation_factor=1.0, logit_copies=0.0, step_mask_bytes=0.0,
                       kernel_mask_bytes=0.0, recompute_frees=True),
}


def dropout_elements(stacks, batch, mp, hidden=True, attention=True):
    """Elements the dropout layers of `stacks`' blocks mask in one step at `batch` samples per replica: with
    `attention`, the attention probabilities (heads x queries x keys, and x memory keys in a decoder's
    cross-attention; split by mp); with `hidden`, the feed-forward's inner activation (split by mp) and each residual
    branch (two per encoder block, three per decoder block)."""
    total = 0
    for s in stacks:
        probs = s.heads * s.seq * (s.seq + s.memory) / mp
        residual = (3 if s.memory else 2) * s.seq * s.width + s.seq * s.ffn / mp
        total += s.layers * batch * ((probs if attention else 0) + (residual if hidden else 0))
    return total


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one dp x mp split. `activations` are what the device keeps (the Korthikanti count times
    the device's activation factor, plus its dropout-mask and logit terms); `runtime` is the device's (DeviceTerms).
    """

    dp: int
    mp: int
    params: float
    weights: float
    grads: float
    optimizer: float
    activations: float
    activations_recompute: float
    runtime: float = 0.0

    def total(self, recompute):
        return (self.runtime + self.weights + self.grads + self.optimizer
                + (self.activations_recompute if recompute else self.activations))


def estimate_memory(sharded, replicated, stacks, dp, mp, batch_size, grad_accumulation=1, dtype="fp16",
                    optimizer="adamw", optimizer_shard=False, device="ascend", dropout=None):
    """Per-device bytes: weights (fp32 master + a compute-dtype copy when it is not fp32), fp32 gradients (twice with
    accumulation: the running sum and the current micro-batch), optimizer state and activations of one micro-batch
    (`batch_size / grad_accumulation` per device, times mp per replica), plus the terms of `device` (DEVICE_TERMS:
    runtime, activation factor, logits, dropout masks; on a device where recompute frees nothing, the recompute
    figures equal the others).

    `dropout` is None (no dropout) or (masks, hidden, attention) from `dropout_setting`. Optimizer state is divided by
    dp only in semi-auto mode (mp > 1): in MindSpore's DATA_PARALLEL mode `enable_parallel_optimizer` splits the
    update work, but every rank still holds the full AdamW moments."""
    if device not in DEVICE_TERMS:
        raise ValueError(f"device must be one of {', '.join(DEVICE_TERMS)}, got {device!r}")
    terms = DEVICE_TERMS[device]
    e = ELEMENT_BYTES[dtype]
    params = sharded / mp + replicated
    micro_batch = batch_size // grad_accumulation * mp
    # the larger decoder's logits (a step trains at most one decoder), fp32 in the loss
    extra = terms.logit_copies * 4 * micro_batch * max((s.seq * s.vocab for s in stacks if s.vocab), default=0)
    if dropout is not None:
        masks, hidden, attention = dropout
        extra += terms.mask_bytes(masks) * dropout_elements(stacks, micro_batch, mp, hidden, attention)
    activations = terms.activation_factor * activation_bytes(stacks, micro_batch, mp, e, recompute=False) + extra
    recomputed = (terms.activation_factor * activation_bytes(stacks, micro_batch, mp, e, recompute=True) + extra
                  if terms.recompute_frees else activations)
    return MemoryEstimate(
        dp=dp, mp=mp, params=params,
        weights=params * (4 + (e if e < 4 else 0)),
        grads=params * 4 * (2 if grad_accumulation > 1 else 1),
        optimizer=params * OPTIMIZER_STATE_BYTES[optimizer] / (dp if optimizer_shard and mp > 1 else 1),
        activations=activations, activations_recompute=recomputed, runtime=terms.runtime)


def dropout_setting(cfg):
    """What `estimate_memory` needs to know of a run config's dropout: None without any, else (train.dropout_masks,
    hidden dropout on, attention dropout on)."""
    hidden, attention = cfg.model.dropout > 0, cfg.model.attention_dropout > 0
    return (cfg.train.dropout_masks, hidden, attention) if hidden or attention else None


@dataclass(frozen=True)
class Candidate:
    dp: int
    mp: int
    problems: tuple
    memory: MemoryEstimate


def plan_candidates(model, model_cfg, devices, batch_size, grad_accumulation=1, seq=None, dtype="fp16",
                    optimizer="adamw", optimizer_shard=False, vocab_dp=True, device="ascend", dropout=None,
                    vocab_size=None):
    """One Candidate per dp x mp = devices (mp ascending), with its problems and memory estimate."""
    stacks = transformer_stacks(model_cfg, *(seq or token_counts(model_cfg)), vocab_size=vocab_size)
    candidates = []
    for mp in (m for m in range(1, devices + 1) if devices % m == 0):
        dp = devices // mp
        strategies = model_strategies(model, dp, mp, vocab_dp)
        problems = shape_problems(model_cfg, dp, mp, vocab_dp, batch_size, grad_accumulation)
        problems += strategy_problems(strategies)
        sharded, replicated = split_parameter_counts(model, strategies)
        memory = estimate_memory(sharded, replicated, stacks, dp, mp, batch_size, grad_accumulation, dtype,
                                 optimizer, optimizer_shard, device, dropout)
        candidates.append(Candidate(dp, mp, tuple(problems), memory))
    return candidates


def recommend(candidates, device_bytes, margin=0.1):
    """(candidate, recompute) of the fastest split that fits in `device_bytes` less `margin`, or None.

    Faster = less tensor parallelism (fewer all-reduces per block), then no recompute (recompute re-runs the
    forward pass of every block).
    """
    limit = device_bytes * (1.0 - margin)
    for candidate in sorted((c for c in candidates if not c.problems), key=lambda c: c.mp):
        for recompute in (False, True):
            if candidate.memory.total(recompute) <= limit:
                return candidate, recompute
    return None
