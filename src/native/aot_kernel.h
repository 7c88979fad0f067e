// Helpers shared by the kernels of src/native (MindSpore `aot` Custom operators on CPU): element counts, the dtype
// check and running a task on several threads.
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

inline bool AllFloat32(int count, const char **dtypes) {
  for (int i = 0; i < count; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
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

}  // namespace native
