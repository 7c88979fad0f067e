// AdamW step in place, for MindSpore's `aot` Custom operator on CPU (built by src/native/kernels.py).
//
// The update is MindSpore's AdamWeightDecay (no bias correction; decay added to the Adam direction):
//   g = grad * factor
//   m = m + (g - m) * (1 - beta1)
//   v = v + (g * g - v) * (1 - beta2)
//   var = var - lr * (m / (sqrt(v) + eps) + decay * var)
// `factor` folds gradient clipping and loss-scale / accumulation unscaling into the same pass, so no scaled copy of
// the gradients is ever made. var, m and v are written in place (the operator is marked as having a memory side
// effect); the one-element output is a token for the graph's ordering.
//
// Inputs: var, m, v, grad (float32, same element count), dynamic (float32 [lr, factor]),
// fixed (float32 [beta1, beta2, eps, decay, threads]). Output: token (float32 [1], set to 0).
// The loop has no branches and IEEE sqrt and division, so the compiler vectorises it with the host's SIMD width.
#include <cmath>
#include <cstdint>

#include "aot_kernel.h"

namespace {

struct Hyper {
  float lr, factor, keep1, rate1, keep2, rate2, eps, decay;
};

void UpdateRange(float *__restrict var, float *__restrict m, float *__restrict v, const float *__restrict grad,
                 int64_t begin, int64_t end, const Hyper &h) {
  for (int64_t i = begin; i < end; ++i) {
    const float g = grad[i] * h.factor;
    const float mi = h.keep1 * m[i] + h.rate1 * g;
    const float vi = h.keep2 * v[i] + h.rate2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    var[i] -= h.lr * (mi / (std::sqrt(vi) + h.eps) + h.decay * var[i]);
  }
}

}  // namespace

extern "C" int AdamWeightDecayInPlace(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  (void)stream;
  (void)extra;
  constexpr int kInputs = 6;
  if (nparam != kInputs + 1) return 1;
  if (!native::AllFloat32(nparam, dtypes)) return 2;
  const int64_t n = native::ElementCount(ndims[0], shapes[0]);
  for (int i = 1; i < 4; ++i) {
    if (native::ElementCount(ndims[i], shapes[i]) != n) return 3;
  }
  if (native::ElementCount(ndims[4], shapes[4]) != 2 || native::ElementCount(ndims[5], shapes[5]) != 5) return 4;
  auto *var = static_cast<float *>(params[0]);
  auto *m = static_cast<float *>(params[1]);
  auto *v = static_cast<float *>(params[2]);
  const auto *grad = static_cast<const float *>(params[3]);
  const auto *dynamic = static_cast<const float *>(params[4]);
  const auto *fixed = static_cast<const float *>(params[5]);
  const Hyper h{dynamic[0], dynamic[1], fixed[0], 1.0f - fixed[0], fixed[1], 1.0f - fixed[1], fixed[2], fixed[3]};
  // m + (g - m)(1 - b) written as b*m + (1 - b)*g: the same value to rounding, one multiply-add chain per moment

  const int64_t threads = native::ThreadCount(fixed[4], n, n);
  native::SplitOnThreads(threads, n, 16, [&](int64_t, int64_t begin, int64_t end) {
    UpdateRange(var, m, v, grad, begin, end, h);
  });
  static_cast<float *>(params[kInputs])[0] = 0.0f;
  return 0;
}
