#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tandem {
namespace {

// Tells the core a spin-wait loop is running (frees the sibling
// hyperthread, saves power).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(const Options& options) : spin_us_(std::max(0, options.spin_us)) {
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

template <typename Pred>
bool ThreadPool::Spin(Pred pred) const {
  if (spin_us_ == 0) return pred();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
  for (;;) {
    // The clock is read once per 64 polls: it costs more than a poll.
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return pred();
  }
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
    if (!Spin([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
      absl::MutexLock lock(&mu_);
      struct WakeArgs {
        ThreadPool* pool;
        uint64_t seen;
      } args{this, seen};
      mu_.Await(absl::Condition(
          +[](WakeArgs* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return a->pool->stopping_ || a->pool->generation_.load(std::memory_order_acquire) != a->seen;
          },
          &args));
      if (stopping_) return;
    }
    seen = generation_.load(std::memory_order_acquire);
    RunItems();
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      absl::MutexLock lock(&mu_);  // releasing it re-checks a sleeping caller
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  job_fn_ = &fn;
  job_size_ = n;
  next_item_.store(0, std::memory_order_relaxed);
  busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);  // releasing it wakes sleeping workers
    generation_.fetch_add(1, std::memory_order_release);
  }
  RunItems();
  auto done = [this] { return busy_workers_.load(std::memory_order_acquire) == 0; };
  if (!Spin(done)) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::atomic<int>* busy) { return busy->load(std::memory_order_acquire) == 0; }, &busy_workers_));
  }
  job_fn_ = nullptr;
}

}  // namespace tandem
