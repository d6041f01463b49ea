// Prefetch of a prompt's lower-tier blocks SSD -> DRAM ahead of admission, on
// one background thread, so that by the time the engine admits the request
// its tier copy into the pool (KvManager::StartSequence, asynchronous by default) reads DRAM.
//
//   Prefetcher::Options options;
//   options.model_id = config.model_id;
//   options.block_tokens = block_size;
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<Prefetcher> prefetcher, Prefetcher::Create(options, store));
//   prefetcher->Enqueue(prompt_tokens);  // in the RPC handler; never blocks
//   // or, with the router's hint (tandem.v1.PrefetchHint):
//   prefetcher->EnqueueHashes(hint_hashes, hint_first_block, prompt_tokens);
//
// Enqueue hashes nothing and waits for nothing: it copies the prompt into a
// bounded queue (a full queue drops the request's prefetch: the engine then
// reads SSD itself) and returns. The thread takes requests in arrival order,
// hashes the full blocks (common/block_hash.h) and calls
// TieredStore::Promote on each, skipping blocks the tiers do not hold (they
// may be in the engine's pool, which this class cannot see).
//
// EnqueueHashes is the hinted entry: the router, which knows from its index
// which of the prompt's blocks this worker holds in lower tiers (or a shared
// store holds), names them; the thread hashes nothing and promotes exactly
// those hashes, in order, each checked against its block's tokens in the
// prompt (a stale or wrong hint costs a miss, never a wrong block). Stats
// count hinted and prompt-based requests apart. A request whose
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
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "common/mutex.h"
#include "kvstore/tiered_store.h"

namespace tandem::kvstore {

struct PrefetcherStats {
  int64_t requests = 0;         // accepted by Enqueue or EnqueueHashes
  int64_t dropped = 0;          // refused (queue full, stopped, nothing to do)
  int64_t expired = 0;          // abandoned at the deadline
  int64_t promoted_blocks = 0;  // read from SSD (or the remote store) into DRAM
  int64_t dram_blocks = 0;      // already in DRAM
  // Of the accepted requests, those named by the router's hint
  // (EnqueueHashes) and those whose prompt the prefetcher hashed (Enqueue).
  int64_t hinted_requests = 0;
  int64_t prompt_requests = 0;
  // Of promoted_blocks and dram_blocks, those of hinted requests.
  int64_t hinted_promoted_blocks = 0;
  int64_t hinted_dram_blocks = 0;
};

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
    // Called with the stats after each change (a request queued or dropped,
    // a prefetch finished), in order, from the enqueuing thread or the
    // prefetch thread; for metrics. Must be cheap and must not call the
    // prefetcher. Default: empty.
    std::function<void(const PrefetcherStats&)> on_stats;
  };

  using Stats = PrefetcherStats;

  // InvalidArgument on a missing store, model id, or mismatched block_tokens.
  static absl::StatusOr<std::unique_ptr<Prefetcher>> Create(const Options& options, TieredStore* store);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Queues a prefetch of `prompt_tokens`' full blocks; false when it was
  // dropped (queue full, stopped, or shorter than one block).
  bool Enqueue(absl::Span<const int32_t> prompt_tokens);

  // Queues a prefetch of exactly `hashes`, hashes[i] naming block
  // first_block + i of `prompt_tokens` (block b covers tokens
  // [b * block_tokens, (b + 1) * block_tokens)); hashes past the prompt's
  // full blocks are ignored. Nothing is hashed. False when it was dropped
  // (queue full, stopped, first_block < 0, or no block left).
  bool EnqueueHashes(absl::Span<const BlockHash> hashes, int32_t first_block,
                     absl::Span<const int32_t> prompt_tokens);

  // Waits until the queue is empty and the thread idle, or the deadline; for
  // tests and benchmarks. False if the deadline passed first.
  bool WaitIdle(absl::Time deadline);

  Stats stats() const;

 private:
  struct Job {
    // The blocks' tokens: from the prompt's start (prompt-based) or from
    // block first_block (hinted).
    std::vector<int32_t> tokens;
    // Hinted: the blocks to promote, parallel to `tokens`' blocks.
    std::vector<BlockHash> hashes;
    bool hinted = false;
    absl::Time deadline;
  };

  Prefetcher(const Options& options, TieredStore* store);
  void Loop();
  void Run(const Job& job);
  // Queues `job` (or counts it dropped); then reports the stats.
  bool Push(Job job, bool refuse);
  // Calls Options::on_stats with the current stats, in order.
  void ReportStats();

  const Options options_;
  TieredStore* const store_;  // borrowed

  mutable StdMutex mu_;
  std::condition_variable work_cv_;  // Loop: work or stop
  std::condition_variable idle_cv_;  // WaitIdle
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  StdMutex report_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // orders on_stats calls

  std::thread thread_;  // joined by the destructor
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_PREFETCHER_H_
