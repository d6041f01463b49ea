#include "common/thread_pool.h"

#include <algorithm>

namespace tandem {

ThreadPool::ThreadPool(const Options& options) {
  int n = options.num_threads;
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(n - 1);
  for (int i = 0; i + 1 < n; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunItems() {
  for (;;) {
    const int64_t i = next_item_.fetch_add(1, std::memory_order_relaxed);
    if (i >= job_size_) return;
    (*job_fn_)(i);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      struct WakeArgs {
        ThreadPool* pool;
        uint64_t seen;
      } args{this, seen};
      mu_.Await(absl::Condition(
          +[](WakeArgs* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return a->pool->stopping_ || a->pool->generation_ != a->seen;
          },
          &args));
      if (stopping_) return;
      seen = generation_;
    }
    RunItems();
    absl::MutexLock lock(&mu_);
    --busy_workers_;
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    job_fn_ = &fn;
    job_size_ = n;
    next_item_.store(0, std::memory_order_relaxed);
    busy_workers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  RunItems();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* busy) { return *busy == 0; }, &busy_workers_));
  job_fn_ = nullptr;
}

}  // namespace tandem
