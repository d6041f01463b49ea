// KV events: which block hashes a worker holds, in which tier, as a stream
// with sequence numbers (DESIGN.md, "KV events"), plus a snapshot of the
// whole state for a router that missed events or restarted.
//
//   KvEventLog log;
//   engine_options.kv_events = &log;            // the engine appends
//   ...
//   KvEventLog::Batch batch = log.Drain(256);   // publisher thread
//   if (!batch.events.empty()) Send(batch);     // seq numbers 1, 2, 3, ...
//   KvEventLog::Snapshot snap = log.TakeSnapshot();  // for KvSnapshot RPCs
//
// Sequence numbers: each drained batch takes the next number (1, 2, ...). A
// snapshot carries the number of the last batch drained; the events still
// pending when it was taken are already in it, and since replaying a suffix of
// Stored/Removed events onto a state that includes them changes nothing (the
// last event per hash decides), a receiver can apply every batch numbered
// after the snapshot's.
//
// Thread safety: all methods are thread-safe. The engine thread appends; the
// publisher thread drains; RPC threads take snapshots.
#ifndef TANDEM_ENGINE_KV_EVENTS_H_
#define TANDEM_ENGINE_KV_EVENTS_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/block_hash.h"

namespace tandem::engine {

// Where a block lives. Values match tandem.v1.KvTier.
enum class KvTier : int32_t { kHbm = 1, kDram = 2, kSsd = 3 };

struct KvEvent {
  enum class Kind { kStored, kRemoved };
  Kind kind = Kind::kStored;
  KvTier tier = KvTier::kHbm;
  BlockHash hash = 0;
};

class KvEventLog {
 public:
  struct Batch {
    uint64_t sequence_number = 0;  // 0 when events is empty
    std::vector<KvEvent> events;
  };
  struct Snapshot {
    uint64_t sequence_number = 0;  // of the last drained batch
    std::vector<KvEvent> stored;   // every held (hash, tier), kind kStored
  };

  // Default: at most 1,000,000 pending events; beyond that the oldest
  // pending events are dropped and the next batch skips a sequence number, so
  // a router notices the gap and asks for a snapshot instead of the log
  // growing without bound while no router listens.
  explicit KvEventLog(size_t max_pending = 1'000'000) : max_pending_(max_pending) {}

  void Stored(BlockHash hash, KvTier tier);
  void Removed(BlockHash hash, KvTier tier);

  // Up to `max_events` pending events as the next batch (empty if none).
  Batch Drain(size_t max_events);
  Snapshot TakeSnapshot() const;

  // Hashes held right now (any tier); for tests and metrics.
  size_t num_held() const;

 private:
  void Append(KvEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_pending_;
  mutable absl::Mutex mu_;
  std::vector<KvEvent> pending_ ABSL_GUARDED_BY(mu_);
  size_t pending_begin_ ABSL_GUARDED_BY(mu_) = 0;  // drained prefix of pending_
  uint64_t last_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  bool dropped_ ABSL_GUARDED_BY(mu_) = false;  // events were dropped since the last batch
  // hash -> bit mask of tiers (1 << tier) holding it.
  absl::flat_hash_map<BlockHash, uint32_t> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_KV_EVENTS_H_
