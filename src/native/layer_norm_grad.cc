// Backward of LayerNorm over the last axis, for MindSpore's `aot` Custom operator on CPU (built by
// src/native/kernels.py; used by src.models.layers.LayerNorm).
//
// For each row x of width D with y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps) (biased variance):
//   xhat = (x - mean) * rstd,  g = dy * gamma
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   dgamma = sum over rows of dy * xhat,  dbeta = sum over rows of dy
// The row's mean and rstd are recomputed from x (one more pass over a row already in cache), so the forward's
// statistics need not be kept. Rows are split among threads; each thread sums dgamma and dbeta over its rows into a
// buffer of its own, and the buffers are added at the end.
//
// Inputs: x (rows x D, float32), dy (same shape), gamma (D), fixed (float32 [eps, threads]).
// Outputs: dx (shape of x), dgamma (D), dbeta (D).
#include <cmath>
#include <cstdint>
#include <vector>

#include "aot_kernel.h"

namespace {

constexpr int kLanes = 8;                      // partial sums kept in 8 lanes, so the reductions vectorise

float LaneSum(const float *lanes) {
  float total = 0.0f;
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

// sum of a[i] (b == nullptr) or a[i] * b[i] over i < n, in kLanes partial sums
float RowSum(const float *__restrict a, const float *__restrict b, int64_t n) {
  float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += b ? a[i + j] * b[i + j] : a[i + j];
  }
  float total = LaneSum(lanes);
  for (; i < n; ++i) total += b ? a[i] * b[i] : a[i];
  return total;
}

void Rows(const float *__restrict x, const float *__restrict dy, const float *__restrict gamma, float *__restrict dx,
          float *__restrict dgamma, float *__restrict dbeta, int64_t first, int64_t last, int64_t width, float eps,
          float *__restrict scratch) {
  // scratch: 2 * width floats (xhat and g of the current row)
  float *xhat = scratch;
  float *g = scratch + width;
  const float inv_width = 1.0f / static_cast<float>(width);
  for (int64_t r = first; r < last; ++r) {
    const float *xr = x + r * width;
    const float *dyr = dy + r * width;
    float *dxr = dx + r * width;
    const float mean = RowSum(xr, nullptr, width) * inv_width;
    for (int64_t i = 0; i < width; ++i) xhat[i] = xr[i] - mean;
    const float var = RowSum(xhat, xhat, width) * inv_width;
    const float rstd = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < width; ++i) {
      xhat[i] *= rstd;
      g[i] = dyr[i] * gamma[i];
      dgamma[i] += dyr[i] * xhat[i];
      dbeta[i] += dyr[i];
    }
    const float mean_g = RowSum(g, nullptr, width) * inv_width;
    const float mean_gx = RowSum(g, xhat, width) * inv_width;
    for (int64_t i = 0; i < width; ++i) dxr[i] = rstd * (g[i] - mean_g - xhat[i] * mean_gx);
  }
}

}  // namespace

extern "C" int LayerNormGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 7) return 1;
  if (!native::AllFloat32(nparam, dtypes)) return 2;
  if (ndims[0] < 1) return 3;
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t total = native::ElementCount(ndims[0], shapes[0]);
  if (width <= 0 || native::ElementCount(ndims[1], shapes[1]) != total ||
      native::ElementCount(ndims[2], shapes[2]) != width || native::ElementCount(ndims[3], shapes[3]) != 2) {
    return 3;
  }
  const auto *x = static_cast<const float *>(params[0]);
  const auto *dy = static_cast<const float *>(params[1]);
  const auto *gamma = static_cast<const float *>(params[2]);
  const auto *fixed = static_cast<const float *>(params[3]);
  auto *dx = static_cast<float *>(params[4]);
  auto *dgamma = static_cast<float *>(params[5]);
  auto *dbeta = static_cast<float *>(params[6]);
  const int64_t rows = total / width;
  const float eps = fixed[0];

  const int64_t threads = native::ThreadCount(fixed[1], total, rows);
  // per thread: dgamma, dbeta partial sums and the row scratch
  std::vector<float> buffers(static_cast<size_t>(threads * 4 * width), 0.0f);
  auto part = [&](int64_t t) { return buffers.data() + t * 4 * width; };
  native::SplitOnThreads(threads, rows, 1, [&](int64_t t, int64_t first, int64_t last) {
    float *p = part(t);
    Rows(x, dy, gamma, dx, p, p + width, first, last, width, eps, p + 2 * width);
  });
  for (int64_t i = 0; i < width; ++i) {
    float sum_gamma = 0.0f, sum_beta = 0.0f;
    for (int64_t t = 0; t < threads; ++t) {
      sum_gamma += part(t)[i];
      sum_beta += part(t)[width + i];
    }
    dgamma[i] = sum_gamma;
    dbeta[i] = sum_beta;
  }
  return 0;
}
