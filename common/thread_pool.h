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
// Between jobs, workers (and the caller, waiting for them) spin for up to
// `spin_us` before sleeping on the mutex: a forward pass issues one
// ParallelFor per op, tens of microseconds apart, and a futex wake-up per op
// cost more than the small ops themselves. A worker idle for longer (between
// steps) sleeps, so an idle engine takes no CPU.
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
    // How long an idle worker polls for the next job, and the caller for the
    // workers to finish, before blocking. Default: 100 (microseconds); 0
    // blocks at once.
    int spin_us = 100;
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
  // Polls until pred() or spin_us passes; returns pred()'s last value.
  template <typename Pred>
  bool Spin(Pred pred) const;

  const int spin_us_;
  std::vector<std::thread> workers_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Moved on (under mu_, so sleeping workers re-check) to start a job; read
  // without mu_ by spinning workers.
  std::atomic<uint64_t> generation_{0};
  // Workers still in the current job; the last one out takes mu_ so a
  // sleeping caller re-checks.
  std::atomic<int> busy_workers_{0};
  // The current job; written by the caller before generation_ moves on
  // (release) and read by workers after they observe it (acquire).
  const absl::FunctionRef<void(int64_t)>* job_fn_ = nullptr;
  int64_t job_size_ = 0;
  std::atomic<int64_t> next_item_{0};
};

}  // namespace tandem

#endif  // TANDEM_COMMON_THREAD_POOL_H_
