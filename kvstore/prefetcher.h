// Prefetch of a prompt's lower-tier blocks SSD -> DRAM ahead of admission, on
// one background thread, so that by the time the engine admits the request
// its synchronous tier copy (KvManager::StartSequence) is a DRAM hit.
//
//   Prefetcher::Options options;
//   options.model_id = config.model_id;
//   options.block_tokens = block_size;
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<Prefetcher> prefetcher, Prefetcher::Create(options, store));
//   prefetcher->Enqueue(prompt_tokens);  // in the RPC handler; never blocks
//
// Enqueue hashes nothing and waits for nothing: it copies the prompt into a
// bounded queue (a full queue drops the request's prefetch: the engine then
// reads SSD itself) and returns. The thread takes requests in arrival order,
// hashes the full blocks (common/block_hash.h) and calls
// TieredStore::Promote on each, skipping blocks the tiers do not hold (they
// may be in the engine's pool, which this class cannot see). A request whose
// prefetch has not finished `deadline` after Enqueue is abandoned (the engine
// has most likely admitted it by then), as is anything past `max_blocks`.
//
// Ownership: the store is borrowed and must outlive the prefetcher. The
// destructor stops the thread (queued work is dropped) and joins it.
// Thread safety: Enqueue and stats may be called from any thread.
#ifndef TANDEM_KVSTORE_PREFETCHER_H_
#define TANDEM_KVSTORE_PREFETCHER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvstore/tiered_store.h"

namespace tandem::kvstore {

class Prefetcher {
 public:
  struct Options {
    // The model id of the block hashes (as the engine's). Default: "" (must
    // be set). Fixed.
    std::string model_id;
    // Tokens per block; must equal the store's block_tokens. Default: 0 (must
    // be set). Fixed.
    int32_t block_tokens = 0;
    // Most requests waiting for the thread; Enqueue drops beyond this.
    // Default: 64.
    int32_t max_queued = 64;
    // A request's prefetch is abandoned this long after Enqueue.
    // Default: 2 s.
    absl::Duration deadline = absl::Seconds(2);
    // Most blocks promoted for one request. Default: 4096.
    int32_t max_blocks = 4096;
  };

  struct Stats {
    int64_t requests = 0;         // accepted by Enqueue
    int64_t dropped = 0;          // refused by Enqueue (queue full or stopped)
    int64_t expired = 0;          // abandoned at the deadline
    int64_t promoted_blocks = 0;  // read from SSD (or the remote store) into DRAM
    int64_t dram_blocks = 0;      // already in DRAM
  };

  // InvalidArgument on a missing store, model id, or mismatched block_tokens.
  static absl::StatusOr<std::unique_ptr<Prefetcher>> Create(const Options& options, TieredStore* store);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Queues a prefetch of `prompt_tokens`' full blocks; false when it was
  // dropped (queue full, stopped, or shorter than one block).
  bool Enqueue(absl::Span<const int32_t> prompt_tokens);

  // Waits until the queue is empty and the thread idle, or the deadline; for
  // tests and benchmarks. False if the deadline passed first.
  bool WaitIdle(absl::Time deadline);

  Stats stats() const;

 private:
  struct Job {
    std::vector<int32_t> tokens;
    absl::Time deadline;
  };

  Prefetcher(const Options& options, TieredStore* store);
  void Loop();
  void Run(const Job& job);

  const Options options_;
  TieredStore* const store_;  // borrowed

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // Loop: work or stop
  std::condition_variable idle_cv_;  // WaitIdle
  std::deque<Job> queue_;            // guarded by mu_
  bool busy_ = false;                // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  Stats stats_;                      // guarded by mu_

  std::thread thread_;  // joined by the destructor
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_PREFETCHER_H_
