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


def enable_compile_cache(cfg):
    """Cache compiled graphs under run.compile_cache_dir/<hash of the resolved config, sources and launch>.

    MindSpore's compile cache numbers graphs by compile order, does not check parameter shapes, and of the Python
    sources hashes only the entry script and its top-level imports (not the models, tasks or engine, which are
    imported inside functions). So a graph compiled for another config (vocabulary size, LR table length, ...) or
    older model code would be reused and crash or compute wrongly. The folder is keyed by the config (minus output,
    logging and checkpoint settings), the repository's Python sources, the data-parallel world size (a
    single-process graph has no gradient all-reduce) and the rank (the contrastive task's feature gather slices by
    it).
    """
    if not cfg.run.compile_cache:
        return None
    # checkpoint, output-folder and logging settings do not shape the graphs, so resumed runs share the cache
    keyed = cfg.to_dict()
    keyed.pop("checkpoint", None)
    keyed["run"] = {k: v for k, v in keyed["run"].items() if k not in ("output_dir", "log_every")}
    keyed["sources"] = _sources_sha256()
    keyed["world_size"] = get_group_size() if is_distributed() else 1
    keyed["rank"] = get_rank() if is_distributed() else 0  # graphs that gather across ranks embed the rank
    keyed = json.dumps(keyed, sort_keys=True)
    path = os.path.join(cfg.run.compile_cache_dir, hashlib.sha256(keyed.encode("utf-8")).hexdigest()[:16])
    ms.set_context(enable_compile_cache=True, compile_cache_path=path)
    return path


def _sources_sha256():
    """sha256 over the path and content of every .py file of the repository's src/ package and entry scripts."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = sorted(glob.glob(os.path.join(root, "src", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(root, "*.py")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, root).encode("utf-8"))
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()
