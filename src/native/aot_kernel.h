// Helpers shared by the kernels of src/native (MindSpore `aot` Custom operators on CPU): element counts, the dtype
// checks, running a task on several threads, a vectorisable exp, and the keep decision of the keyed dropout masks.
#pragma once
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace native {

inline int64_t ElementCount(int ndim, const int64_t *shape) {
  int64_t count = 1;
  for (int i = 0; i < ndim; ++i) count *= shape[i];
  return count;
}

inline bool IsDtype(const char *dtype, const char *name) { return std::strcmp(dtype, name) == 0; }

inline bool AllFloat32(int count, const char **dtypes) {
  for (int i = 0; i < count; ++i) {
    if (!IsDtype(dtypes[i], "float32")) return false;
  }
  return true;
}

// `requested` threads, fewer when one would get under 2^16 elements (start-up would cost more than it saves) or when
// there are fewer `pieces` of work; at least 1
inline int64_t ThreadCount(float requested, int64_t elements, int64_t pieces) {
  int64_t threads = static_cast<int64_t>(requested);
  if (threads > elements / (int64_t{1} << 16)) threads = elements / (int64_t{1} << 16);
  if (threads > pieces) threads = pieces;
  return threads < 1 ? 1 : threads;
}

// task(t) for t = 0 .. threads - 1, task(0) on the calling thread
template <typename Task>
void RunOnThreads(int64_t threads, const Task &task) {
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) workers.emplace_back(task, t);
  task(0);
  for (auto &worker : workers) worker.join();
}

// body(t, begin, end) on `threads` threads, each over a contiguous run [begin, end) of `count` items. Runs are a
// multiple of `align` items long (elementwise float kernels pass 16, one 64-byte cache line, so no two threads write
// the same line); a thread whose run is empty is not called.
template <typename Body>
void SplitOnThreads(int64_t threads, int64_t count, int64_t align, const Body &body) {
  const int64_t share = ((count + threads - 1) / threads + align - 1) / align * align;
  RunOnThreads(threads, [&](int64_t t) {
    const int64_t begin = t * share < count ? t * share : count;
    const int64_t end = begin + share < count ? begin + share : count;
    if (begin < end) body(t, begin, end);
  });
}

// exp(x) without branches, so loops calling it vectorise: Cephes' expf (range reduction by ln 2 in two parts, a
// degree-6 polynomial; about 1 ulp). Arguments below -87.3 give exactly 0 (so attention's -1e4 padding bias drops a
// key exactly); arguments above 88 give exp(88).
inline float Exp(float x) {
  const float below = x < -87.3f ? 0.0f : 1.0f;
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;                               // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;   // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;   // x - n ln 2, ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n; -126 <= n <= 127 here
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale * below;
}

// The keyed dropout mask of src.engine.trainer.StepDropout: element (r, c) of a tensor viewed as rows by its last
// axis is kept when the wrapped 32-bit product of row r's and column c's odd keys, read as a signed int32, is below
// `threshold` (keep_prob * 2^32 - 2^31).
inline bool Kept(int32_t row_key, int32_t column_key, int32_t threshold) {
  return static_cast<int32_t>(static_cast<uint32_t>(row_key) * static_cast<uint32_t>(column_key)) < threshold;
}

}  // namespace native
