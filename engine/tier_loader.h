// Copies KV blocks from the DRAM/SSD tiers (engine/kv_tiers.h) into pool blocks on one owned
// background thread, so that promoting a prompt's prefix overlaps the engine's
// compute (KvManager, "Tiers").
//
//   TierLoader loader(tiers, {.max_queued_jobs = 64});
//   TierLoader::Job job{.id = seq_id, .loads = {{hash, tokens, block_bytes}, ...}};
//   if (!loader.Submit(std::move(job))) {  // queue full: `job` is untouched
//     TierLoader::Result r = TierLoader::Run(tiers, copier, job, hook, {});  // copy on this thread
//   }
//   ... each engine step: for (const TierLoader::Result& r : loader.Poll()) { ... }
//   loader.Cancel(seq_id);  // before the job's destination blocks are reused
//
// A job is one sequence's loads, in position order. The thread runs them in
// order (KvTiers::Load into the destination span) and stops at the first
// failure (a miss: the block left DRAM/SSD since the lookup; a corrupt SSD
// value): a sequence can only use a contiguous prefix, so the blocks after a
// failed one are not worth loading. Result::loaded says how many succeeded.
//
// Ownership of the destination memory: from Submit until the job's Result is
// returned by Poll, or until Cancel returns, only the loader writes into the
// job's spans, and the caller must neither read nor free them. Cancel drops a
// queued job, or asks the running one to stop after its current block and
// waits for that block's copy to end; either way no write into the job's
// spans happens after Cancel returns, and its Result is never reported.
//
// Bounded: at most max_queued_jobs jobs wait (the running one not counted);
// Submit returns false when the queue is full and the caller copies itself.
//
// Shutdown: the destructor drops queued jobs, stops the running one after its
// current block, and joins the thread.
//
// Thread safety: all methods may be called from any thread, but the intended
// user is the engine thread; the hook runs on the loader thread (or on the
// thread calling Run). std::mutex/std::condition_variable, not absl::Mutex:
// see kvstore/README.md (TSan).
#ifndef TANDEM_ENGINE_TIER_LOADER_H_
#define TANDEM_ENGINE_TIER_LOADER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "engine/kv_tiers.h"
#include "engine/pool_copier.h"

namespace tandem::engine {

class TierLoader {
 public:
  // Called before each block's copy with the job id, the load's index in the
  // job and its hash, on the thread doing the copy. For tests: make a load
  // fail deterministically (erase or corrupt the block in the store) or hold
  // it (block until released). A hook that blocks must not wait for a thread
  // that is inside Cancel or the destructor (they wait for the hook).
  using Hook = std::function<void(int64_t job_id, int32_t index, BlockHash hash)>;

  struct Options {
    // Most jobs waiting in the queue. Must be >= 1. Default: 64.
    int32_t max_queued_jobs = 64;
    // See Hook. Default: empty.
    Hook hook;
  };

  struct Load {
    BlockHash hash = 0;
    std::vector<int32_t> tokens;  // the block's tokens (block_tokens of the tiers)
    absl::Span<uint8_t> dst;      // the pool block (backend memory), payload_bytes of the tiers
  };

  struct Job {
    int64_t id = 0;
    std::vector<Load> loads;
  };

  struct Result {
    int64_t id = 0;
    int32_t requested = 0;  // loads in the job
    int32_t loaded = 0;     // leading loads that succeeded
    int32_t dram = 0;       // of those, found in DRAM
    int32_t ssd = 0;        // ... on SSD or in the shared store
    absl::Status error;     // the first failure; OK when loaded == requested
  };

  // `tiers` is borrowed and must outlive the loader; `copier` (this
  // thread's own) moves each loaded block into the pool. Starts the thread.
  TierLoader(KvTiers* tiers, Options options, std::unique_ptr<PoolCopier> copier);
  ~TierLoader();
  TierLoader(const TierLoader&) = delete;
  TierLoader& operator=(const TierLoader&) = delete;

  // Queues a job (moved from only when queued); false, with nothing queued, when max_queued_jobs wait
  // already (or after shutdown began). REQUIRES: no live job has this id.
  bool Submit(Job&& job);

  // See "Ownership" above. No-op for an unknown or finished-and-polled id; a
  // finished but unpolled Result is dropped.
  void Cancel(int64_t id);

  // Results of the jobs finished since the last Poll, in completion order.
  std::vector<Result> Poll();

  // Waits until a Result is ready to Poll or `deadline` passes; true if one
  // is ready.
  bool WaitForResult(absl::Time deadline);

  // Jobs submitted whose Result has not been returned by Poll (nor cancelled).
  int32_t outstanding() const;

  // Runs `job` on the calling thread (the synchronous path): the same loads,
  // hook and stop-at-first-failure as the loader thread, through the calling
  // thread's `copier`. `stop`, if set, is asked before each load; true ends
  // the job there.
  static Result Run(KvTiers* tiers, PoolCopier* copier, const Job& job, const Hook& hook,
                    const std::function<bool()>& stop);

 private:
  void Loop();

  KvTiers* const tiers_;
  const Options options_;
  const std::unique_ptr<PoolCopier> copier_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // loader: a job or stop
  std::condition_variable done_cv_;  // a job ended (Result ready or cancelled)
  std::deque<Job> queue_;            // guarded by mu_
  std::optional<int64_t> active_;    // guarded by mu_; the job being run
  bool cancel_active_ = false;       // guarded by mu_
  std::vector<Result> done_;         // guarded by mu_
  bool stop_ = false;                // guarded by mu_

  std::thread thread_;  // joined by the destructor
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_TIER_LOADER_H_
