"""Process set-up shared by every entry point: device, graph/pynative mode, distributed launch, seeds."""
import hashlib
import json
import os
import random

import mindspore as ms
import mindspore.dataset as ds
import numpy as np

from src.engine.distributed import init_distributed
from src.errors import UserError


def setup_context(run_cfg):
    """Apply `run.device`, `run.mode` and `run.seed`; initialise communication when a launcher started us.

    Every rank uses the same seed, so every rank builds identical initial weights; data and masking randomness is
    keyed by (seed, epoch, sample index) in the pipelines, not by the global generators.
    """
    if run_cfg.mode not in ("graph", "pynative"):
        raise UserError(f"run.mode must be graph or pynative, got {run_cfg.mode!r}")
    dist = init_distributed(run_cfg.device)
    ms.set_context(mode=ms.GRAPH_MODE if run_cfg.mode == "graph" else ms.PYNATIVE_MODE)
    if run_cfg.mode == "pynative":
        ms.runtime.launch_blocking()  # eager mode is 3-10x faster on a small CPU without the async pipeline
    ms.set_seed(run_cfg.seed)
    ds.config.set_seed(run_cfg.seed)
    np.random.seed(run_cfg.seed)
    random.seed(run_cfg.seed)
    return dist


def enable_compile_cache(cfg):
    """Cache compiled graphs under run.compile_cache_dir/<hash of the resolved config>.

    MindSpore's compile cache checks the Python sources but not parameter shapes: a graph compiled for another
    config (another vocabulary size, LR table length, ...) would be reused and crash or compute wrongly. Keying the
    folder by everything in the config except the output folder keeps each config's graphs apart.
    """
    if not cfg.run.compile_cache:
        return None
    # checkpoint, output-folder and logging settings do not shape the graphs, so resumed runs share the cache
    keyed = cfg.to_dict()
    keyed.pop("checkpoint", None)
    keyed["run"] = {k: v for k, v in keyed["run"].items() if k not in ("output_dir", "log_every")}
    keyed = json.dumps(keyed, sort_keys=True)
    path = os.path.join(cfg.run.compile_cache_dir, hashlib.sha256(keyed.encode("utf-8")).hexdigest()[:16])
    ms.set_context(enable_compile_cache=True, compile_cache_path=path)
    return path
