// A fixed set of threads that run the prefill worker's KV sends
// (TransferEngine::Write blocks until the decode worker confirms the bytes,
// up to its deadline) away from gRPC's callback threads and the engine
// thread, which must never block. Jobs run in arrival order, up to
// `threads` at a time.
//
//   SendQueue queue(4);
//   queue.Push([call] { call->SendBlocks(); });
//   ...
//   // ~SendQueue runs what is queued, then joins the threads.
//
// Thread safety: Push may be called from any thread, including a job.
#ifndef TANDEM_PREFILL_WORKER_SEND_QUEUE_H_
#define TANDEM_PREFILL_WORKER_SEND_QUEUE_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem::prefill_worker {

class SendQueue {
 public:
  // Starts `threads` threads (at least 1).
  explicit SendQueue(int threads);
  // Runs the jobs still queued, then stops and joins the threads. Jobs must
  // end by themselves (every send has a deadline).
  ~SendQueue();
  SendQueue(const SendQueue&) = delete;
  SendQueue& operator=(const SendQueue&) = delete;

  // Queues `job`; never blocks.
  void Push(std::function<void()> job);

 private:
  void Work();

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tandem::prefill_worker

#endif  // TANDEM_PREFILL_WORKER_SEND_QUEUE_H_
