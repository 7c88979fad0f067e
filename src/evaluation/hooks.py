"""Extra metrics from outside `src`: `python eval.py --task TASK ... --metrics_hook package.module:function`.

A metrics hook is a function named by its import path, `package.module:function` (the module must be importable:
from the working directory or PYTHONPATH). `--metrics_hook` may be given several times. Every evaluator (retrieval,
caption, vqa, t2i) calls its hooks once per split evaluation (not for single inputs such as --image, --text or
--query), after computing its own metrics and before writing them, with an `Evaluation`; each hook returns a dict
{name: value} of extra metrics, which join the evaluator's results (its JSON and markdown) under those names. A hook
that cannot be imported, is not callable, returns something other than a dict or reuses a name the evaluator (or an
earlier hook) already wrote is a user error naming the hook.

What `Evaluation.records` holds, one dict per evaluated item, by task:
  retrieval  one per caption (text query): caption, target (id of its record), top (record ids of the best 10
             images for it, best first, by the evaluation's own text->image scores)
  caption    one per image: id, image_id, caption (generated), references
  vqa        one per question: id, image_id, answer (generated), answers (references), rationale (if generated)
  t2i        one per prompt: id, prompt, image (the real image, uint8 (H, W, 3) at the VQ resolution), candidates
             (the generated images, uint8 (C, H, W, 3), best first after re-ranking), first_sample (the index in
             candidates of the one sampled first)
"""
import importlib
from dataclasses import dataclass, field

from src.errors import UserError


@dataclass
class Evaluation:
    """What an evaluator hands its metrics hooks (see the module docstring for `records` per task)."""
    task: str
    split: str          # the evaluated split (retrieval: the data file's name)
    data: str           # path of the evaluated data (MindRecord or manifest)
    out_dir: str        # where the evaluator writes its results
    metrics: dict       # the evaluator's own metrics, computed before the hooks run (do not modify)
    records: list = field(default_factory=list)


def load_hook(spec):
    """`package.module:function` -> the function, or a UserError naming `spec` and what is wrong."""
    module_name, sep, function_name = str(spec).partition(":")
    if not sep or not module_name or not function_name:
        raise UserError(f"--metrics_hook {spec!r} is not an import path; write it as package.module:function, e.g. "
                        "mypackage.metrics:extra_metrics")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--metrics_hook {spec}: cannot import module {module_name!r} ({exc}); run from the folder "
                        "that holds it or add that folder to PYTHONPATH") from None
    hook = getattr(module, function_name, None)
    if not callable(hook):
        raise UserError(f"--metrics_hook {spec}: module {module_name!r} has no function {function_name!r}")
    return hook


def load_hooks(specs):
    """[(spec, function)] for a list of `module:function` specs (empty for none), all imported before any work."""
    return [(spec, load_hook(spec)) for spec in specs or ()]


def run_hooks(hooks, evaluation):
    """Call every (spec, function) of `hooks` on `evaluation`; returns their extra metrics merged into one dict."""
    extra = {}
    for name, hook in hooks:
        added = hook(evaluation)
        if not isinstance(added, dict):
            raise UserError(f"--metrics_hook {name} returned {type(added).__name__}, not a dict of metrics")
        clash = sorted(set(added) & (set(evaluation.metrics) | set(extra)))
        if clash:
            raise UserError(f"--metrics_hook {name} returned metric {clash[0]!r}, which the {evaluation.task} "
                            "evaluation already has; give the hook's metrics names of their own")
        extra.update(added)
    return extra
