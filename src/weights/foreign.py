"""Shared machinery for importing public pre-trained weights (HuggingFace safetensors files) into OPTModel.

`read_safetensors` reads a file with NumPy alone (no torch): F32/F16/F64/BF16 become float32 arrays. A
`WeightImport` walks one file: the layout modules (bert.py, vit.py, cnclip.py) call `take` for every key they map,
`drop` for every key they leave out (with the reason) and `check` for every shape a config value must match; `finish`
refuses a file with keys nobody claimed. `apply_imports` then writes all values into the model at once and records
every parameter of ours no file set as "initialised" in the shared LoadReport (src/weights/report.py).

Also here: the position-table resize (`resize_grid`, torch's `interpolate(..., align_corners=False)` re-derived in
NumPy) and the fold of a checkpoint's input normalisation into a linear patch embedding (`fold_normalisation`).
"""
import json
import os
import re

import numpy as np

from src.errors import UserError

TORCH_TO_SAFETENSORS = ('python -c "import sys, torch; from safetensors.torch import save_file; '
                        'sd = torch.load(sys.argv[1], map_location=\'cpu\'); sd = sd.get(\'state_dict\', sd); '
                        'save_file({k: v.clone().contiguous() for k, v in sd.items()}, sys.argv[2])" '
                        'MODEL.bin model.safetensors')
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_FLOAT_SOURCE = ("F64", "F16", "BF16")
CUBIC_A = -0.75     # torch's bicubic kernel coefficient (Keys' cubic convolution with a = -0.75)


def read_safetensors(path):
    """(name -> numpy array, name -> safetensors dtype string) of a .safetensors file; floats come back as float32.

    Reads the format directly (8-byte little-endian header size, JSON header, raw little-endian data), so BF16 files
    work without torch. A missing file, a PyTorch pickle or a corrupt header raises UserError.
    """
    if not os.path.isfile(path):
        raise UserError(f"pre-trained weights {path} not found; give the path of a HuggingFace model.safetensors "
                        f"(see docs/pretrained_encoders.md)")
    if not path.endswith(".safetensors"):
        raise UserError(f"{path} is not a .safetensors file; convert a PyTorch .bin/.pt once with torch installed: "
                        f"{TORCH_TO_SAFETENSORS}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        size = int(np.frombuffer(raw[:8], "<u8")[0])
        header = json.loads(raw[8:8 + size].decode("utf-8"))
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable safetensors file (corrupt or truncated header: {err})") from err
    data = memoryview(raw)[8 + size:]
    tensors, dtypes = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if end > len(data):
            raise UserError(f"{path} is truncated: tensor '{name}' ends at byte {end} of {len(data)}")
        chunk = data[start:end]
        if kind == "BF16":
            bits = np.frombuffer(chunk, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif kind in _DTYPES:
            array = np.frombuffer(chunk, np.dtype(_DTYPES[kind]).newbyteorder("<"))
        else:
            raise UserError(f"{path}: tensor '{name}' has dtype {kind}, which this reader does not handle")
        array = array.reshape(shape)
        tensors[name] = array.astype(np.float32) if kind in _FLOAT_SOURCE + ("F32",) else array.copy()
        dtypes[name] = kind
    return tensors, dtypes


def sidecar_json(path, name):
    """The JSON file `name` (config.json, preprocessor_config.json) beside the weights file, or None."""
    side = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise UserError(f"{side} is not valid JSON ({err}); fix or remove it") from err


def layer_count(keys, pattern):
    """1 + the largest N in keys matching `pattern` (a regex with one group for N), 0 if none matches."""
    numbers = [int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m]
    return max(numbers) + 1 if numbers else 0


class WeightImport:
    """One foreign file on its way into `model`: which keys went where, and the values to write."""

    def __init__(self, path, layout, params, report, values):
        self.path, self.layout, self.report = path, layout, report
        self.tensors, self.dtypes = read_safetensors(path)
        self.params = params          # our name -> Parameter (shared by every import of one model)
        self.values = values          # our name -> numpy value to write (shared)
        self.claimed = set()

    def has(self, key):
        return key in self.tensors

    def get(self, key):
        if key not in self.tensors:
            raise UserError(f"{self.path}: key '{key}' is missing, so this is not a complete {self.layout} "
                            f"checkpoint (or not one in the HuggingFace layout); see docs/pretrained_encoders.md")
        return self.tensors[key]

    def check(self, found, wanted, what, fix):
        """Refuse the file in one line when a size read from it (`found`) differs from the config's (`wanted`)."""
        if found != wanted:
            raise UserError(f"{self.path}: {what} is {found} in the file but {wanted} in the config; {fix}")

    def check_heads(self, wanted, config_key, section=None):
        """Attention heads are not in the weights: compare config.json's `num_attention_heads` (in `section`, e.g.
        text_config) with the config's when a config.json sits beside the file."""
        config = sidecar_json(self.path, "config.json") or {}
        config = config.get(section, {}) if section else config
        if "num_attention_heads" in config:
            self.check(int(config["num_attention_heads"]), wanted, "the number of attention heads (config.json)",
                       f"set {config_key} to config.json's num_attention_heads")

    def take(self, key, ours, value=None, action="mapped", detail=""):
        """Map source `key` to our parameter `ours`, with `value` replacing the stored array when it was changed
        (reshaped, sliced, interpolated, ...). Several keys may feed one parameter (qkv slices feed three)."""
        source = self.get(key)
        value = source if value is None else value
        if ours not in self.params:
            raise ValueError(f"{self.layout} mapping names '{ours}', which is not a parameter of the model")
        wanted = tuple(self.params[ours].shape)
        if tuple(value.shape) != wanted:
            raise UserError(f"{self.path}: '{key}' gives shape {tuple(value.shape)} for our '{ours}', which has "
                            f"shape {wanted}; the file does not fit this model config")
        if ours in self.values:
            raise ValueError(f"our parameter '{ours}' is set twice (second time from '{key}')")
        self.claimed.add(key)
        self.values[ours] = np.asarray(value, np.float32)
        if self.dtypes[key] not in ("F32",):
            self.report.add("cast", key, ours, f"{self.dtypes[key]} -> float32")
        self.report.add(action, key, ours, detail)

    def mark(self, key):
        """`key` fed a parameter already recorded by `take` (e.g. the second source of a merged value)."""
        self.get(key)
        self.claimed.add(key)

    def drop(self, key, reason):
        if key in self.tensors and key not in self.claimed:
            self.claimed.add(key)
            self.report.add("dropped", key, None, reason)

    def drop_matching(self, pattern, reason):
        for key in sorted(self.tensors):
            if re.match(pattern, key):
                self.drop(key, reason)

    def finish(self):
        """Every key of the file must have been mapped or dropped with a reason."""
        left = sorted(set(self.tensors) - self.claimed)
        if left:
            shown = ", ".join(left[:5]) + (f", ... and {len(left) - 5} more" if len(left) > 5 else "")
            raise UserError(f"{self.path}: {len(left)} key(s) the {self.layout} loader does not know ({shown}); "
                            f"is this a {self.layout} checkpoint in the HuggingFace layout?")


def apply_imports(model, params, values, report):
    """Write `values` into the model's parameters and record the parameters no file set as "initialised"."""
    import mindspore as ms
    for name, param in params.items():
        if name in values:
            param.set_data(ms.Tensor(values[name]).astype(param.dtype))
        else:
            report.add("initialised", None, name, "no pre-trained weights for this parameter; kept its fresh "
                       "initialisation")
    return report


def resize_matrix(n_in, n_out, mode):
    """(n_out, n_in) interpolation weights along one axis, as torch.nn.functional.interpolate with
    align_corners=False and no antialiasing: output i samples input coordinate (i + 0.5) * n_in / n_out - 0.5.

    bilinear: the two neighbours, coordinate clamped at 0 and the upper index at n_in - 1.
    bicubic: Keys' cubic convolution (a = -0.75) over four neighbours, indices clamped to the edges.
    """
    weights = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        if mode == "bilinear":
            src = max(src, 0.0)
            lo = int(np.floor(src))
            t = src - lo
            weights[i, min(lo, n_in - 1)] += 1.0 - t
            weights[i, min(lo + 1, n_in - 1)] += t
        elif mode == "bicubic":
            lo = int(np.floor(src))
            t = src - lo
            for offset, distance in ((-1, 1.0 + t), (0, t), (1, 1.0 - t), (2, 2.0 - t)):
                weights[i, min(max(lo + offset, 0), n_in - 1)] += _cubic(distance)
        else:
            raise UserError(f"checkpoint.position_interpolation must be 'bicubic' or 'bilinear', got {mode!r}")
    return weights


def _cubic(d):
    a = CUBIC_A
    if d <= 1.0:
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    if d < 2.0:
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return 0.0


def resize_grid(table, grid_in, grid_out, mode):
    """A (grid_in**2, D) position table of a row-major patch grid resized to (grid_out**2, D)."""
    if grid_in == grid_out:
        return table
    width = table.shape[1]
    rows = resize_matrix(grid_in, grid_out, mode)
    grid = table.astype(np.float64).reshape(grid_in, grid_in, width)
    out = np.einsum("ia,abd,jb->ijd", rows, grid, rows)
    return out.reshape(grid_out * grid_out, width).astype(np.float32)


def fold_normalisation(weight, bias, channels, mean_ours, std_ours, mean_theirs, std_theirs):
    """A linear patch embedding (weight (D, C*p*p) over patches flattened as (C, py, px), bias (D,)) trained on
    inputs normalised with (mean_theirs, std_theirs), rewritten for inputs normalised with (mean_ours, std_ours):

        x_theirs = x_ours * std_ours / std_theirs + (mean_ours - mean_theirs) / std_theirs      (per channel)

    so W' = W * std_ours / std_theirs per channel block and b' = b + W @ shift. Exact: patches do not overlap."""
    d = weight.shape[0]
    per_channel = weight.astype(np.float64).reshape(d, channels, -1)
    gain = np.asarray(std_ours, np.float64) / np.asarray(std_theirs, np.float64)
    shift = (np.asarray(mean_ours, np.float64) - np.asarray(mean_theirs, np.float64)) / np.asarray(std_theirs)
    new_weight = (per_channel * gain[None, :, None]).reshape(d, -1)
    new_bias = (np.zeros(d) if bias is None else bias.astype(np.float64)) + (per_channel.sum(2) * shift).sum(1)
    return new_weight.astype(np.float32), new_bias.astype(np.float32)
