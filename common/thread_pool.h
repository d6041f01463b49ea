// A fork-join thread pool for data-parallel kernels.
//
//   ThreadPool pool(ThreadPool::Options{});            // one thread per core
//   pool.ParallelFor(rows, [&](int64_t r) { ... });    // blocks until all done
//
// The calling thread takes part in the work, so a pool of N threads starts
// N - 1 workers. Work items must not depend on which thread runs them: kernels
// split work by output element, never by reduction, so results are identical
// for any thread count (the engine's batch invariance relies on this).
//
// Thread safety: ParallelFor may be called by one thread at a time (the
// engine thread that owns the backend). The destructor stops and joins every
// worker.
#ifndef TANDEM_COMMON_THREAD_POOL_H_
#define TANDEM_COMMON_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace tandem {

class ThreadPool {
 public:
  struct Options {
    // Threads that run work, including the caller of ParallelFor.
    // Default: 0, meaning std::thread::hardware_concurrency().
    int num_threads = 0;
  };

  explicit ThreadPool(const Options& options);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n), spread over the pool; returns when all
  // have finished. `fn` must not call ParallelFor.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn);

 private:
  void WorkerLoop();
  void RunItems();

  std::vector<std::thread> workers_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int busy_workers_ ABSL_GUARDED_BY(mu_) = 0;
  // The current job; written by the caller before generation_ moves on and
  // read by workers after they observe the new generation (ordered by mu_).
  const absl::FunctionRef<void(int64_t)>* job_fn_ = nullptr;
  int64_t job_size_ = 0;
  std::atomic<int64_t> next_item_{0};
};

}  // namespace tandem

#endif  // TANDEM_COMMON_THREAD_POOL_H_
