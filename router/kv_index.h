// The router's prefix index: which worker holds which KV block, in which
// tier, fed by the workers' KV events (DESIGN.md, "KV events").
//
//   KvIndex index;
//   switch (index.Apply(batch)) {             // from PublishKvEvents
//     case KvIndex::Outcome::kNeedSnapshot:   // gap, or unknown worker
//       index.ApplySnapshot(FetchSnapshot(batch.worker_id()));
//   }
//   std::vector<KvIndex::PrefixMatch> m = index.Match(prompt_hashes);
//   index.RemoveWorker("decode-host-42");     // died: forget its blocks
//   index.AddInflight("prefill-7", hashes);   // assigned there, not computed yet
//
// Blocks are named by chained hashes (common/block_hash.h), so block i of a
// prompt can only be reused if blocks 0..i-1 are too: a worker's usable
// prefix is the longest run of leading hashes it holds. Match walks the
// prompt's hashes once, keeping the workers still matching; its cost is one
// table lookup per block plus a pass over the holders of each block whose
// holder set differs from the previous block's, independent of the index
// size. Blocks held by the same workers in the same tiers share one interned
// holder set, so a run of them (a system prompt cached on every worker, a
// conversation on its 1-3 workers) is walked by comparing pointers; the
// sharing also makes an indexed block cost one pointer instead of an inline
// holder list (69 instead of 117 bytes per block in bench/router_bench.cc).
//
// Sequence numbers: each worker's batches are numbered 1, 2, ... A batch
// that skips a number (the worker dropped events, or the stream broke) puts
// the worker into "awaiting snapshot": later batches are buffered (up to
// Options::max_buffered_batches) until ApplySnapshot replaces the worker's
// entries, then the buffered ones numbered after the snapshot are applied.
// A router that restarts starts empty and fills itself from snapshots as the
// workers register again.
//
// In-flight blocks: a request assigned to a worker will leave its prompt's
// blocks there, but the worker announces them (KV events) only once they are
// computed, which under load is seconds later. Requests sharing the prefix
// that arrive meanwhile would see no holder and be spread out, each
// computing the prefix again. AddInflight records the blocks as in flight to
// the worker; Match counts them as held in HBM (they will be when the
// request runs there) and reports them in PrefixMatch::inflight_blocks. An
// in-flight entry ends when the worker's Stored event for that block
// arrives, when the worker is removed or snapshotted, or after
// Options::inflight_ttl (a prefill that failed or was cancelled never
// announces its blocks; the TTL bounds how long the index believes it). A
// snapshot does not end them: it says what is computed, not what is
// assigned.
//
// Thread safety: all methods are thread-safe; Match takes a shared lock and
// may run concurrently with other Matches.
#ifndef TANDEM_ROUTER_KV_INDEX_H_
#define TANDEM_ROUTER_KV_INDEX_H_

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/container/node_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "tandem/v1/worker.pb.h"

namespace tandem::router {

class KvIndex {
 public:
  struct Options {
    // Batches kept per worker while it awaits a snapshot; beyond this the
    // oldest are dropped (the snapshot covers them anyway unless it is
    // older). Default: 64.
    size_t max_buffered_batches = 64;
    // How long a block recorded by AddInflight counts as held by its worker
    // if the worker never announces it. Long enough for a request queued
    // behind an overloaded prefill worker; a stale entry costs at most one
    // misplaced request per prefix. 0 turns in-flight counting off.
    // Default: 30 s.
    absl::Duration inflight_ttl = absl::Seconds(30);
    // The clock the TTL runs on (tests). Default: absl::Now.
    std::function<absl::Time()> clock = [] { return absl::Now(); };
  };

  enum class Outcome {
    kApplied,       // in order: applied
    kStale,         // already covered (duplicate or older than the snapshot)
    kNeedSnapshot,  // gap or unknown worker: call ApplySnapshot for it
    kBuffered,      // awaiting a snapshot: kept for after it
  };

  // A worker's reusable prefix for one prompt, without naming the worker.
  struct PrefixStats {
    // Leading blocks held in some tier.
    int32_t blocks = 0;
    // Of those, how many are in each tier at best (a block held in HBM and
    // DRAM counts as HBM): index by tandem::v1::KvTier (1 HBM, 2 DRAM, 3 SSD).
    int32_t tier_blocks[4] = {0, 0, 0, 0};
    // Index of the prefix's first block that is not in HBM (blocks when all
    // are): blocks [first_lower_block, blocks) are what the worker would
    // load from its lower tiers (some may be in HBM again, interleaved).
    int32_t first_lower_block = 0;
    // Of `blocks`, those only in flight to the worker (AddInflight, not yet
    // announced); they are counted in tier_blocks[KV_TIER_HBM].
    int32_t inflight_blocks = 0;
  };

  // A worker's reusable prefix, named by its id (Match).
  struct PrefixMatch : PrefixStats {
    std::string worker_id;
  };

  // A worker's reusable prefix, named by its slot (MatchSlots, SlotOf).
  struct SlotMatch : PrefixStats {
    uint32_t slot = 0;
  };

  // MatchSlots' answer. The slots name the same workers as SlotOf's answers
  // given with the same slot_epoch.
  struct SlotMatches {
    uint64_t slot_epoch = 0;
    std::vector<SlotMatch> matches;  // order unspecified
  };

  // SlotOf's answer for a worker the index has no slot for.
  static constexpr uint32_t kNoSlot = UINT32_MAX;

  struct Stats {
    size_t workers = 0;
    size_t blocks = 0;      // distinct hashes
    size_t entries = 0;     // (hash, worker) pairs
    int64_t gaps = 0;       // kNeedSnapshot answers
    int64_t snapshots = 0;  // ApplySnapshot calls
    // (hash, worker) pairs held in each tier, by tandem::v1::KvTier (1 HBM,
    // 2 DRAM, 3 SSD; a block in two tiers counts in both).
    int64_t tier_entries[4] = {0, 0, 0, 0};
    // (hash, worker) pairs in flight (AddInflight), expired ones included
    // until they are swept.
    size_t inflight_entries = 0;
    // Distinct holder sets: blocks held by the same workers in the same
    // tiers share one.
    size_t holder_sets = 0;
  };

  KvIndex() : KvIndex(Options{}) {}
  explicit KvIndex(Options options) : options_(options) {}

  // Applies one batch (events in order: Stored adds the tier, Removed takes
  // it away). A worker's first batch (or one after RemoveWorker) needs a
  // snapshot unless it starts at event 1. Batches number events
  // (first_sequence_number .. sequence_number, engine/kv_events.h).
  Outcome Apply(const tandem::v1::KvEventBatch& batch);

  // Replaces everything known about snapshot.worker_id() with the snapshot
  // (its Stored events; others are ignored), then applies buffered batches
  // that end after snapshot.sequence_number().
  void ApplySnapshot(const tandem::v1::KvEventBatch& snapshot);

  // Forgets a worker and all its blocks.
  void RemoveWorker(const std::string& worker_id);

  // Whether the index has an entry for the worker.
  bool Known(const std::string& worker_id) const;

  // Whether the worker is waiting for a snapshot (for the router's fetch
  // loop).
  bool AwaitingSnapshot(const std::string& worker_id) const;

  // Records `hashes` (a prompt's chained block hashes, or a run of them) as
  // in flight to `worker_id`: Match counts them as held there until the
  // worker's Stored event for each (in any tier, also from a snapshot),
  // RemoveWorker, RemoveInflight, or Options::inflight_ttl. Hashes the worker
  // already holds are skipped. A worker unknown to the index gets an entry
  // that does not count as Known until its first KV event.
  void AddInflight(const std::string& worker_id, absl::Span<const BlockHash> hashes);

  // Ends the in-flight entries of `hashes` on `worker_id` (the request
  // failed or was cancelled before computing them). Optional: the TTL ends
  // them anyway.
  void RemoveInflight(const std::string& worker_id, absl::Span<const BlockHash> hashes);

  // Every worker holding (or with in flight) at least the first of
  // `hashes`, with its matched prefix. Order unspecified.
  std::vector<PrefixMatch> Match(absl::Span<const BlockHash> hashes) const;

  // Match without the ids, for a caller that scores every worker per
  // request (router/placement.h): each worker is named by a small integer
  // slot, so the caller can look matches up in an array instead of hashing
  // 1,000 ids. `out` is overwritten (its capacity is reused).
  void MatchSlots(absl::Span<const BlockHash> hashes, SlotMatches* out) const;

  // The slot of `worker_id` (kNoSlot when the index has none: it holds and
  // has in flight nothing) and, in *slot_epoch, the epoch that pairing
  // holds in. Slots are given to workers when they first appear and taken
  // back by RemoveWorker; the epoch grows each time a slot is given, so
  // while it stays the same, a cached (worker, slot) pairing stays right (a
  // slot taken back and not given again holds nothing).
  uint32_t SlotOf(const std::string& worker_id, uint64_t* slot_epoch) const;

  Stats stats() const;

 private:
  struct Holder {
    uint32_t slot;
    uint8_t tiers;  // bit (1 << tier)
  };
  using Holders = absl::InlinedVector<Holder, 2>;
  // The holders of one or more blocks, sorted by slot: blocks held by the
  // same workers in the same tiers share one set (interned in sets_), so a
  // chain of blocks on the same workers costs one pointer per block, and
  // Match tells a run of such blocks by comparing pointers.
  struct HolderSet {
    Holders holders;
    uint64_t fingerprint = 0;   // sum of HolderPrint over the holders
    mutable uint32_t refs = 0;  // blocks pointing here
  };
  // Lookup of a set by its content without building one.
  struct HolderSetKey {
    absl::Span<const Holder> holders;
    uint64_t fingerprint;
  };
  struct HolderSetHash {
    using is_transparent = void;
    size_t operator()(const HolderSet& s) const { return s.fingerprint; }
    size_t operator()(const HolderSetKey& k) const { return k.fingerprint; }
  };
  struct HolderSetEq {
    using is_transparent = void;
    static absl::Span<const Holder> Of(const HolderSet& s) { return s.holders; }
    static absl::Span<const Holder> Of(const HolderSetKey& k) { return k.holders; }
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      const absl::Span<const Holder> x = Of(a), y = Of(b);
      return x.size() == y.size() &&
             std::equal(x.begin(), x.end(), y.begin(), [](const Holder& p, const Holder& q) {
               return p.slot == q.slot && p.tiers == q.tiers;
             });
    }
  };

  struct Worker {
    std::string id;
    uint64_t next_sequence = 1;
    bool awaiting_snapshot = false;
    bool live = false;  // slot in use
    // Made by AddInflight before any KV event: not Known, and its first
    // batch is treated as a new worker's.
    bool inflight_only = false;
    std::deque<tandem::v1::KvEventBatch> buffered;
    absl::flat_hash_set<BlockHash> hashes;
  };

  // An in-flight (hash, worker) pair.
  struct Pending {
    uint32_t slot;
    absl::Time expires;
  };
  using Pendings = absl::InlinedVector<Pending, 1>;
  // One AddInflight call, for expiring its entries in TTL order.
  struct InflightRecord {
    absl::Time expires;
    uint32_t slot;
    std::vector<BlockHash> hashes;
  };

  class Walker;  // Match's walk over a prompt's blocks (kv_index.cc)

  uint32_t SlotFor(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the in-flight entry of (hash, slot), if any; with `expired_by`,
  // only one that expires by then.
  void ErasePending(uint32_t slot, BlockHash hash, absl::Time expired_by = absl::InfiniteFuture())
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireInflight(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearInflight(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyEvents(uint32_t slot, const tandem::v1::KvEventBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetTier(uint32_t slot, BlockHash hash, int tier, bool present) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearWorker(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Points block `hash` (now at `old`, or nullptr) at the set holding
  // scratch_ (none when it is empty), releasing `old`.
  void Repoint(BlockHash hash, const HolderSet* old, uint64_t fingerprint) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MatchLocked(absl::Span<const BlockHash> hashes, std::vector<SlotMatch>* out) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<BlockHash, const HolderSet*> blocks_ ABSL_GUARDED_BY(mu_);
  absl::node_hash_set<HolderSet, HolderSetHash, HolderSetEq> sets_ ABSL_GUARDED_BY(mu_);
  Holders scratch_ ABSL_GUARDED_BY(mu_);              // a set being changed (SetTier, ClearWorker)
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);  // by slot
  absl::flat_hash_map<std::string, uint32_t> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  uint64_t slot_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // SlotOf
  size_t entries_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t gaps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t snapshots_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tier_entries_[4] ABSL_GUARDED_BY(mu_) = {0, 0, 0, 0};
  absl::flat_hash_map<BlockHash, Pendings> inflight_ ABSL_GUARDED_BY(mu_);
  std::deque<InflightRecord> inflight_records_ ABSL_GUARDED_BY(mu_);  // by expiry
  size_t inflight_entries_ ABSL_GUARDED_BY(mu_) = 0;
  size_t inflight_only_workers_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_KV_INDEX_H_
