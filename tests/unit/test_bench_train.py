"""The train benchmark's analytic need: the planner's formula over the stacks the task's step runs."""
import argparse

import pytest

from bench import train as bench
from src.engine.parallel import DEVICE_TERMS, layer_activation_bytes, token_counts, transformer_stacks
from src.models.opt import build_model


@pytest.fixture(scope="module")
def tiny():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--config", "config/model/tiny.yaml", "--vocab_size", "100"])
    cfg = bench.model_config(args)
    return cfg, build_model(cfg.model)


def test_the_need_is_4_4_and_8_bytes_per_parameter_plus_activations_and_the_cpu_estimate_adds_its_terms(tiny):
    cfg, model = tiny
    n = sum(p.size for p in model.get_parameters())
    need = bench.analytic_need_gb(model, cfg, "mlm", 4, 1)
    assert need["weights"] == pytest.approx(4 * n / 1e9) and need["gradients"] == pytest.approx(4 * n / 1e9)
    assert need["optimizer"] == pytest.approx(8 * n / 1e9)
    assert need["total"] == pytest.approx(sum(need[k] for k in ("weights", "gradients", "optimizer", "activations")))
    # the planner's CPU estimate: its runtime, the activation factor and (train.clip_norm 1.0) the clipping copy,
    # which lives after backward has freed the activations: the peak holds the larger of the two
    cpu = DEVICE_TERMS["cpu"]
    states = need["weights"] + need["gradients"] + need["optimizer"]
    assert need["cpu_estimate"] == pytest.approx(states + cpu.runtime / 1e9
                                                 + max(cpu.activation_factor * need["activations"], 4 * n / 1e9))


def test_activations_count_the_decoder_only_for_the_task_that_trains_it(tiny):
    cfg, model = tiny
    stacks = {s.name: s for s in transformer_stacks(cfg.model, *token_counts(cfg.model))}
    decoder = stacks["text decoder"]
    mlm = bench.analytic_need_gb(model, cfg, "mlm", 4, 1)["activations"]
    td = bench.analytic_need_gb(model, cfg, "td", 4, 1)["activations"]
    # the text decoder's own blocks (the memory it attends to is kept once) plus its memory stack, if any
    extra = decoder.layers * layer_activation_bytes(decoder, 4, 1, 4) + 4 * decoder.memory * 4 * decoder.width
    memory = stacks.get("text decoder memory")
    if memory is not None:
        extra += memory.layers * layer_activation_bytes(memory, 4, 1, 4)
    assert decoder.vocab == cfg.model.text.vocab_size
    assert td - mlm == pytest.approx(extra / 1e9)
    # accumulation 2 halves the micro-batch: activations shrink, gradients double (running sum + current)
    halved = bench.analytic_need_gb(model, cfg, "mlm", 4, 2)
    assert halved["activations"] < mlm and halved["gradients"] == pytest.approx(
        2 * bench.analytic_need_gb(model, cfg, "mlm", 4, 1)["gradients"])


def test_peak_memory_is_the_phase_process_own_not_its_parents():
    """Linux carries ru_maxrss across exec, so a phase process started by a large parent (the test suite holds GBs)
    reported the parent's peak; the benchmark reads VmHWM, this program's own high-water mark."""
    import subprocess
    import sys

    import numpy as np
    from tests.helpers import ROOT
    parent = np.ones(int(2e9) // 8)   # 2 GB touched in this (parent) process
    code = "from bench.train import peak_rss_gb; print(peak_rss_gb())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert parent.sum() > 0 and float(out) < 1.5   # importing MindSpore is about 0.4 GB
