// KV events: which block hashes a worker holds, in which tier, as a stream
// with sequence numbers (DESIGN.md, "KV events"), plus a snapshot of the
// whole state for a router that missed events or restarted.
//
//   KvEventLog log;
//   engine_options.kv_events = &log;               // the engine appends
//   ...
//   KvEventLog::Batch batch = log.Drain(256);      // the first router's publisher
//   KvEventLog::ConsumerId second = log.AddConsumer();
//   KvEventLog::Batch b2 = log.Drain(second, 256);  // a second router's publisher
//   KvEventLog::Snapshot snap = log.TakeSnapshot();  // for KvSnapshot RPCs
//
// Sequence numbers number events, not batches: the log's events are 1, 2, 3,
// ... and a batch carries a contiguous run first_sequence_number ..
// sequence_number. Each consumer (one per router a worker reports to) has its
// own cursor into the same events, so any number of routers see the same
// numbering, and a snapshot is the same for all of them: it carries the number
// of the last event appended, all of which it includes. A receiver applies a
// batch whose first number follows the last one it applied; one that starts
// later is a gap (it asks for a snapshot); after a snapshot numbered N it
// applies every batch that ends after N, whole — replaying a run of
// Stored/Removed events onto a state that already includes its start changes
// nothing, since the last event per hash decides.
//
// Memory: events are kept until every consumer has drained them, and never
// more than `max_pending` of them: beyond that the oldest are dropped, and a
// consumer that had not drained them sees its next batch start later than its
// cursor (a gap), instead of the log growing without bound while a router is
// away.
//
// Thread safety: all methods are thread-safe. The engine thread appends;
// publisher threads drain; RPC threads take snapshots.
#ifndef TANDEM_ENGINE_KV_EVENTS_H_
#define TANDEM_ENGINE_KV_EVENTS_H_

#include <cstdint>
#include <deque>
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
    uint64_t first_sequence_number = 0;  // of events[0]; 0 when events is empty
    uint64_t sequence_number = 0;        // of events.back(); 0 when events is empty
    std::vector<KvEvent> events;
  };
  struct Snapshot {
    uint64_t sequence_number = 0;  // of the last event appended (all included)
    std::vector<KvEvent> stored;   // every held (hash, tier), kind kStored
  };
  using ConsumerId = int32_t;
  // Exists from construction, reading from the first event: the consumer of
  // a worker with one router (and of tests).
  static constexpr ConsumerId kFirstConsumer = 0;

  // Default: at most 1,000,000 kept events (24 MB).
  explicit KvEventLog(size_t max_pending = 1'000'000);

  void Stored(BlockHash hash, KvTier tier);
  void Removed(BlockHash hash, KvTier tier);

  // A new consumer whose first batch starts after the events appended so
  // far (its router takes a snapshot to learn those).
  ConsumerId AddConsumer();
  // Forgets a consumer (its router went away); its undrained events no
  // longer hold memory. Unknown ids are ignored.
  void RemoveConsumer(ConsumerId consumer);

  // Up to `max_events` of the consumer's undrained events as its next batch
  // (empty if none, or if the consumer is unknown).
  Batch Drain(ConsumerId consumer, size_t max_events);
  Batch Drain(size_t max_events) { return Drain(kFirstConsumer, max_events); }
  Snapshot TakeSnapshot() const;

  // Hashes held right now (any tier); for tests and metrics.
  size_t num_held() const;

 private:
  void Append(KvEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the events every consumer has drained.
  void Trim() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_pending_;
  mutable absl::Mutex mu_;
  // Events first_kept_ .. first_kept_ + kept_.size() - 1, in order.
  std::deque<KvEvent> kept_ ABSL_GUARDED_BY(mu_);
  uint64_t first_kept_ ABSL_GUARDED_BY(mu_) = 1;
  // consumer -> number of the next event it will drain.
  absl::flat_hash_map<ConsumerId, uint64_t> cursors_ ABSL_GUARDED_BY(mu_);
  ConsumerId next_consumer_ ABSL_GUARDED_BY(mu_) = kFirstConsumer + 1;
  // hash -> bit mask of tiers (1 << tier) holding it.
  absl::flat_hash_map<BlockHash, uint32_t> held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_KV_EVENTS_H_
