"""CPU kernels of our own, compiled from src/native/*.cc on first use and run as MindSpore `aot` Custom ops.

Only where MindSpore's CPU kernel is far from what the machine can do (docs/experiments/2026-12-07-native-kernels.md):
- adamw.cc: its fused AdamWeightDecay runs on one thread at about 5 ns per parameter (1.7 s of a base-model step),
  while the update is one pass over memory (src.engine.optim.NativeAdamWeightDecay, `optim.kernel`);
- layer_norm_grad.cc: its LayerNormGrad takes about 4 times as long as the LayerNorm forward
  (src.models.layers.LayerNorm);
- attention_softmax.cc: attention's scale, bias, softmax and dropout, and their backward, written from separate
  kernels (a broadcast copy of the bias, Softmax, the dropout mask and products, each a pass over a score-sized
  tensor) are one pass per row here, with the dropout mask formed from keys (src.models.layers.NativeAttentionCore);
- tanh_gelu.cc: the tanh GELU and its backward, each one pass over the elements where MindSpore's elementwise kernels
  took about ten (src.models.layers.TanhGELU);
- keyed_dropout.cc: dropout by the keyed mask of the trainer's StepDropout without forming or keeping the mask
  (src.engine.trainer.StepDropout).

A library is built with the host's C++ compiler (`$CXX`, else g++ or c++) for this machine's instruction set
(-march=native) into a cache folder: `$OPT_NATIVE_CACHE`, else `$XDG_CACHE_HOME/opt-mindspore/native`, else
`~/.cache/opt-mindspore/native`. The file name carries a hash of the source, the flags, the compiler's version and
the CPU's feature flags, so a changed source or another machine builds anew, and processes that build at the same
time (ranks of one job) each write a temporary file and rename it into place. `native_library` raises NativeBuildError
(with the compiler's message) when there is no compiler, the cache cannot be written or the build fails;
`build_problem` turns that into a reason, warned once, and the caller decides whether it is an error
(`optim.kernel: native`) or a reason to fall back (`auto`, and LayerNorm).
"""
import functools
import glob
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

log = logging.getLogger(__name__)
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-pthread", "-std=c++17")


class NativeBuildError(RuntimeError):
    """A native kernel could not be built (no compiler, or the compiler failed)."""


def cache_dir():
    if os.environ.get("OPT_NATIVE_CACHE"):
        return os.environ["OPT_NATIVE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "opt-mindspore", "native")


def find_compiler():
    """The C++ compiler to use: $CXX, else g++, else c++; None when there is none."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def native_library(name):
    """Path of the shared library built from src/native/<name>.cc (built and cached on first use)."""
    source = os.path.join(SOURCE_DIR, f"{name}.cc")
    compiler = find_compiler()
    if compiler is None:
        raise NativeBuildError("no C++ compiler found (set $CXX, or install g++: apt-get install g++)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    code = b""
    for path in [source, *sorted(glob.glob(os.path.join(SOURCE_DIR, "*.h")))]:   # the kernel and the shared header
        with open(path, "rb") as f:
            code += f.read()
    key = hashlib.sha256(b"\0".join([code, " ".join(CXX_FLAGS).encode(), version.encode(), _cpu_flags().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    folder = cache_dir()
    target = os.path.join(folder, f"lib{name}-{key}.so")
    if os.path.isfile(target):
        return target
    try:
        os.makedirs(folder, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".lib{name}-", suffix=".so", dir=folder)
    except OSError as error:
        raise NativeBuildError(f"cannot write the kernel cache {folder} ({error.strerror}); "
                               "set OPT_NATIVE_CACHE to a writable folder") from error
    os.close(handle)
    try:
        done = subprocess.run([compiler, *CXX_FLAGS, "-o", partial, source], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise NativeBuildError(f"{os.path.basename(compiler)} failed on {source} "
                                   f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def build_problem(name):
    """None when the library of src/native/<name>.cc is built (now or before); else why it could not be, which is
    also logged once as a warning (the caller then keeps MindSpore's kernel, or refuses)."""
    try:
        native_library(name)
    except NativeBuildError as error:
        _warn_once(name, str(error))
        return str(error)
    return None


def native_kernels_usable(name):
    """True when the native kernel `name` can run here: the device is the CPU and the library builds."""
    import mindspore as ms
    return ms.get_context("device_target") == "CPU" and build_problem(name) is None


@functools.cache
def _warn_once(name, message):
    log.warning("native kernel %s not built, MindSpore's kernel runs instead; the library could not be built: %s",
                name, message)


def kernel_threads():
    """Threads of a native kernel: the cores this process may use, shared among the ranks of a distributed job
    (a CPU job's ranks run on one host)."""
    from mindspore.communication import GlobalComm, get_group_size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if GlobalComm.INITED:
        cores //= get_group_size()
    return max(1, cores)


def layer_norm_grad_op():
    """The Custom op running LayerNormGrad (src/native/layer_norm_grad.cc): inputs x, dy, gamma,
    [eps, threads]; outputs dx, dgamma, dbeta."""
    import mindspore as ms
    from mindspore import ops
    return ops.Custom(f"{native_library('layer_norm_grad')}:LayerNormGrad",
                      out_shape=lambda x, dy, gamma, fixed: (x, gamma, gamma),
                      out_dtype=lambda *dtypes: (ms.float32, ms.float32, ms.float32), func_type="aot")


def adamw_in_place_op():
    """The Custom op running AdamWeightDecayInPlace (src/native/adamw.cc): inputs var, m, v, grad, [lr, factor],
    [beta1, beta2, eps, decay, threads]; updates var, m and v in place and returns a one-element token."""
    import mindspore as ms
    from mindspore import ops
    op = ops.Custom(f"{native_library('adamw')}:AdamWeightDecayInPlace", out_shape=lambda *shapes: [1],
                    out_dtype=lambda *dtypes: ms.float32, func_type="aot")
    op.add_prim_attr("side_effect_mem", True)  # it writes its first three inputs: keep it, and keep it in order
    return op


def keyed_dropout_op():
    """The Custom op running KeyedDropout (src/native/keyed_dropout.cc): inputs x, row_keys, column_keys (int32),
    threshold (int32 [1]), [inv_keep, threads]; output x with the keyed mask applied (and scaled by inv_keep). Its
    backward is the same kernel applied to the incoming gradient (dx = dout * mask * inv_keep)."""
    import mindspore as ms
    from mindspore import ops

    def make(bprop=None):
        return ops.Custom(f"{native_library('keyed_dropout')}:KeyedDropout", out_shape=lambda x, *rest: x,
                          out_dtype=lambda *dtypes: ms.float32, func_type="aot", bprop=bprop)

    on_gradient = make()

    def bprop(x, row_keys, column_keys, threshold, fixed, out, dout):
        return (on_gradient(dout, row_keys, column_keys, threshold, fixed), ops.zeros_like(row_keys),
                ops.zeros_like(column_keys), ops.zeros_like(threshold), ops.zeros_like(fixed))

    return make(bprop)


def tanh_gelu_op():
    """The Custom op running TanhGeluForward (src/native/tanh_gelu.cc): inputs x, [threads]; output the tanh GELU of
    x. Its backward is TanhGeluGrad (inputs x, dy, [threads]; output dx)."""
    import mindspore as ms
    from mindspore import ops
    library = native_library("tanh_gelu")
    grad = ops.Custom(f"{library}:TanhGeluGrad", out_shape=lambda x, *rest: x, out_dtype=lambda *dtypes: ms.float32,
                      func_type="aot")

    def bprop(x, fixed, out, dout):
        return grad(x, dout, fixed), ops.zeros_like(fixed)

    return ops.Custom(f"{library}:TanhGeluForward", out_shape=lambda x, *rest: x,
                      out_dtype=lambda *dtypes: ms.float32, func_type="aot", bprop=bprop)


def attention_softmax_ops():
    """The Custom ops running AttentionSoftmax and AttentionSoftmaxGrad (src/native/attention_softmax.cc): inputs
    scores (B, h, Lq, Lk), bias, row_keys, column_keys (int32), threshold (int32 [1]), [scale, inv_keep, threads,
    masked]; the backward also takes dp and the row sums. Forward output: the (dropped) probabilities; backward
    outputs: those probabilities and the scores' gradient."""
    import mindspore as ms
    from mindspore import ops
    library = native_library("attention_softmax")
    forward = ops.Custom(f"{library}:AttentionSoftmax", out_shape=lambda scores, *rest: scores,
                         out_dtype=lambda *dtypes: ms.float32, func_type="aot")
    backward = ops.Custom(f"{library}:AttentionSoftmaxGrad", out_shape=lambda scores, *rest: (scores, scores),
                          out_dtype=lambda *dtypes: (ms.float32, ms.float32), func_type="aot")
    return forward, backward
