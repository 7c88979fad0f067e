"""src/engine/parallel.py: strategy maps, their validation, presets, and the parallel set-up (CPU-checkable parts)."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.config import load_config
from src.engine import parallel
from src.engine.parallel import (CPU_MESSAGE, ParallelLayout, apply_recompute, apply_strategies, configure_parallel,
                                 model_strategies, plan_strategies, resolve_layout, shape_problems,
                                 strategy_problems, validate_strategies)
from src.errors import UserError
from src.models.layers import Attention, EncoderStack
from src.models.summary import build_unallocated
from tests.helpers import ROOT

PARALLEL_DEFAULTS = """
parallel:
  mode: data
  dp: 0
  mp: 1
  optimizer_shard: false
  recompute: false
  vocab_dp: true
"""


@pytest.fixture(scope="module")
def defaults_path(tmp_path_factory):
    """The repo's defaults, with the parallel section appended until the lead adds it."""
    text = open(os.path.join(ROOT, "config", "defaults.yaml"), encoding="utf-8").read()
    if "\nparallel:" not in text:
        text += PARALLEL_DEFAULTS
    path = tmp_path_factory.mktemp("defaults") / "defaults.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_config(tmp_path, defaults_path, parallel_values, extra=""):
    """A run config on the tiny model with the given `parallel:` values."""
    lines = "\n".join(f"  {key}: {str(value).lower() if isinstance(value, bool) else value}"
                      for key, value in parallel_values.items())
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {ROOT}/config/model/tiny.yaml\nrun:\n  output_dir: {tmp_path}/out\n"
                    f"train:\n  batch_size: 4\n{extra}parallel:\n{lines}\n", encoding="utf-8")
    return load_config(str(path), defaults_path=defaults_path)


@pytest.fixture(scope="module")
def tiny_model():
    return build_unallocated(load_config(os.path.join(ROOT, "config", "model", "tiny.yaml")).model)


# ----- strategy maps --------------------------------------------------------------------------------------------

def test_megatron_splits_on_tiny(tiny_cfg):
    dp, mp = 3, 2  # different numbers, so a dp/mp mix-up shows
    s = plan_strategies(tiny_cfg.model, dp, mp, vocab_dp=False)
    attn = "cross_encoder.blocks.1.attn"
    for name in ("query", "key", "value"):
        assert s[f"{attn}.{name}.matmul"] == ((3, 1), (2, 1))          # column parallel: weight [out, in] split on out
        assert s[f"{attn}.{name}.bias_add"] == ((3, 2), (2,))
    assert s[f"{attn}.out.matmul"] == ((3, 2), (1, 2))                 # row parallel: split on in
    assert s[f"{attn}.out.bias_add"] == ((3, 1), (1,))
    assert s["text_decoder.blocks.0.cross_attn.key.matmul"] == ((3, 1), (2, 1))
    assert s["image_encoder.encoder.blocks.0.ffn.fc1.matmul"] == ((3, 1), (2, 1))
    assert s["image_encoder.encoder.blocks.0.ffn.fc2.matmul"] == ((3, 2), (1, 2))
    assert s["pooler.matmul"] == ((3, 1), (1, 1))                      # everything else: batch only
    assert s["text_decoder.memory_proj.bias_add"] == ((3, 1), (1,))
    assert s["contrastive.text_proj.matmul"] == ((3, 1), (1, 1))
    assert "contrastive.text_proj.bias_add" not in s                   # no bias, no primitive
    assert s["text_encoder.word_embeddings.gather"] == ((2, 1), (3,))  # vocabulary split by mp
    assert s["image_decoder.token_embeddings.gather"] == ((2, 1), (3,))
    assert s["image_encoder.position_embeddings.gather"] == ((1, 1), (1,))
    assert s["cross_encoder.blocks.0.ln2.layer_norm"] == ((3, 1, 1), (1,), (1,))
    # tiny has 12 attentions (text, image, audio, 2 cross, text-decoder memory, 2 x 2 + 1 x 2 in decoder blocks)
    # and 9 FFNs (the same blocks): q, k, v and fc1 are column parallel
    columns = [k for k, v in s.items() if k.endswith(".matmul") and v == ((3, 1), (2, 1))]
    assert len(columns) == 12 * 3 + 9


def test_vocab_dp_replicates_tables(tiny_cfg):
    s = plan_strategies(tiny_cfg.model, 2, 2, vocab_dp=True)
    assert s["text_encoder.word_embeddings.gather"] == ((1, 1), (2,))
    assert s["text_decoder.token_embeddings.gather"] == ((1, 1), (2,))


def test_attention_and_logits_primitives_are_sharded_when_present():
    """src/models may expose the attention and tied-logits matmuls as primitives (docs/parallel.md); they then get
    the head split and the vocabulary split."""
    attn = Attention(8, 2)
    attn.score_matmul = ops.BatchMatMul(transpose_b=True)
    attn.context_matmul = ops.BatchMatMul()
    s = model_strategies(attn, 3, 2)
    assert s["score_matmul"] == s["context_matmul"] == ((3, 2, 1, 1), (3, 2, 1, 1))
    assert strategy_problems(s) == []
    # sharded attention runs through those primitives, not the memory-lean RecomputedAttention, and its sharded
    # Dense layers through nn.Dense's bias_add primitive, not BiasAdd
    dense_layers = (attn.query, attn.key, attn.value, attn.out)
    assert attn.lean_backward and all(d.lean_backward for d in dense_layers)
    apply_strategies(attn, s)
    assert not attn.lean_backward and not any(d.lean_backward for d in dense_layers)

    class Tied(nn.Cell):
        def __init__(self):
            super().__init__()
            self.token_embeddings = nn.Embedding(10, 4)
            self.logits_matmul = ops.MatMul(transpose_b=True)

    tied = model_strategies(Tied(), 3, 2, vocab_dp=False)
    assert tied["logits_matmul"] == ((3, 1), (2, 1))
    assert tied["token_embeddings.gather"] == ((2, 1), (3,))
    assert strategy_problems(tied) == []


def test_apply_strategies_shards_the_primitives(tiny_model):
    s = model_strategies(tiny_model, 2, 2)
    assert apply_strategies(tiny_model, s) == len(s)
    block = tiny_model.cross_encoder.blocks[0]
    assert block.attn.query.matmul.in_strategy == ((2, 1), (2, 1))
    assert block.ffn.fc2.matmul.in_strategy == ((2, 2), (1, 2))
    assert block.ln1.layer_norm.in_strategy == ((2, 1, 1), (1,), (1,))
    assert tiny_model.text_encoder.word_embeddings.gather.in_strategy == ((1, 1), (2,))
    with pytest.raises(ValueError, match="cross_encoder.blocks.0.attn.nope"):
        apply_strategies(tiny_model, {"cross_encoder.blocks.0.attn.nope": ((1,),)})


# ----- validation -----------------------------------------------------------------------------------------------

def test_bad_split_names_every_failing_dimension(tiny_cfg):
    problems = shape_problems(tiny_cfg.model, 1, 3, vocab_dp=False, batch_size=6, grad_accumulation=4)
    for section in ("text", "image", "audio", "text_decoder", "image_decoder"):   # 32 wide, 2 heads, ffn 64
        for key, value in (("hidden", 32), ("heads", 2), ("ffn", 64)):
            assert f"model.{section}.{key}={value} is not divisible by parallel.mp=3" in problems
    assert [p for p in problems if p.startswith("model.cross.")] == [
        "model.cross.heads=4 is not divisible by parallel.mp=3"]                  # 48 and 96 divide by 3
    assert any(p.startswith("model.text.vocab_size=64 ") for p in problems)
    assert any(p.startswith("model.image_decoder.codebook_size + 3 specials=19 ") for p in problems)
    assert "train.batch_size=6 is not divisible by train.grad_accumulation=4" in problems
    assert len(problems) == 5 * 3 + 1 + 2 + 1


def test_unused_sections_and_replicated_vocab_are_not_checked(tiny_cfg):
    cfg = tiny_cfg.model.with_updates({"text.layers": 0, "text.heads": 3})   # embeddings only: heads unused
    assert [p for p in shape_problems(cfg, 2, 2, vocab_dp=True) if "model.text." in p] == []
    assert shape_problems(tiny_cfg.model, 2, 2, vocab_dp=True, batch_size=4, grad_accumulation=2) == []


def test_strategy_problems_catch_inconsistent_splits(tiny_model):
    good = model_strategies(tiny_model, 2, 2)
    assert strategy_problems(good) == []
    bad = dict(good)
    bad["cross_encoder.blocks.0.attn.value.matmul"] = ((2, 1), (1, 1))
    bad["audio_encoder.encoder.blocks.0.ffn.fc2.matmul"] = ((2, 1), (1, 1))
    attention, ffn = sorted(strategy_problems(bad), key=lambda p: not p.startswith("cross"))
    assert attention.startswith("cross_encoder.blocks.0.attn: head splits differ")
    assert "cross_encoder.blocks.0.attn.value=1" in attention and "cross_encoder.blocks.0.attn.key=2" in attention
    assert ffn == "audio_encoder.encoder.blocks.0.ffn: fc1 output split 2 differs from fc2 input split 1"


def test_tied_tables_need_a_matching_projection():
    table = {"text_decoder.token_embeddings.gather": ((2, 1), (1,))}
    assert "not a shardable primitive" in strategy_problems(table)[0]
    assert strategy_problems({**table, "text_decoder.logits_matmul": ((1, 1), (2, 1))}) == []
    assert "splits the vocabulary 1 ways, its table 2 ways" in strategy_problems(
        {**table, "text_decoder.logits_matmul": ((1, 1), (1, 1))})[0]
    words = {"text_encoder.word_embeddings.gather": ((4, 1), (1,)), "mlm_head.logits_matmul": ((1, 1), (4, 1))}
    assert strategy_problems(words) == []


@pytest.mark.parametrize("preset, devices", [("dp", 2), ("opt_1b_8x910", 8), ("opt_10b_32x910", 32)])
def test_presets_validate_for_their_cluster(defaults_path, preset, devices):
    cfg = load_config(os.path.join(ROOT, "config", "parallel", f"{preset}.yaml"), defaults_path=defaults_path)
    layout = resolve_layout(cfg.parallel, devices)
    assert layout.devices == devices
    p = cfg.parallel
    assert validate_strategies(cfg.model, layout.dp, layout.mp, p.vocab_dp, cfg.train.batch_size,
                               cfg.train.grad_accumulation) == []


def test_opt_10b_three_way_split_reports_its_dims(defaults_path):
    cfg = load_config(os.path.join(ROOT, "config", "parallel", "opt_10b_32x910.yaml"), defaults_path=defaults_path)
    problems = validate_strategies(cfg.model, 4, 3, vocab_dp=True)
    for expected in ("model.cross.hidden=4096", "model.cross.heads=32", "model.cross.ffn=16384",
                     "model.image.heads=16", "model.text_decoder.hidden=1024", "model.image_decoder.ffn=4096"):
        assert f"{expected} is not divisible by parallel.mp=3" in problems
    assert not [p for p in problems if p.startswith(("model.image.hidden", "model.image.ffn"))]  # 768, 3072 = 3k


# ----- run-time set-up ------------------------------------------------------------------------------------------

def test_resolve_layout(defaults_path, tmp_path):
    cfg = run_config(tmp_path, defaults_path, {"mode": "semi_auto", "dp": 0, "mp": 4})
    assert resolve_layout(cfg.parallel, 32) == ParallelLayout("semi_auto", 8, 4)
    with pytest.raises(UserError, match=r"parallel.dp=2 x parallel.mp=4 = 8 devices, but the job has 32"):
        resolve_layout(cfg.with_updates({"parallel.dp": 2}).parallel, 32)
    with pytest.raises(UserError, match="needs parallel.mode=semi_auto"):
        resolve_layout(cfg.with_updates({"parallel.mode": "data"}).parallel, 32)
    with pytest.raises(UserError, match="parallel.mode must be one of data, semi_auto"):
        resolve_layout(cfg.with_updates({"parallel.mode": "auto"}).parallel, 32)


@pytest.mark.parametrize("values", [{"mode": "semi_auto"}, {"mode": "data", "mp": 2}])
def test_cpu_refuses_tensor_parallel(defaults_path, tmp_path, tiny_model, values):
    cfg = run_config(tmp_path, defaults_path, values)
    with pytest.raises(UserError) as err:
        configure_parallel(cfg, "CPU", tiny_model)
    assert str(err.value) == CPU_MESSAGE


def test_cpu_refuses_optimizer_shard(defaults_path, tmp_path, tiny_model):
    cfg = run_config(tmp_path, defaults_path, {"optimizer_shard": True})
    with pytest.raises(UserError, match="optimizer_shard needs Ascend or GPU"):
        configure_parallel(cfg, "CPU", tiny_model)


def test_data_mode_on_one_cpu_only_recomputes(defaults_path, tmp_path):
    model = build_unallocated(load_config(os.path.join(ROOT, "config", "model", "tiny.yaml")).model)
    cfg = run_config(tmp_path, defaults_path, {"recompute": True})
    assert configure_parallel(cfg, "CPU", model) == ParallelLayout("data", 1, 1)
    assert ms.get_auto_parallel_context("parallel_mode") == "stand_alone"
    assert "output_recompute" in model.cross_encoder.blocks[1].get_flags()
    assert "output_recompute" in model.text_decoder.blocks[0].get_flags()
    assert "in_strategy" not in model.cross_encoder.blocks[0].attn.query.matmul.attrs


def test_semi_auto_sets_context_and_shards(defaults_path, tmp_path, monkeypatch):
    """The Ascend path up to compilation: context, strategies, recompute (compiling needs Ascend or GPU)."""
    model = build_unallocated(load_config(os.path.join(ROOT, "config", "model", "tiny.yaml")).model)
    cfg = run_config(tmp_path, defaults_path, {"mode": "semi_auto", "dp": 2, "mp": 2, "optimizer_shard": True,
                                               "recompute": True})
    monkeypatch.setattr(parallel, "_world_size", lambda: 4)
    try:
        assert configure_parallel(cfg, "Ascend", model) == ParallelLayout("semi_auto", 2, 2)
        assert ms.get_auto_parallel_context("parallel_mode") == "semi_auto_parallel"
        assert ms.get_auto_parallel_context("enable_parallel_optimizer") is True
        assert ms.get_auto_parallel_context("gradients_mean") is False
        assert ms.get_auto_parallel_context("strategy_ckpt_config")["save_file"] == f"{tmp_path}/out/strategy.ckpt"
    finally:
        ms.reset_auto_parallel_context()
    assert model.cross_encoder.blocks[0].attn.query.matmul.in_strategy == ((2, 1), (2, 1))
    assert "output_recompute" in model.image_encoder.encoder.blocks[0].get_flags()
    bad = cfg.with_updates({"parallel.mp": 4, "parallel.dp": 1})
    with pytest.raises(UserError, match="parallel.dp=1 parallel.mp=4 does not fit the model: model.text.heads=2"):
        configure_parallel(bad, "Ascend", model)
    assert ms.get_auto_parallel_context("parallel_mode") == "stand_alone"


class _SquaredLoss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, mask):
        return (self.net(x, mask) ** 2).sum()


def test_recompute_keeps_gradients_on_cpu():
    """Recomputed blocks give the same gradients as stored activations (GRAPH_MODE, CPU)."""
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 5, 16)).astype(np.float32))
    mask = ms.Tensor(np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.float32))
    grads = []
    for recompute in (False, True):
        ms.set_seed(1)
        stack = EncoderStack(16, 2, 2, 32)
        if recompute:
            assert apply_recompute(stack) == 2
        loss = _SquaredLoss(stack)
        grad_fn = ms.value_and_grad(loss, None, loss.trainable_params())
        grads.append([g.asnumpy() for g in grad_fn(x, mask)[1]])
    for plain, recomputed in zip(*grads):
        np.testing.assert_allclose(recomputed, plain, rtol=1e-5, atol=1e-6)


def _documented_presets():
    """{preset file: (ranks, set_auto_parallel_context kwargs, recompute, sharded)} from docs/parallel.md's table."""
    import ast
    import re
    text = open(os.path.join(ROOT, "docs", "parallel.md"), encoding="utf-8").read()
    section = text[text.index("**What each preset sets.**"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(\w+\.yaml)`", cells[0]) if len(cells) == 5 else None
        if match:
            call = ast.parse(f"f({cells[2].strip('`')})", mode="eval").body
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            rows[match.group(1)] = (int(cells[1]), kwargs, cells[3] != "no", cells[4] != "no")
    return rows


def test_presets_set_what_the_docs_say(tmp_path, monkeypatch):
    """Each preset of config/parallel/ on its cluster: the spies on MindSpore's context setters see exactly the
    documented calls; recompute and sharding happen exactly when documented."""
    documented = _documented_presets()
    presets = sorted(f for f in os.listdir(os.path.join(ROOT, "config", "parallel")) if f.endswith(".yaml"))
    assert sorted(documented) == presets
    for preset, (ranks, expected, recompute, sharded) in documented.items():
        calls, flags = [], {"recompute": 0, "sharded": 0}
        monkeypatch.setattr(ms, "set_auto_parallel_context", lambda **kw: calls.append(("auto_parallel", kw)))  # noqa: B023
        monkeypatch.setattr(ms, "set_context", lambda **kw: calls.append(("context", kw)))  # noqa: B023
        monkeypatch.setattr(parallel, "_world_size", lambda: ranks)  # noqa: B023
        monkeypatch.setattr(parallel, "_is_rank0", lambda: True)
        monkeypatch.setattr(parallel, "model_strategies", lambda model, dp, mp, vocab_dp: {"dp_mp": (dp, mp)})
        monkeypatch.setattr(parallel, "apply_strategies", lambda model, s: flags.update(sharded=s["dp_mp"]))  # noqa: B023
        monkeypatch.setattr(parallel, "apply_recompute", lambda model: flags.update(recompute=1))  # noqa: B023
        cfg = load_config(os.path.join(ROOT, "config", "parallel", preset), [f"run.output_dir={tmp_path}"])
        layout = parallel.set_parallel_context(cfg, "Ascend")
        parallel.prepare_model(cfg, object())
        expected = {k: (v.replace("<run.output_dir>", str(tmp_path)) if isinstance(v, str) else v)
                    for k, v in expected.items()}
        if "strategy_ckpt_config" in expected:
            expected["strategy_ckpt_config"]["save_file"] = expected["strategy_ckpt_config"]["save_file"].replace(
                "<run.output_dir>", str(tmp_path))
        assert calls == [("auto_parallel", expected)], preset
        assert bool(flags["recompute"]) == recompute, preset
        assert (flags["sharded"] == (layout.dp, layout.mp)) == sharded and layout.devices == ranks, preset


def test_cpu_refusal_happens_before_any_context(defaults_path, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ms, "set_auto_parallel_context", lambda **kw: calls.append(kw))
    cfg = run_config(tmp_path, defaults_path, {"mode": "semi_auto", "mp": 2})
    with pytest.raises(UserError) as err:
        parallel.set_parallel_context(cfg, "CPU")
    assert str(err.value) == CPU_MESSAGE and calls == []
