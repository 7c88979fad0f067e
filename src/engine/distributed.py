"""Rank and world size from whichever launcher started the process, plus the few collectives the repo needs.

Launchers recognised by `init_distributed`:

* msrun (or hand-set dynamic-cluster variables): `MS_WORKER_NUM` or `MS_ROLE` is set. Any device; on CPU the
  collective backend is MindSpore's `mccl`. msrun picks device ids itself, so `DEVICE_ID` is not applied.
* Ascend rank table: `RANK_TABLE_FILE` is set and `RANK_SIZE` > 1 (`scripts/run_distribute_train.sh`). The card
  comes from `DEVICE_ID`, which must be applied before `init()`.
* Anything else is a single process: rank 0 of 1, nothing initialised.

Distributed runs use data parallelism with averaged gradients. `all_gather_numpy` goes through an `ops.AllGather`
Cell because `mindspore.ops.communication.all_gather` and `barrier` do not work with `mccl` in MindSpore 2.10.
"""
import functools
import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.communication import GlobalComm, get_group_size, get_local_rank, get_rank, init

from src.errors import UserError

# Element types the AllGather kernels take (checked on CPU/mccl); others travel as a wider type and are cast back.
_GATHERABLE = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)}
_WIRE_TYPE = {np.dtype(t): np.dtype(np.int32) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16)}
_WIRE_TYPE[np.dtype(np.uint32)] = np.dtype(np.int64)
_MAX_DIMS = 8


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global rank, rank count, rank on this host, device id, rank == 0."""

    rank: int
    world_size: int
    local_rank: int
    device_id: int
    is_main: bool


def launcher_from_env(environ=None):
    """Which launcher started this process: "msrun", "rank_table" or None (a single process)."""
    env = os.environ if environ is None else environ
    if env.get("MS_WORKER_NUM") or env.get("MS_ROLE"):
        return "msrun"
    if env.get("RANK_TABLE_FILE") and _env_int(env, "RANK_SIZE", 1) > 1:
        return "rank_table"
    return None


def init_distributed(cfg_device=None):
    """Set the device, initialise communication when a launcher asks for it, and return this process's DistInfo.

    `cfg_device` ("CPU", "GPU", "Ascend") is applied with `mindspore.set_device`; None keeps the current target.
    Calling it again in the same process does not initialise twice.
    """
    launcher = launcher_from_env()
    target = cfg_device or ms.get_context("device_target")
    device_id = _env_int(os.environ, "DEVICE_ID", None)
    if launcher == "rank_table":
        _check_rank_table_launch(target, device_id)
    if target != "CPU" and device_id is not None and launcher != "msrun":
        ms.set_device(target, device_id)
    elif cfg_device:
        ms.set_device(target)
    if launcher is None:
        return DistInfo(rank=0, world_size=1, local_rank=0, device_id=device_id or 0, is_main=True)
    if not GlobalComm.INITED:
        init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, local_rank = get_rank(), get_local_rank()
    return DistInfo(
        rank=rank,
        world_size=get_group_size(),
        local_rank=local_rank,
        device_id=local_rank if device_id is None else device_id,
        is_main=rank == 0,
    )


def _check_rank_table_launch(target, device_id):
    """A rank-table job needs Ascend and a DEVICE_ID per rank (else every rank would take card 0)."""
    table = os.environ["RANK_TABLE_FILE"]
    if target != "Ascend":
        raise UserError(
            f"RANK_TABLE_FILE={table} starts an Ascend (HCCL) job, but the device is {target}; "
            "use scripts/run_msrun.sh on CPU or GPU, or unset RANK_TABLE_FILE for a single process"
        )
    if device_id is None:
        raise UserError(
            f"RANK_TABLE_FILE={table} is set but DEVICE_ID is not; start rank-table jobs with "
            "scripts/run_distribute_train.sh, which sets DEVICE_ID for each rank"
        )


def is_distributed():
    """True when communication is initialised and the job has more than one rank."""
    return bool(GlobalComm.INITED) and get_group_size() > 1


def all_gather_numpy(array):
    """Every rank's `array` (same shape and dtype on all ranks), in rank order, on every rank; [array] on one rank.

    A shape that differs between ranks raises ValueError on every rank (the shapes are gathered first).
    """
    array = np.asarray(array)
    if not is_distributed():
        return [array]
    _wire_dtype(array.dtype)
    if array.ndim > _MAX_DIMS:
        raise ValueError(f"all_gather_numpy takes at most {_MAX_DIMS} dimensions, got shape {array.shape}")
    shape_row = np.full(_MAX_DIMS + 1, -1, np.int64)
    shape_row[0] = array.ndim
    shape_row[1:array.ndim + 1] = array.shape
    shapes = _all_gather(shape_row)
    if not (shapes == shape_row).all():
        listed = ", ".join(f"rank {r}: {tuple(int(d) for d in row[1:row[0] + 1])}" for r, row in enumerate(shapes))
        raise ValueError(f"all_gather_numpy needs the same shape on every rank, got {listed}")
    return list(_all_gather(array))


def barrier():
    """Block until every rank has reached this call (no-op on one rank)."""
    if is_distributed():
        _all_gather(np.zeros(1, np.float32))


def _all_gather(array):
    """Stack of every rank's `array` along a new first axis (world_size, *array.shape)."""
    wire = array.astype(_wire_dtype(array.dtype), copy=False)
    gathered = _gather_cell()(ms.Tensor(np.ascontiguousarray(wire[None])))
    return gathered.asnumpy().astype(array.dtype, copy=False)


def _wire_dtype(dtype):
    """The dtype `dtype` is gathered as (itself, or a wider integer type); TypeError when there is none."""
    if dtype in _GATHERABLE:
        return dtype
    if dtype in _WIRE_TYPE:
        return _WIRE_TYPE[dtype]
    raise TypeError(f"all_gather_numpy cannot gather dtype {dtype}")


class _AllGather(nn.Cell):
    """Concatenates every rank's input along axis 0."""

    def __init__(self):
        super().__init__()
        self.gather = ops.AllGather()

    def construct(self, x):
        return self.gather(x)


@functools.cache
def _gather_cell():
    """The process's AllGather Cell, built on first use (after communication is initialised)."""
    return _AllGather()


def _env_int(env, name, default):
    """Integer environment variable `name`, or `default` when unset; a non-integer value is a UserError."""
    value = env.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None
