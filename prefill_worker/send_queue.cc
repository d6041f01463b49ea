#include "prefill_worker/send_queue.h"

#include <algorithm>
#include <utility>

namespace tandem::prefill_worker {

SendQueue::SendQueue(int threads) {
  for (int i = 0; i < std::max(threads, 1); ++i) threads_.emplace_back([this] { Work(); });
}

SendQueue::~SendQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void SendQueue::Push(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

void SendQueue::Work() {
  for (;;) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      // Woken by a job or the owner's stop; the bound only keeps the rule
      // that every wait has a deadline (an idle thread just waits again).
      const bool ready = mu_.AwaitWithDeadline(
          absl::Condition(
              +[](SendQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->stopping_ || !q->jobs_.empty(); },
              this),
          absl::Now() + absl::Seconds(1));
      if (!ready) continue;
      if (jobs_.empty()) return;  // stopping, and nothing left to run
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace tandem::prefill_worker
