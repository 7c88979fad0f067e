"""Process set-up shared by every entry point: device, graph/pynative mode, distributed launch, seeds."""
import glob
import hashlib
import json
import os
import random

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore.communication import get_group_size, get_rank

from src.engine.distributed import init_distributed, is_distributed
from src.errors import UserError


def setup_context(cfg):
    """Apply `run.device`, `run.mode` and `run.seed`, initialise communication when a launcher started us, and apply
    the `parallel:` section (src.engine.parallel.set_parallel_context); call before building any model.

    `cfg` is a whole run config; a bare `run:` section is accepted too (then nothing parallel is applied: tools that
    never train or shard). Settings the device cannot run (tensor parallelism or optimizer sharding on CPU) are
    refused before anything is initialised. Every rank uses the same seed, so every rank builds identical initial
    weights; data and masking randomness is keyed by (seed, epoch, sample index) in the pipelines, not by the global
    generators.
    """
    from src.engine.parallel import check_device_support, set_parallel_context
    full = "run" in cfg
    run_cfg = cfg.run if full else cfg
    if run_cfg.mode not in ("graph", "pynative"):
        raise UserError(f"run.mode must be graph or pynative, got {run_cfg.mode!r}")
    if full:
        check_device_support(cfg.parallel, run_cfg.device)
    dist = init_distributed(run_cfg.device)
    if full:
        set_parallel_context(cfg, run_cfg.device)
    ms.set_context(mode=ms.GRAPH_MODE if run_cfg.mode == "graph" else ms.PYNATIVE_MODE)
    if run_cfg.mode == "pynative":
        ms.runtime.launch_blocking()  # eager mode is 3-10x faster on a small CPU without the async pipeline
    ms.set_seed(run_cfg.seed)
    ds.config.set_seed(run_cfg.seed)
    np.random.seed(run_cfg.seed)
    random.seed(run_cfg.seed)
    return dist


# Settings that never change a compiled graph, left out of the compile-cache key: where the data lives (what the data
# decides about the graphs enters the key through `graphs`; the vocabulary enters by content), host-side counts and
# outputs, and the learning-rate schedule (data: src.engine.optim.apply_lr). A whole section is named without a dot.
# Everything else, including any key added later, stays in the key.
NOT_IN_GRAPHS = ("data.train", "data.val", "data.test", "data.vocab", "data.workers",
                 "train.steps", "train.eval_every",
                 "optim.lr", "optim.end_lr", "optim.warmup_steps", "optim.schedule", "caption.scst_lr",
                 "run.output_dir", "run.log_every", "run.compile_cache", "run.compile_cache_dir",
                 "checkpoint")


def compile_cache_key(cfg, graphs=None):
    """The JSON text `enable_compile_cache` hashes: the resolved config without NOT_IN_GRAPHS (so the resolved
    model.text.vocab_size stays), the vocabulary file's content hash, `graphs`, the sources hash, world size and
    rank."""
    keyed = cfg.to_dict()
    for dotted in NOT_IN_GRAPHS:
        section, _, name = dotted.partition(".")
        if not name:
            keyed.pop(section, None)
        elif isinstance(keyed.get(section), dict):
            keyed[section].pop(name, None)
    vocab = cfg.data.vocab if "data" in cfg else None
    if vocab and os.path.isfile(vocab):
        from src.data.build_mindrecord import vocab_sha256
        keyed["vocab_sha256"] = vocab_sha256(vocab)   # by content: a copy elsewhere shares the cache
    keyed["graphs"] = graphs
    keyed["sources"] = _sources_sha256()
    keyed["world_size"] = get_group_size() if is_distributed() else 1
    keyed["rank"] = get_rank() if is_distributed() else 0  # graphs that gather across ranks embed the rank
    return json.dumps(keyed, sort_keys=True, default=str)


def enable_compile_cache(cfg, graphs=None):
    """Cache compiled graphs under run.compile_cache_dir/<16 hex digits of sha256(compile_cache_key)>; returns the
    folder (None when run.compile_cache is off).

    MindSpore's compile cache numbers graphs by compile order, does not check parameter shapes, and of the Python
    sources hashes only the entry script and its top-level imports (not the models, tasks or engine, which are
    imported inside functions). So a graph compiled for another model shape or older model code would be reused and
    crash or compute wrongly. The rule: the key holds everything that may change a graph, and leaves out only the
    settings known not to (NOT_IN_GRAPHS: data paths, train.steps, eval_every, the LR schedule, logging, output and
    checkpoint settings), so a new or unknown key conservatively stays in it. Besides the config it holds the
    vocabulary file's content (not its path), `graphs` (what the built cells and the data decide: the trainer passes
    each task's Cell class and input names, the training state's parameter shapes and dtypes and the evaluator's
    graph-shaping facts, Trainer.graph_signature), the repository's
    Python sources, the data-parallel world size (a single-process graph has no gradient all-reduce) and the rank
    (the contrastive task's feature gather slices by it). A rerun with other data paths, another `train.steps` or
    another learning rate therefore loads every graph from the cache.
    """
    if not cfg.run.compile_cache:
        return None
    digest = hashlib.sha256(compile_cache_key(cfg, graphs).encode("utf-8")).hexdigest()[:16]
    path = os.path.join(cfg.run.compile_cache_dir, digest)
    ms.set_context(enable_compile_cache=True, compile_cache_path=path)
    return path


def _sources_sha256():
    """sha256 over the path and content of every .py file of the repository's src/ package and entry scripts, and of
    the native kernels' C++ sources and header (src/native)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = sorted(glob.glob(os.path.join(root, "src", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(root, "src", "**", "*.cc"), recursive=True)
                   + glob.glob(os.path.join(root, "src", "**", "*.h"), recursive=True)
                   + glob.glob(os.path.join(root, "*.py")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, root).encode("utf-8"))
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()
