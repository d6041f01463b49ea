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
      // No deadline: an idle thread has nothing to wait for but a job or the
      // owner's stop, and the destructor always brings the latter.
      mu_.Await(absl::Condition(
          +[](SendQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->stopping_ || !q->jobs_.empty(); },
          this));
      if (jobs_.empty()) return;  // stopping, and nothing left to run
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace tandem::prefill_worker
