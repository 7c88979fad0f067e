"""eval.py --metrics_hook, in process through eval.py's main(argv): hooks are imported before any work (errors name
the hook), called once with the evaluator's results, and their metrics are written with the evaluator's own.
The models are untrained tiny ones (checkpoints written directly, in the trainers' run-folder layout) on the
session's tiny demo data; the t2i hook of the demo is tested in test_t2i_cli.py."""
import importlib
import json
import os
import re

import pytest

import eval as eval_cli
from src.utils.cli import run_main
from src.errors import UserError
from tests.helpers import ROOT

CALLS = []   # the Evaluation objects the hooks below were called with, in order
HOOK = "tests.integration.test_metrics_hooks"


def hook_calls():
    """CALLS of this module as eval.py imports it by HOOK (pytest may hold it under another module name)."""
    return importlib.import_module(HOOK).CALLS


def top1_share(evaluation):
    """A retrieval hook: the share of captions whose best image is their own, computed from the hook's records."""
    CALLS.append(evaluation)
    hits = [record["top"][0] == record["target"] for record in evaluation.records]
    return {"hook_top1": 100.0 * sum(hits) / len(hits), "hook_records": len(evaluation.records)}


def caption_lengths(evaluation):
    """A caption hook: the mean length of the generated captions in characters."""
    CALLS.append(evaluation)
    return {"hook_mean_length": sum(len(r["caption"]) for r in evaluation.records) / len(evaluation.records)}


def clashing(evaluation):
    return {"split": "mine"}


def not_a_dict(evaluation):
    return [1.0]


def untrained_checkpoint(run_dir, config, data):
    """An untrained tiny model saved as <run_dir>/checkpoints/step_00000001 with its run config; returns the step
    dir."""
    from src.config import load_config, save_config
    from src.inference.loading import resolve_config
    from src.models.opt import build_model
    from src.weights.checkpoint import save_checkpoint
    cfg = load_config(os.path.join(ROOT, "config", config), [
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
        f"data.vocab={data['vocab']}", f"run.output_dir={run_dir}", "run.mode=pynative"])
    save_config(cfg, str(run_dir))
    cfg = resolve_config(None, os.path.join(run_dir, "config.yaml"), [])
    return save_checkpoint(str(run_dir / "checkpoints" / "step_00000001"), build_model(cfg.model).parameters_dict(),
                           step=1)


@pytest.mark.parametrize("spec, message", [
    ("no_module_here:fn", "--metrics_hook no_module_here:fn: cannot import module 'no_module_here'"),
    ("demo.scene_reader", "--metrics_hook 'demo.scene_reader' is not an import path; write it as "
                          "package.module:function"),
    ("demo.scene_reader:no_such_function", "--metrics_hook demo.scene_reader:no_such_function: module "
                                           "'demo.scene_reader' has no function 'no_such_function'"),
])
def test_a_hook_that_cannot_be_loaded_is_a_user_error_naming_it(spec, message, tmp_path, capsys):
    # the hook is loaded before anything else: the missing checkpoint is never reached
    argv = ["--task", "caption", "--ckpt", str(tmp_path / "none"), "--metrics_hook", spec]
    with pytest.raises(UserError, match="^" + re.escape(message)):
        eval_cli.main(argv)
    assert run_main(eval_cli.main, argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


@pytest.mark.slow
def test_retrieval_hook_sees_every_caption_and_its_metrics_are_written(tiny_data, tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "run", "retrieval/tiny.yaml", tiny_data)
    hook_calls().clear()
    out = tmp_path / "eval"
    assert eval_cli.main(["--task", "retrieval", "--ckpt", ckpt, "--mode", "itc", "--out", str(out),
                          "--metrics_hook", f"{HOOK}:top1_share"]) == 0
    (evaluation,) = hook_calls()
    results = json.loads((out / "retrieval.json").read_text(encoding="utf-8"))
    assert evaluation.task == "retrieval" and evaluation.data == tiny_data["test"] and evaluation.out_dir == str(out)
    assert len(evaluation.records) == results["n_texts"] == results["hook_records"]
    assert all(len(r["top"]) == min(10, results["n_images"]) for r in evaluation.records)
    # the records rank images by the evaluation's own scores: their top-1 share is its IR R@1
    assert results["hook_top1"] == pytest.approx(results["text_image"]["ir_r1"])
    assert "hook" not in evaluation.metrics and evaluation.metrics["n_texts"] == results["n_texts"]
    assert "| hook_top1 | metrics hook |" in (out / "retrieval.md").read_text(encoding="utf-8")
    # the evaluation also keeps example queries with their best images, for reports
    example = results["examples"][0]
    assert len(results["examples"]) == min(8, results["n_images"]) and len(example["top"]) == 5
    assert all(os.path.isfile(image["source"]) for image in example["top"])
    assert sum(image["hit"] for image in example["top"]) <= 1


@pytest.mark.slow
def test_caption_hook_sees_every_caption_and_its_metrics_are_written(tiny_data, tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "run", "caption/tiny.yaml", tiny_data)
    hook_calls().clear()
    out = tmp_path / "eval"
    base = ["--task", "caption", "--ckpt", ckpt, "--out_dir", str(out), "--strategy", "greedy", "--max_len", "4"]
    assert eval_cli.main(base + ["--metrics_hook", f"{HOOK}:caption_lengths"]) == 0
    (evaluation,) = hook_calls()
    results = json.loads((out / "caption_test.json").read_text(encoding="utf-8"))
    predictions = [json.loads(line) for line in (out / "caption_test_predictions.jsonl").read_text().splitlines()]
    assert evaluation.task == "caption" and evaluation.split == "test" and len(evaluation.records) == 8
    assert results["hook_mean_length"] == pytest.approx(sum(len(p["caption"]) for p in predictions) / 8)
    assert "cider_d" in evaluation.metrics and "hook_mean_length" in (out / "caption_test.md").read_text()


def test_hooks_run_in_order_and_a_clash_or_a_non_dict_is_a_user_error_naming_the_hook():
    from src.evaluation.hooks import Evaluation, load_hooks, run_hooks
    evaluation = Evaluation("caption", "test", "x.mindrecord", "out", {"split": "test", "cider_d": 1.0},
                            [{"caption": "ab"}, {"caption": "abcd"}])
    hook_calls().clear()
    extra = run_hooks(load_hooks([f"{HOOK}:caption_lengths"]), evaluation)
    assert extra == {"hook_mean_length": 3.0} and hook_calls() == [evaluation]
    with pytest.raises(UserError, match=f"^--metrics_hook {HOOK}:clashing returned metric 'split', which the "
                                        "caption evaluation already has"):
        run_hooks(load_hooks([f"{HOOK}:clashing"]), evaluation)
    with pytest.raises(UserError, match="returned metric 'hook_mean_length'"):   # two hooks, one name
        run_hooks(load_hooks([f"{HOOK}:caption_lengths"] * 2), evaluation)
    with pytest.raises(UserError, match=f"^--metrics_hook {HOOK}:not_a_dict returned list, not a dict"):
        run_hooks(load_hooks([f"{HOOK}:not_a_dict"]), evaluation)
    assert run_hooks([], evaluation) == {}
