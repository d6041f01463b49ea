// The counters behind TransferEngine::stats(). Internal to transfer/.
// Thread safe: the progress thread and Write's callers add, any thread reads.
//
//   stats.Add([&](TransferStats& s) { s.bytes_received += bytes; });
//   TransferStats now = stats.Get();
#ifndef TANDEM_TRANSFER_INTERNAL_STATS_H_
#define TANDEM_TRANSFER_INTERNAL_STATS_H_

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "transfer/transfer_engine.h"

namespace tandem::transfer::internal {

class StatsCounters {
 public:
  // Runs `update` on the counters under the lock; it must be quick.
  void Add(absl::FunctionRef<void(TransferStats&)> update) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    update(stats_);
  }

  TransferStats Get() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

 private:
  mutable absl::Mutex mu_;
  TransferStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_STATS_H_
