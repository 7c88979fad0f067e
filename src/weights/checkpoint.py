"""Checkpoints that survive a kill: atomic step directories, integrity checks, strict loading and RNG state.

A training checkpoint is a directory ``<run>/checkpoints/step_<8-digit step>/`` holding the weights
(``weights.ckpt`` or ``weights.safetensors``, written by MindSpore) and ``state.json``::

    {"format_version": 1, "step": 1200, "meta": {...caller's dict...},
     "weights_file": "weights.ckpt", "sha256": "...", "size_bytes": 123, "num_tensors": 42}

Everything is written into ``step_<n>.tmp-<pid>/``, fsynced, then renamed into place, so a kill at any moment leaves
either the previous checkpoints or the new complete one. Names containing ``.tmp-`` are never listed and are removed
by the next ``CheckpointManager.save``. Only one process (rank 0) may write into a checkpoint folder; choosing that
process is the caller's job.
"""
import hashlib
import json
import logging
import os
import random
import re
import shutil

import mindspore as ms
import numpy as np

from src.errors import UserError
from src.utils.files import fsync_path

FORMAT_VERSION = 1
STATE_FILE = "state.json"
WEIGHT_FILES = {"ckpt": "weights.ckpt", "safetensors": "weights.safetensors"}
_STATE_KEYS = ("format_version", "step", "meta", "weights_file", "sha256", "size_bytes", "num_tensors")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_MARK = ".tmp-"
_MAX_LISTED = 10
_LOG = logging.getLogger(__name__)
# Training state a checkpoint may carry besides the model: our optimizer and loss scale, and what MindSpore's own
# training cells write (AdamWeightDecay moments, the dynamic loss-scale cell's scale_sense and overflow counters, the
# gradient accumulators of pipeline parallelism), which the released OPT checkpoints may hold.
OPTIMIZER_STATE_PREFIXES = ("adam_m.", "adam_v.", "global_step", "learning_rate", "beta1_power", "beta2_power",
                            "loss_scale", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
                            "accu_grads.")
# Parameters of the model the trainer sets from the step before every step (the dropout step counter of
# src.engine.trainer.use_step_dropout, DROPOUT_STEP there): never saved, so init never expects them.
STEP_SET_PARAMETERS = ("dropout_step",)
# Top-level names only the original OPT networks use (src.weights.released_opt converts them).
RELEASED_OPT_PREFIXES = ("uniter.", "txt_output.", "img_output.", "cls.predictions.", "itm_output.", "feat_regress.")


def step_dir_name(step):
    """The folder name of the checkpoint of `step`: ``step_00001200``."""
    return f"step_{int(step):08d}"


def save_checkpoint(path_dir, tensors, meta=None, fmt="ckpt", step=None):
    """Write `tensors` (name -> Parameter, Tensor or numpy array) and `meta` (JSON-able dict) atomically to `path_dir`.

    Dtypes are kept as they are. `step` is recorded in state.json and returned as ``meta["step"]`` by
    `load_checkpoint`. An existing `path_dir` is replaced. Returns `path_dir`.
    """
    _check_format(fmt)
    step = None if step is None else int(step)
    meta = dict(meta or {})
    if "step" in meta and meta["step"] != step:
        raise ValueError(f"meta['step'] = {meta['step']!r} disagrees with step = {step!r}")
    meta.pop("step", None)
    json.dumps(meta)  # fail before writing anything if meta is not JSON-serialisable
    if not tensors:
        raise ValueError("save_checkpoint: the tensor dict is empty")
    path_dir = os.path.normpath(path_dir)
    parent = os.path.dirname(os.path.abspath(path_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path_dir}{_TMP_MARK}{os.getpid()}"
    _remove(tmp)
    os.makedirs(tmp)
    try:
        weights = os.path.join(tmp, WEIGHT_FILES[fmt])
        ms.save_checkpoint([{"name": name, "data": _as_tensor(value)} for name, value in tensors.items()],
                           weights, format=fmt)
        fsync_path(weights)
        state = {"format_version": FORMAT_VERSION, "step": step, "meta": meta, "weights_file": WEIGHT_FILES[fmt],
                 "sha256": _sha256(weights), "size_bytes": os.path.getsize(weights), "num_tensors": len(tensors)}
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        _move_into_place(tmp, path_dir)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(parent)
    return path_dir


def load_checkpoint(path):
    """Read a checkpoint directory (verified against its state.json) or a plain .ckpt / .safetensors file.

    Returns ``(tensors, meta)``: name -> MindSpore Parameter (dtype as saved), and the saved meta plus ``"step"``
    (an empty dict for a plain file). Any missing, truncated, corrupt or unreadable file raises UserError.
    """
    if os.path.isdir(path):
        state = _read_state(path)
        problem = _integrity_problem(path, state)
        if problem:
            raise UserError(problem + _older_hint(path))
        tensors = _read_weights(os.path.join(path, state["weights_file"]))
        return tensors, {**state["meta"], "step": state["step"]}
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; pass a step_<n> checkpoint directory or a "
                        f".ckpt/.safetensors file")
    return _read_weights(path), {}


def checkpoint_meta(path):
    """The meta a checkpoint directory was saved with (its state.json, weights not read); {} for a plain file."""
    return dict(_read_state(path)["meta"]) if os.path.isdir(path) else {}


class CheckpointManager:
    """The step directories in one folder: save with pruning, list, and find the newest (valid) one."""

    def __init__(self, directory, keep_last=3, fmt="ckpt"):
        _check_format(fmt)
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise UserError(f"keep_last must be a positive integer or None (keep all), got {keep_last!r}")
        self.directory = directory
        self.keep_last = keep_last
        self.fmt = fmt

    def path_for(self, step):
        """The directory the checkpoint of `step` is (or would be) written to."""
        return os.path.join(self.directory, step_dir_name(step))

    def save(self, step, tensors, meta=None):
        """Write the checkpoint of `step`, then keep only the newest `keep_last` (never the one just written)."""
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith("step_") and _TMP_MARK in name:
                _remove(os.path.join(self.directory, name))
        path = save_checkpoint(self.path_for(step), tensors, meta, self.fmt, step=step)
        if self.keep_last is not None:
            for _, old in self.list()[:-self.keep_last]:
                if old != path:
                    _discard(old)
        return path

    def list(self):
        """Complete checkpoints as ``[(step, path)]``, oldest first."""
        return list_checkpoints(self.directory)

    def latest(self):
        """The newest complete checkpoint directory, or None."""
        entries = self.list()
        return entries[-1][1] if entries else None

    def latest_valid(self):
        """The newest checkpoint whose weights match state.json, or None; corrupt newer ones are logged and skipped."""
        for _, path in reversed(self.list()):
            try:
                problem = _integrity_problem(path, _read_state(path))
            except UserError as err:
                problem = str(err)
            if problem is None:
                return path
            _LOG.warning("skipping checkpoint %s: %s", path, problem)
        return None


def init_from_checkpoint(model, path, allow_missing=False):
    """Load model weights only (no optimizer state) from a checkpoint directory or file; returns the missing keys."""
    tensors, _ = load_checkpoint(path)
    tensors = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_STATE_PREFIXES)}
    if any(k.startswith(RELEASED_OPT_PREFIXES) for k in tensors):
        source, config = (("zidongtaichu", "opt_1b_released.yaml")
                          if any(k.startswith("uniter.img_embeddings.vit.") for k in tensors)
                          else ("modelzoo", "opt_modelzoo_caption.yaml"))
        raise UserError(f"{path} is an original OPT checkpoint (keys such as 'uniter.*', 'txt_output.*'); convert it "
                        f"first: python -m src.weights.convert --source {source} {path} --config "
                        f"config/model/{config} --out <dir>, then init from <dir> (docs/released_checkpoints.md)")
    missing, unexpected = load_into(model, tensors, strict=False, ignore=STEP_SET_PARAMETERS, source=path)
    if unexpected or (missing and not allow_missing):
        load_into(model, tensors, strict=True, ignore=STEP_SET_PARAMETERS, source=path)  # raises with the report
    return missing


def list_checkpoints(directory):
    """The complete step directories in `directory` as ``[(step, path)]``, oldest first ([] if it does not exist)."""
    if not os.path.isdir(directory):
        return []
    entries = []
    for name in os.listdir(directory):
        match = _STEP_DIR.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)):
            entries.append((int(match.group(1)), path))
    return sorted(entries)


def load_into(net, tensors, strict=True, ignore=(), source="checkpoint"):
    """Copy `tensors` into `net`'s parameters by exact name; return ``(missing, unexpected)`` name lists.

    Names starting with any prefix in `ignore` are skipped on both sides. Shapes must match (else UserError);
    values are cast to the parameter's dtype. With `strict`, any missing or unexpected name raises UserError and
    nothing is loaded. `source` names the checkpoint in error messages.
    """
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    params = {name: p for name, p in net.parameters_dict().items() if not name.startswith(ignore)}
    given = {name: v for name, v in tensors.items() if not name.startswith(ignore)}
    missing = sorted(set(params) - set(given))
    unexpected = sorted(set(given) - set(params))
    common = sorted(set(params) & set(given))
    for name in common:
        shape, wanted = _shape(given[name]), tuple(params[name].shape)
        if shape != wanted:
            raise UserError(f"{source}: '{name}' has shape {shape} but the model's parameter has shape {wanted}; "
                            f"the checkpoint was written for a different model configuration")
    if strict and (missing or unexpected):
        raise UserError(f"{source} does not match the model: {_key_report(missing, unexpected)}")
    for name in common:
        params[name].set_data(_as_tensor(given[name], params[name].dtype))
    return missing, unexpected


def strip_prefix(tensors, prefix):
    """A copy of `tensors` with `prefix` removed from the names that start with it (other names unchanged)."""
    renamed = {}
    for name, value in tensors.items():
        new = name[len(prefix):] if name.startswith(prefix) else name
        if new in renamed:
            raise UserError(f"strip_prefix: '{new}' appears both with and without the prefix '{prefix}'")
        renamed[new] = value
    return renamed


def add_prefix(tensors, prefix):
    """A copy of `tensors` with `prefix` put before every name."""
    return {prefix + name: value for name, value in tensors.items()}


def capture_rng_state():
    """The state of python's `random` and numpy's global RNG as a JSON-serialisable dict."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss_next],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def restore_rng_state(state):
    """Set python's `random` and numpy's global RNG back to a `capture_rng_state()` result."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _check_format(fmt):
    if fmt not in WEIGHT_FILES:
        raise UserError(f"checkpoint format {fmt!r} is unknown; use one of {sorted(WEIGHT_FILES)}")


def _as_tensor(value, dtype=None):
    """`value` (Parameter, Tensor, numpy array or number) as a Tensor, cast to `dtype` if given."""
    tensor = value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))
    return tensor if dtype is None or tensor.dtype == dtype else tensor.astype(dtype)


def _shape(value):
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else np.shape(value)


def _read_weights(path):
    """Load a weights file with MindSpore; every failure becomes a UserError naming the file."""
    fmt = next((f for f in WEIGHT_FILES if path.endswith("." + f)), None)
    if fmt is None:
        raise UserError(f"{path}: unknown checkpoint file type; expected a .ckpt or .safetensors file "
                        f"or a step_<n> checkpoint directory")
    try:
        return read_mindspore_file(path, fmt)
    except UserError:
        raise
    except Exception as err:  # MindSpore raises ValueError, RuntimeError or protobuf errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a {fmt} file "
                        f"({reason})") from err


def read_mindspore_file(path, fmt="ckpt"):
    """`ms.load_checkpoint` of one file, with the memory check below; used by every reader of foreign .ckpt files."""
    _check_memory_for(path)
    with _memory_check_uses_available_memory():
        return ms.load_checkpoint(path, format=fmt)


def available_memory_bytes():
    """MemAvailable of /proc/meminfo (free memory plus the page cache the kernel gives back), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory_for(path):
    """Refuse a file larger than the memory the machine can give, with a message that says so (not "corrupt")."""
    size, available = os.path.getsize(path), available_memory_bytes()
    if available is not None and size > available:
        raise UserError(f"cannot read checkpoint {path}: it holds {size / 2**30:.2f} GiB and is read whole into "
                        f"memory, but only {available / 2**30:.2f} GiB is available; free memory or use a machine "
                        f"with more")


class _memory_check_uses_available_memory:
    """MindSpore 2.10's `load_checkpoint` compares a .ckpt file's size with *free* memory (SC_AVPHYS_PAGES), which
    leaves out the page cache the kernel would give back; after a few large files were written, a file that fits
    easily is refused ("exceeds current available memory"). While loading, its check reads MemAvailable instead;
    `_check_memory_for` has already made the same comparison with the right figure."""

    def __enter__(self):
        from mindspore.train import serialization
        self._module = serialization
        self._saved = getattr(serialization, "_get_available_memory", None)
        if self._saved is not None:
            serialization._get_available_memory = available_memory_bytes
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            self._module._get_available_memory = self._saved
        return False


def _read_state(path):
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise UserError(f"{path} is not a checkpoint directory (no {STATE_FILE}); pass a step_<n> directory "
                        f"written by training or a .ckpt/.safetensors file")
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{state_path} is corrupt ({err})" + _older_hint(path)) from err
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS):
        raise UserError(f"{state_path} is corrupt: it needs the keys {list(_STATE_KEYS)}" + _older_hint(path))
    if state["format_version"] > FORMAT_VERSION:
        raise UserError(f"{state_path} has format version {state['format_version']}, newer than this code "
                        f"understands ({FORMAT_VERSION}); update the code")
    return state


def _integrity_problem(path, state):
    """None if the weights file matches state.json, else a sentence saying what is wrong."""
    weights = os.path.join(path, state["weights_file"])
    if not os.path.isfile(weights):
        return f"checkpoint {path} is incomplete: {weights} is missing"
    size = os.path.getsize(weights)
    if size != state["size_bytes"]:
        return (f"checkpoint file {weights} is truncated or corrupt: it has {size} bytes, "
                f"{STATE_FILE} records {state['size_bytes']}")
    if _sha256(weights) != state["sha256"]:
        return f"checkpoint file {weights} is corrupt: its sha256 differs from the one in {STATE_FILE}"
    return None


def _older_hint(path):
    """'; use the older checkpoint X instead' for the newest sibling step directory older than `path`, else ''."""
    match = _STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if not match:
        return ""
    older = [p for step, p in list_checkpoints(os.path.dirname(os.path.normpath(path))) if step < int(match.group(1))]
    return f"; use the older checkpoint {older[-1]} instead" if older else ""


def _key_report(missing, unexpected):
    parts = []
    if missing:
        parts.append(f"{len(missing)} model parameter(s) missing from the checkpoint ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint key(s) unknown to the model ({_some(unexpected)})")
    return ("; ".join(parts) + _prefix_hint(missing, unexpected)
            + "; to load the matching keys anyway pass strict=False (CLI: --allow_missing_keys), "
              "or skip groups of keys with ignore prefixes")


def _some(names):
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _prefix_hint(missing, unexpected):
    """Suggest strip_prefix/add_prefix when the names differ only by a leading 'head.'."""
    directions = ((unexpected, set(missing), "strip_prefix"), (missing, set(unexpected), "add_prefix"))
    for extra, lacking, helper in directions:
        for head in sorted({name.split(".", 1)[0] for name in extra if "." in name}):
            prefix = head + "."
            if any(name.startswith(prefix) and name[len(prefix):] in lacking for name in extra):
                return f"; the names differ by the prefix '{prefix}': use {helper}(tensors, '{prefix}')"
    return ""


def _move_into_place(tmp, final):
    """Rename the finished `tmp` directory to `final`, replacing an older `final` without a window of loss."""
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    old = f"{final}{_TMP_MARK}{os.getpid()}-replaced"
    _remove(old)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


def _discard(path):
    """Delete a checkpoint directory: first rename it to a ``.tmp-`` name so a kill mid-way leaves nothing listed."""
    doomed = f"{path}{_TMP_MARK}{os.getpid()}-deleted"
    os.replace(path, doomed)
    _remove(doomed)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
