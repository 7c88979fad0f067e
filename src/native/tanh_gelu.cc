// GELU, tanh approximation, forward and backward, for MindSpore's `aot` Custom operators on CPU (built by
// src/native/kernels.py; used by src.models.layers.TanhGELU in training):
//   y = x * sigmoid(u),  u = a * x * (1 + c x^2),  a = 2 sqrt(2 / pi),  c = 0.044715
//     (equal to 0.5 x (1 + tanh(sqrt(2 / pi) (x + c x^3))))
//   dx = dy * (g + x g (1 - g) a (1 + 3 c x^2)),  g = sigmoid(u)
// One pass over the elements each, split among threads; MindSpore's CPU kernels took one pass per elementwise
// operation (about ten). sigmoid(u) = 1 / (1 + exp(-u)) with aot_kernel.h's Exp.
//
// TanhGeluForward inputs: x (float32), fixed (float32 [threads]); output y.
// TanhGeluGrad inputs: x, dy (float32, same shape), fixed (float32 [threads]); output dx.
#include <cstdint>

#include "aot_kernel.h"

namespace {

constexpr float kA = 1.5957691216057308f;   // 2 sqrt(2 / pi)
constexpr float kC = 0.044715f;

inline float Gate(float x) { return 1.0f / (1.0f + native::Exp(-kA * x * (1.0f + kC * x * x))); }

template <typename Body>
int Elementwise(int64_t n, float requested_threads, const Body &body) {
  const int64_t threads = native::ThreadCount(requested_threads, n, n);
  native::SplitOnThreads(threads, n, 16, [&](int64_t, int64_t begin, int64_t end) { body(begin, end); });
  return 0;
}

}  // namespace

extern "C" int TanhGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 3) return 1;
  if (!native::AllFloat32(nparam, dtypes)) return 2;
  const int64_t n = native::ElementCount(ndims[0], shapes[0]);
  if (native::ElementCount(ndims[1], shapes[1]) != 1) return 3;
  const auto *x = static_cast<const float *>(params[0]);
  auto *y = static_cast<float *>(params[2]);
  return Elementwise(n, static_cast<const float *>(params[1])[0], [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = x[i] * Gate(x[i]);
  });
}

extern "C" int TanhGeluGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 4) return 1;
  if (!native::AllFloat32(nparam, dtypes)) return 2;
  const int64_t n = native::ElementCount(ndims[0], shapes[0]);
  if (native::ElementCount(ndims[1], shapes[1]) != n || native::ElementCount(ndims[2], shapes[2]) != 1) return 3;
  const auto *x = static_cast<const float *>(params[0]);
  const auto *dy = static_cast<const float *>(params[1]);
  auto *dx = static_cast<float *>(params[3]);
  return Elementwise(n, static_cast<const float *>(params[2])[0], [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      const float g = Gate(v);
      dx[i] = dy[i] * (g + v * g * (1.0f - g) * kA * (1.0f + 3.0f * kC * v * v));
    }
  });
}
