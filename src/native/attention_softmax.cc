// The softmax of attention, forward and backward, for MindSpore's `aot` Custom operators on CPU (built by
// src/native/kernels.py; used by src.models.layers.NativeAttentionCore).
//
// Scores s (B, h, Lq, Lk) = q k^T come in unscaled; bias is broadcast to them (its dimensions, right-aligned to 4,
// are each 1 or the scores'). For each row (b, h, i), over the keys j:
//   p = softmax(s * scale + bias)
//   used = p * mask * inv_keep        (mask from the keys, aot_kernel.h Kept; mask = 1 when `masked` is 0)
// AttentionSoftmax returns `used`. AttentionSoftmaxGrad, given dp = dout v^T and row = sum over the head width of
// dout * out (the context's output), recomputes p and returns `used` (for dv = used^T dout) and the gradient of the
// scores before scaling:
//   ds = scale * p * (dp * mask * inv_keep - row)
// (row equals sum_j used_j dp_j, FlashAttention's identity). Nothing score-sized is kept between forward and
// backward, no broadcast copy of the bias or score-sized mask is made, and each row is finished while in cache.
//
// exp is aot_kernel.h's Exp (a polynomial within about 1 ulp, so the row loops vectorise; padding's -1e4 bias gives
// exactly 0).
//
// AttentionSoftmax inputs: scores (float32, 4-D), bias (float32, up to 4-D), row_keys (int32, B*h*Lq or 1),
// column_keys (int32, Lk or 1), threshold (int32, 1), fixed (float32 [scale, inv_keep, threads, masked]).
// Output: used (float32, shape of scores).
// AttentionSoftmaxGrad inputs: the same six, dp (float32, shape of scores), row (float32, B*h*Lq).
// Outputs: used, ds (float32, shape of scores).
#include <cmath>
#include <cstdint>
#include <vector>

#include "aot_kernel.h"

namespace {

constexpr int kLanes = 16;

struct Problem {
  const float *scores, *bias;
  const int32_t *row_keys, *column_keys;
  int32_t threshold;
  float scale, inv_keep;
  bool masked;
  int64_t rows, queries, heads, keys;      // rows = B * h * Lq
  int64_t bias_stride[3];                  // bias offsets per step of b, h, i (0 where broadcast)
  bool bias_per_key;                       // bias's last dimension is Lk (else 1)
};

const float *BiasRow(const Problem &pr, int64_t r) {
  const int64_t i = r % pr.queries;
  const int64_t h = (r / pr.queries) % pr.heads;
  const int64_t b = r / (pr.queries * pr.heads);
  return pr.bias + b * pr.bias_stride[0] + h * pr.bias_stride[1] + i * pr.bias_stride[2];
}

// p of row r into `p` (length keys)
void Probabilities(const Problem &pr, int64_t r, float *__restrict p) {
  const float *__restrict s = pr.scores + r * pr.keys;
  const float *__restrict bias = BiasRow(pr, r);
  const int64_t n = pr.keys;
  if (pr.bias_per_key) {
    for (int64_t j = 0; j < n; ++j) p[j] = s[j] * pr.scale + bias[j];
  } else {
    const float constant = bias[0];
    for (int64_t j = 0; j < n; ++j) p[j] = s[j] * pr.scale + constant;
  }
  float high[kLanes];
  for (int j = 0; j < kLanes; ++j) high[j] = -INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) high[l] = p[j + l] > high[l] ? p[j + l] : high[l];
  }
  float top = -INFINITY;
  for (int l = 0; l < kLanes; ++l) top = high[l] > top ? high[l] : top;
  for (; j < n; ++j) top = p[j] > top ? p[j] : top;
  float lanes[kLanes] = {};
  j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      p[j + l] = native::Exp(p[j + l] - top);
      lanes[l] += p[j + l];
    }
  }
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  for (; j < n; ++j) {
    p[j] = native::Exp(p[j] - top);
    total += p[j];
  }
  const float inv = 1.0f / total;
  for (j = 0; j < n; ++j) p[j] *= inv;
}

// the factor mask * inv_keep of row r's elements into `factor`
void MaskFactors(const Problem &pr, int64_t r, float *__restrict factor) {
  const int32_t key = pr.row_keys[r];
  for (int64_t j = 0; j < pr.keys; ++j) {
    factor[j] = native::Kept(key, pr.column_keys[j], pr.threshold) ? pr.inv_keep : 0.0f;
  }
}

// reads the six common inputs into `pr`; 0 or an error code
int ReadProblem(int *ndims, int64_t **shapes, const char **dtypes, void **params, Problem *pr) {
  if (!native::IsDtype(dtypes[0], "float32") || !native::IsDtype(dtypes[1], "float32") ||
      !native::IsDtype(dtypes[2], "int32") || !native::IsDtype(dtypes[3], "int32") ||
      !native::IsDtype(dtypes[4], "int32") || !native::IsDtype(dtypes[5], "float32")) {
    return 2;
  }
  if (ndims[0] != 4 || ndims[1] > 4 || native::ElementCount(ndims[5], shapes[5]) != 4 ||
      native::ElementCount(ndims[4], shapes[4]) != 1) {
    return 3;
  }
  const int64_t *shape = shapes[0];
  int64_t bias_shape[4] = {1, 1, 1, 1};
  for (int d = 0; d < ndims[1]; ++d) bias_shape[4 - ndims[1] + d] = shapes[1][d];
  for (int d = 0; d < 4; ++d) {
    if (bias_shape[d] != 1 && bias_shape[d] != shape[d]) return 4;
  }
  const auto *fixed = static_cast<const float *>(params[5]);
  pr->scores = static_cast<const float *>(params[0]);
  pr->bias = static_cast<const float *>(params[1]);
  pr->row_keys = static_cast<const int32_t *>(params[2]);
  pr->column_keys = static_cast<const int32_t *>(params[3]);
  pr->threshold = static_cast<const int32_t *>(params[4])[0];
  pr->scale = fixed[0];
  pr->inv_keep = fixed[1];
  pr->masked = fixed[3] != 0.0f;
  pr->heads = shape[1];
  pr->queries = shape[2];
  pr->keys = shape[3];
  pr->rows = shape[0] * shape[1] * shape[2];
  if (pr->masked && (native::ElementCount(ndims[2], shapes[2]) != pr->rows ||
                     native::ElementCount(ndims[3], shapes[3]) != pr->keys)) {
    return 5;
  }
  pr->bias_per_key = bias_shape[3] != 1;
  const int64_t key_step = bias_shape[3];
  pr->bias_stride[2] = bias_shape[2] == 1 ? 0 : key_step;
  pr->bias_stride[1] = bias_shape[1] == 1 ? 0 : key_step * bias_shape[2];
  pr->bias_stride[0] = bias_shape[0] == 1 ? 0 : key_step * bias_shape[2] * bias_shape[1];
  return 0;
}

}  // namespace

extern "C" int AttentionSoftmax(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 7) return 1;
  Problem pr;
  if (int error = ReadProblem(ndims, shapes, dtypes, params, &pr)) return error;
  auto *used = static_cast<float *>(params[6]);
  const float *fixed = static_cast<const float *>(params[5]);
  const int64_t threads = native::ThreadCount(fixed[2], pr.rows * pr.keys, pr.rows);
  native::SplitOnThreads(threads, pr.rows, 1, [&](int64_t, int64_t first, int64_t last) {
    std::vector<float> factor(static_cast<size_t>(pr.keys));
    for (int64_t r = first; r < last; ++r) {
      float *__restrict out = used + r * pr.keys;
      Probabilities(pr, r, out);
      if (!pr.masked) continue;
      MaskFactors(pr, r, factor.data());
      for (int64_t j = 0; j < pr.keys; ++j) out[j] *= factor[j];
    }
  });
  return 0;
}

extern "C" int AttentionSoftmaxGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (nparam != 10) return 1;
  Problem pr;
  if (int error = ReadProblem(ndims, shapes, dtypes, params, &pr)) return error;
  if (!native::IsDtype(dtypes[6], "float32") || !native::IsDtype(dtypes[7], "float32")) return 2;
  if (native::ElementCount(ndims[6], shapes[6]) != pr.rows * pr.keys ||
      native::ElementCount(ndims[7], shapes[7]) != pr.rows) {
    return 3;
  }
  const auto *dp = static_cast<const float *>(params[6]);
  const auto *row_sums = static_cast<const float *>(params[7]);
  auto *used = static_cast<float *>(params[8]);
  auto *ds = static_cast<float *>(params[9]);
  const float *fixed = static_cast<const float *>(params[5]);
  const int64_t threads = native::ThreadCount(fixed[2], pr.rows * pr.keys, pr.rows);
  native::SplitOnThreads(threads, pr.rows, 1, [&](int64_t, int64_t first, int64_t last) {
    std::vector<float> p(static_cast<size_t>(pr.keys)), factor(static_cast<size_t>(pr.keys), 1.0f);
    for (int64_t r = first; r < last; ++r) {
      Probabilities(pr, r, p.data());
      if (pr.masked) MaskFactors(pr, r, factor.data());
      const float *__restrict dpr = dp + r * pr.keys;
      float *__restrict usedr = used + r * pr.keys;
      float *__restrict dsr = ds + r * pr.keys;
      const float row = row_sums[r];
      for (int64_t j = 0; j < pr.keys; ++j) {
        usedr[j] = p[j] * factor[j];
        dsr[j] = pr.scale * p[j] * (dpr[j] * factor[j] - row);
      }
    }
  });
  return 0;
}
