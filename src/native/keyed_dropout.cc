// Dropout by a keyed mask, for MindSpore's `aot` Custom operator on CPU (built by src/native/kernels.py; used by
// src.engine.trainer.StepDropout). With x viewed as rows by its last axis:
//   out[r, c] = x[r, c] * inv_keep   when Kept(row_keys[r], column_keys[c], threshold)   (aot_kernel.h)
//   out[r, c] = 0                    otherwise
// The mask is formed element by element from the keys and never stored, so the backward is the same operator applied
// to the incoming gradient (dx = dout * mask * inv_keep).
//
// Inputs: x (float32, rows x width), row_keys (int32, rows), column_keys (int32, width), threshold (int32, 1),
// fixed (float32 [inv_keep, threads]). Output: out (float32, shape of x).
#include <cstdint>

#include "aot_kernel.h"

extern "C" int KeyedDropout(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 6) return 1;
  if (!native::IsDtype(dtypes[0], "float32") || !native::IsDtype(dtypes[1], "int32") ||
      !native::IsDtype(dtypes[2], "int32") || !native::IsDtype(dtypes[3], "int32") ||
      !native::IsDtype(dtypes[4], "float32") || !native::IsDtype(dtypes[5], "float32")) {
    return 2;
  }
  if (ndims[0] < 1) return 3;
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t total = native::ElementCount(ndims[0], shapes[0]);
  const int64_t rows = width > 0 ? total / width : 0;
  if (native::ElementCount(ndims[1], shapes[1]) != rows || native::ElementCount(ndims[2], shapes[2]) != width ||
      native::ElementCount(ndims[3], shapes[3]) != 1 || native::ElementCount(ndims[4], shapes[4]) != 2) {
    return 3;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *row_keys = static_cast<const int32_t *>(params[1]);
  const auto *column_keys = static_cast<const int32_t *>(params[2]);
  const int32_t threshold = static_cast<const int32_t *>(params[3])[0];
  const auto *fixed = static_cast<const float *>(params[4]);
  auto *out = static_cast<float *>(params[5]);
  const float inv_keep = fixed[0];
  const int64_t threads = native::ThreadCount(fixed[1], total, rows);
  native::SplitOnThreads(threads, rows, 1, [&](int64_t, int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const float *__restrict xr = x + r * width;
      float *__restrict outr = out + r * width;
      const int32_t key = row_keys[r];
      for (int64_t c = 0; c < width; ++c) {
        outr[c] = native::Kept(key, column_keys[c], threshold) ? xr[c] * inv_keep : 0.0f;
      }
    }
  });
  return 0;
}
