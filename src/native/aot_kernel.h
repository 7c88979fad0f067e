// Helpers shared by the kernels of src/native (MindSpore `aot` Custom operators on CPU): element counts, the dtype
// checks, running a task on several threads, and the keep decision of the keyed dropout masks.
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

// The keyed dropout mask of src.engine.trainer.StepDropout: element (r, c) of a tensor viewed as rows by its last
// axis is kept when the wrapped 32-bit product of row r's and column c's odd keys, read as a signed int32, is below
// `threshold` (keep_prob * 2^32 - 2^31).
inline bool Kept(int32_t row_key, int32_t column_key, int32_t threshold) {
  return static_cast<int32_t>(static_cast<uint32_t>(row_key) * static_cast<uint32_t>(column_key)) < threshold;
}

// rows [first, last) of thread t when `rows` are shared among `threads` in contiguous runs
inline void ThreadRows(int64_t t, int64_t threads, int64_t rows, int64_t *first, int64_t *last) {
  const int64_t share = (rows + threads - 1) / threads;
  *first = t * share < rows ? t * share : rows;
  *last = *first + share < rows ? *first + share : rows;
}

}  // namespace native
