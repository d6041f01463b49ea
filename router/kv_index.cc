#include "router/kv_index.h"

#include <algorithm>

namespace tandem::router {
namespace {

// The number of a batch's first event (a batch without one holds a single
// number: sequence_number).
uint64_t FirstSequence(const tandem::v1::KvEventBatch& batch) {
  return batch.first_sequence_number() != 0 ? batch.first_sequence_number() : batch.sequence_number();
}
constexpr int kMaxTier = 3;
bool ValidTier(int tier) { return tier >= 1 && tier <= kMaxTier; }

// A holder's term in its set's fingerprint (a 64-bit mix of slot and tiers,
// splitmix64's finaliser): the sum over a set's holders does not depend on
// their order and changes by one term per changed holder.
uint64_t HolderPrint(uint32_t slot, uint8_t tiers) {
  uint64_t x = ((static_cast<uint64_t>(slot) << 8) | tiers) + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint32_t KvIndex::SlotFor(const std::string& worker_id) {
  auto it = slots_.find(worker_id);
  if (it != slots_.end()) return it->second;
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<uint32_t>(workers_.size());
    workers_.emplace_back();
  }
  Worker& w = workers_[slot];
  w = Worker{};
  w.id = worker_id;
  w.live = true;
  w.awaiting_snapshot = true;  // until a batch numbered 1 or a snapshot
  slots_.emplace(w.id, slot);
  ++slot_epoch_;  // a new (worker, slot) pairing: SlotOf's cached answers are stale
  return slot;
}

void KvIndex::SetTier(uint32_t slot, BlockHash hash, int tier, bool present) {
  if (!ValidTier(tier)) return;
  const uint8_t bit = static_cast<uint8_t>(1u << tier);
  auto it = blocks_.find(hash);
  const HolderSet* old = it == blocks_.end() ? nullptr : it->second;
  if (old == nullptr && !present) return;
  // The slot's place in the set (sorted by slot).
  const absl::Span<const Holder> held = old == nullptr ? absl::Span<const Holder>() : old->holders;
  const auto pos = std::lower_bound(held.begin(), held.end(), slot,
                                    [](const Holder& h, uint32_t s) { return h.slot < s; });
  const bool found = pos != held.end() && pos->slot == slot;
  const uint8_t before = found ? pos->tiers : 0;
  const uint8_t after = present ? static_cast<uint8_t>(before | bit) : static_cast<uint8_t>(before & ~bit);
  if (after == before) return;
  // The set this block moves to: the old one with the slot's holder changed.
  uint64_t fingerprint = old == nullptr ? 0 : old->fingerprint;
  if (found) fingerprint -= HolderPrint(slot, before);
  if (after != 0) fingerprint += HolderPrint(slot, after);
  scratch_.assign(held.begin(), held.end());
  const auto at = scratch_.begin() + (pos - held.begin());
  if (found && after != 0) {
    at->tiers = after;
  } else if (found) {
    scratch_.erase(at);
  } else {
    scratch_.insert(at, Holder{slot, after});
  }
  if (present) {
    ++tier_entries_[tier];
  } else {
    --tier_entries_[tier];
  }
  Worker& w = workers_[slot];
  if (!found) {
    w.hashes.insert(hash);
    ++entries_;
    if (!inflight_.empty()) ErasePending(slot, hash);  // announced: no longer only in flight
  } else if (after == 0) {
    w.hashes.erase(hash);
    --entries_;
  }
  Repoint(hash, old, fingerprint);
}

void KvIndex::Repoint(BlockHash hash, const HolderSet* old, uint64_t fingerprint) {
  const HolderSet* next = nullptr;
  if (!scratch_.empty()) {
    auto found = sets_.find(HolderSetKey{scratch_, fingerprint});
    if (found == sets_.end()) found = sets_.insert(HolderSet{scratch_, fingerprint, 0}).first;
    next = &*found;
    ++next->refs;
  }
  if (next != nullptr) {
    blocks_[hash] = next;
  } else {
    blocks_.erase(hash);
  }
  if (old != nullptr && --old->refs == 0)
    sets_.erase(sets_.find(HolderSetKey{old->holders, old->fingerprint}));
}

void KvIndex::ApplyEvents(uint32_t slot, const tandem::v1::KvEventBatch& batch) {
  for (const tandem::v1::KvEvent& e : batch.events()) {
    const bool stored = e.kind() == tandem::v1::KvEvent::KIND_STORED;
    if (!stored && e.kind() != tandem::v1::KvEvent::KIND_REMOVED) continue;
    for (uint64_t hash : e.block_hashes()) SetTier(slot, hash, e.tier(), stored);
  }
}

void KvIndex::ClearWorker(uint32_t slot) {
  Worker& w = workers_[slot];
  for (BlockHash hash : w.hashes) {
    auto it = blocks_.find(hash);
    if (it == blocks_.end()) continue;
    const HolderSet* old = it->second;
    uint64_t fingerprint = old->fingerprint;
    scratch_.clear();
    for (const Holder& h : old->holders) {
      if (h.slot != slot) {
        scratch_.push_back(h);
        continue;
      }
      for (int t = 1; t <= kMaxTier; ++t) {
        if ((h.tiers & (1u << t)) != 0) --tier_entries_[t];
      }
      fingerprint -= HolderPrint(h.slot, h.tiers);
    }
    --entries_;
    Repoint(hash, old, fingerprint);
  }
  w.hashes.clear();
}

void KvIndex::ErasePending(uint32_t slot, BlockHash hash, absl::Time expired_by) {
  auto it = inflight_.find(hash);
  if (it == inflight_.end()) return;
  Pendings& pendings = it->second;
  for (size_t i = 0; i < pendings.size(); ++i) {
    if (pendings[i].slot != slot) continue;
    // A later AddInflight of the same pair pushed its expiry out: keep it.
    if (pendings[i].expires > expired_by) return;
    pendings.erase(pendings.begin() + static_cast<ptrdiff_t>(i));
    --inflight_entries_;
    if (pendings.empty()) inflight_.erase(it);
    return;
  }
}

void KvIndex::ExpireInflight(absl::Time now) {
  while (!inflight_records_.empty() && inflight_records_.front().expires <= now) {
    const InflightRecord& r = inflight_records_.front();
    for (BlockHash hash : r.hashes) ErasePending(r.slot, hash, now);
    inflight_records_.pop_front();
  }
}

void KvIndex::ClearInflight(uint32_t slot) {
  for (const InflightRecord& r : inflight_records_) {
    if (r.slot != slot) continue;
    for (BlockHash hash : r.hashes) ErasePending(slot, hash);
  }
  inflight_records_.erase(std::remove_if(inflight_records_.begin(), inflight_records_.end(),
                                         [slot](const InflightRecord& r) { return r.slot == slot; }),
                          inflight_records_.end());
}

void KvIndex::AddInflight(const std::string& worker_id, absl::Span<const BlockHash> hashes) {
  if (options_.inflight_ttl <= absl::ZeroDuration() || hashes.empty()) return;
  absl::MutexLock lock(&mu_);
  const absl::Time now = options_.clock ? options_.clock() : absl::Now();
  ExpireInflight(now);
  const bool existed = slots_.contains(worker_id);
  const uint32_t slot = SlotFor(worker_id);
  if (!existed) {
    workers_[slot].inflight_only = true;
    ++inflight_only_workers_;
  }
  InflightRecord record{now + options_.inflight_ttl, slot, {}};
  record.hashes.reserve(hashes.size());
  for (BlockHash hash : hashes) {
    if (workers_[slot].hashes.contains(hash)) continue;  // announced already
    Pendings& pendings = inflight_[hash];
    auto same =
        std::find_if(pendings.begin(), pendings.end(), [slot](const Pending& p) { return p.slot == slot; });
    if (same != pendings.end()) {
      same->expires = record.expires;
    } else {
      pendings.push_back({slot, record.expires});
      ++inflight_entries_;
    }
    record.hashes.push_back(hash);
  }
  if (!record.hashes.empty()) inflight_records_.push_back(std::move(record));
}

void KvIndex::RemoveInflight(const std::string& worker_id, absl::Span<const BlockHash> hashes) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  if (it == slots_.end()) return;
  for (BlockHash hash : hashes) ErasePending(it->second, hash);
}

KvIndex::Outcome KvIndex::Apply(const tandem::v1::KvEventBatch& batch) {
  absl::MutexLock lock(&mu_);
  if (!inflight_records_.empty()) ExpireInflight(options_.clock ? options_.clock() : absl::Now());
  auto existing = slots_.find(batch.worker_id());
  const bool known = existing != slots_.end() && !workers_[existing->second].inflight_only;
  const uint32_t slot = SlotFor(batch.worker_id());
  Worker& w = workers_[slot];
  if (w.inflight_only) {  // its first KV event: from now on an ordinary worker
    w.inflight_only = false;
    --inflight_only_workers_;
  }
  if (!known && FirstSequence(batch) == 1) w.awaiting_snapshot = false;  // a fresh worker
  if (w.awaiting_snapshot) {
    w.buffered.push_back(batch);
    if (w.buffered.size() > options_.max_buffered_batches) w.buffered.pop_front();
    if (!known) ++gaps_;
    return known ? Outcome::kBuffered : Outcome::kNeedSnapshot;
  }
  if (batch.sequence_number() < w.next_sequence) return Outcome::kStale;
  if (FirstSequence(batch) > w.next_sequence) {
    w.awaiting_snapshot = true;
    w.buffered.push_back(batch);
    ++gaps_;
    return Outcome::kNeedSnapshot;
  }
  // A batch that starts before next_sequence (after a snapshot) is applied
  // whole: its earlier events are already in the state and the last event
  // per hash decides (engine/kv_events.h).
  ApplyEvents(slot, batch);
  w.next_sequence = batch.sequence_number() + 1;
  return Outcome::kApplied;
}

void KvIndex::ApplySnapshot(const tandem::v1::KvEventBatch& snapshot) {
  absl::MutexLock lock(&mu_);
  const uint32_t slot = SlotFor(snapshot.worker_id());
  if (workers_[slot].inflight_only) {
    workers_[slot].inflight_only = false;
    --inflight_only_workers_;
  }
  ClearWorker(slot);
  for (const tandem::v1::KvEvent& e : snapshot.events()) {
    if (e.kind() != tandem::v1::KvEvent::KIND_STORED) continue;
    for (uint64_t hash : e.block_hashes()) SetTier(slot, hash, e.tier(), true);
  }
  Worker& w = workers_[slot];
  w.next_sequence = snapshot.sequence_number() + 1;
  w.awaiting_snapshot = false;
  ++snapshots_;
  std::deque<tandem::v1::KvEventBatch> buffered;
  buffered.swap(w.buffered);
  std::sort(buffered.begin(), buffered.end(),
            [](const auto& a, const auto& b) { return a.sequence_number() < b.sequence_number(); });
  for (const tandem::v1::KvEventBatch& batch : buffered) {
    Worker& cur = workers_[slot];
    if (batch.sequence_number() < cur.next_sequence) continue;
    if (FirstSequence(batch) > cur.next_sequence) {  // still a gap: need a newer snapshot
      cur.awaiting_snapshot = true;
      cur.buffered.push_back(batch);
      ++gaps_;
      continue;
    }
    ApplyEvents(slot, batch);
    cur.next_sequence = batch.sequence_number() + 1;
  }
}

void KvIndex::RemoveWorker(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  if (it == slots_.end()) return;
  const uint32_t slot = it->second;
  ClearWorker(slot);
  ClearInflight(slot);
  if (workers_[slot].inflight_only) --inflight_only_workers_;
  workers_[slot] = Worker{};
  slots_.erase(it);
  free_slots_.push_back(slot);
}

bool KvIndex::Known(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  return it != slots_.end() && !workers_[it->second].inflight_only;
}

bool KvIndex::AwaitingSnapshot(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  return it != slots_.end() && !workers_[it->second].inflight_only && workers_[it->second].awaiting_snapshot;
}

std::vector<KvIndex::PrefixMatch> KvIndex::Match(absl::Span<const BlockHash> hashes) const {
  std::vector<PrefixMatch> out;
  if (hashes.empty()) return out;
  std::vector<SlotMatch> matches;
  absl::ReaderMutexLock lock(&mu_);
  MatchLocked(hashes, &matches);
  out.reserve(matches.size());
  for (const SlotMatch& m : matches) {
    out.emplace_back();
    static_cast<PrefixStats&>(out.back()) = m;
    out.back().worker_id = workers_[m.slot].id;
  }
  return out;
}

void KvIndex::MatchSlots(absl::Span<const BlockHash> hashes, SlotMatches* out) const {
  out->matches.clear();
  absl::ReaderMutexLock lock(&mu_);
  out->slot_epoch = slot_epoch_;
  if (!hashes.empty()) MatchLocked(hashes, &out->matches);
}

uint32_t KvIndex::SlotOf(const std::string& worker_id, uint64_t* slot_epoch) const {
  absl::ReaderMutexLock lock(&mu_);
  *slot_epoch = slot_epoch_;
  auto it = slots_.find(worker_id);
  return it == slots_.end() ? kNoSlot : it->second;
}

// One Match walk (KvIndex::MatchLocked), run under the index's shared lock.
//
// It keeps the workers still matching (Live). `mark_` (per thread, indexed
// by slot) holds the generation at which a slot was last seen among a
// block's holders, and with which tiers (bit 0: in flight); every full step
// takes a new generation, so the array is never cleared.
//
// A run of blocks with the same holders (a system prompt cached on every
// worker: the same 900 holders block after block) is not stepped through
// worker by worker: when a block's holder set is the last full step's (one
// interned HolderSet: a pointer comparison), and that step used no
// in-flight entries (so every live worker was among those holders), each
// live worker holds the block in the same tier as the last one; the walk
// only counts the block (`run_`) and adds the run to each live worker once,
// at the next full step or at the end. A shared prefix of n blocks on w
// workers costs O(n + w), not O(n x w).
class KvIndex::Walker {
 public:
  Walker(const KvIndex& index, absl::Span<const BlockHash> hashes, std::vector<SlotMatch>* out)
      ABSL_SHARED_LOCKS_REQUIRED(index.mu_)
      : index_(index),
        hashes_(hashes),
        out_(*out),
        // In-flight entries live until a writer sweeps them; past their
        // expiry they are ignored here. No clock read when nothing is in
        // flight.
        any_inflight_(!index.inflight_.empty()),
        now_(any_inflight_ ? (index.options_.clock ? index.options_.clock() : absl::Now())
                           : absl::InfinitePast()) {}

  // The caller holds index_.mu_ (the constructor requires it); the analysis
  // cannot name a member's mutex through a temporary, so Run asserts it.
  void Run() {
    index_.mu_.AssertReaderHeld();
    const Holders* holders = HoldersOf(0);
    const Pendings* pendings = PendingsOf(0);
    if (holders == nullptr && pendings == nullptr) return;
    if (mark_.size() < index_.workers_.size()) mark_.resize(index_.workers_.size(), 0);
    Start(holders, pendings);
    if (live_.empty()) return;
    out_.reserve(live_.size());
    // A long prompt's walk is a chain of dependent cache misses in a large
    // table; asking for the blocks a few steps ahead overlaps them.
    constexpr size_t kPrefetchAhead = 4;
    for (size_t i = 1; i <= kPrefetchAhead && i < hashes_.size(); ++i) index_.blocks_.prefetch(hashes_[i]);
    size_t depth = 0;
    while (true) {
      if (depth + kPrefetchAhead < hashes_.size()) index_.blocks_.prefetch(hashes_[depth + kPrefetchAhead]);
      if (step_holders_ != nullptr && holders != nullptr && pendings == nullptr &&
          holders == step_holders_) {  // the same set: the same holders
        ++run_;
      } else {
        Step(depth, holders, pendings);
      }
      ++depth;
      if (live_.empty() || depth == hashes_.size()) break;
      holders = HoldersOf(depth);
      pendings = holders == nullptr ? PendingsOf(depth) : nullptr;
      if (holders == nullptr && pendings == nullptr) break;
    }
    Flush();
    for (const Live& l : live_) Finish(l, depth);
  }

 private:
  // A worker still matching, with its per-tier counts.
  struct Live {
    uint32_t slot;
    int32_t tier_blocks[4];
    int32_t first_lower;  // -1 until a block not in HBM
    int32_t inflight;
    int32_t last_tier;  // the tier of the last block stepped through
  };

  // The best tier among a holder's tier bits (bit t: tier t); 0 when only
  // bit 0 (in flight) is set.
  static int BestTier(uint8_t tiers) {
    for (int t = 1; t <= kMaxTier; ++t) {
      if (tiers & (1u << t)) return t;
    }
    return 0;
  }
  // The holders and in-flight entries of block `i` (either may be null).
  const Holders* HoldersOf(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(index_.mu_) {
    auto it = index_.blocks_.find(hashes_[i]);
    return it == index_.blocks_.end() ? nullptr : &it->second->holders;
  }
  const Pendings* PendingsOf(size_t i) const ABSL_SHARED_LOCKS_REQUIRED(index_.mu_) {
    if (!any_inflight_) return nullptr;
    auto it = index_.inflight_.find(hashes_[i]);
    return it == index_.inflight_.end() ? nullptr : &it->second;
  }

  // Marks a block's holders, and its unexpired in-flight entries (bit 0),
  // with `gen`.
  void MarkHolders(const Holders* hs, uint64_t gen) {
    if (hs == nullptr) return;
    for (const Holder& h : *hs) mark_[h.slot] = (gen << 8) | h.tiers;
  }
  void MarkPendings(const Pendings* ps, uint64_t gen) {
    if (ps == nullptr) return;
    for (const Pending& p : *ps) {
      if (p.expires <= now_) continue;
      mark_[p.slot] = (mark_[p.slot] >> 8) == gen ? (mark_[p.slot] | 1) : ((gen << 8) | 1);
    }
  }

  // The first block's holders, each once, start the walk.
  void Start(const Holders* holders, const Pendings* pendings) {
    const uint64_t gen = ++generation_;
    MarkHolders(holders, gen);
    MarkPendings(pendings, gen);
    auto start = [&](uint32_t slot) {
      if ((mark_[slot] >> 8) != gen || (mark_[slot] & 0xff) == 0) return;
      live_.push_back({slot, {0, 0, 0, 0}, -1, 0, 0});
      mark_[slot] = gen << 8;  // seen: not again
    };
    if (holders != nullptr) {
      live_.reserve(holders->size());
      for (const Holder& h : *holders) start(h.slot);
    }
    if (pendings != nullptr) {
      for (const Pending& p : *pendings) start(p.slot);
    }
  }

  // Block `depth`, worker by worker: the live workers holding it (or with
  // it in flight) go on, the others' prefixes end before it.
  void Step(size_t depth, const Holders* holders, const Pendings* pendings)
      ABSL_SHARED_LOCKS_REQUIRED(index_.mu_) {
    Flush();
    const uint64_t gen = ++generation_;
    MarkHolders(holders, gen);
    MarkPendings(pendings, gen);
    bool used_pendings = pendings != nullptr;
    // Past block 0 the in-flight entries are looked up only when a live
    // worker lacks the block (through a long cached prefix, never).
    if (pendings == nullptr && depth > 0 && any_inflight_ &&
        std::any_of(live_.begin(), live_.end(), [&](const Live& l) { return (mark_[l.slot] >> 8) != gen; })) {
      MarkPendings(PendingsOf(depth), gen);
      used_pendings = true;
    }
    size_t kept = 0;
    for (size_t i = 0; i < live_.size(); ++i) {
      Live& l = live_[i];
      const uint64_t m = mark_[l.slot];
      if ((m >> 8) != gen) {
        Finish(l, depth);
        continue;
      }
      int tier = BestTier(static_cast<uint8_t>(m & 0xff));
      if (tier == 0) {  // in flight: in HBM once computed there
        tier = tandem::v1::KV_TIER_HBM;
        ++l.inflight;
      }
      ++l.tier_blocks[tier];
      l.last_tier = tier;
      if (tier != tandem::v1::KV_TIER_HBM && l.first_lower < 0) l.first_lower = static_cast<int32_t>(depth);
      if (kept != i) live_[kept] = l;
      ++kept;
    }
    live_.resize(kept);
    step_holders_ = used_pendings ? nullptr : holders;
  }

  // Adds the blocks counted since the last step to each live worker.
  void Flush() {
    if (run_ == 0) return;
    for (Live& l : live_) l.tier_blocks[l.last_tier] += run_;
    run_ = 0;
  }

  void Finish(const Live& l, size_t depth) {
    SlotMatch& m = out_.emplace_back();
    m.slot = l.slot;
    m.blocks = static_cast<int32_t>(depth);
    std::copy(l.tier_blocks, l.tier_blocks + 4, m.tier_blocks);
    m.first_lower_block = l.first_lower < 0 ? m.blocks : l.first_lower;
    m.inflight_blocks = l.inflight;
  }

  const KvIndex& index_;
  const absl::Span<const BlockHash> hashes_;
  std::vector<SlotMatch>& out_;
  const bool any_inflight_;
  const absl::Time now_;
  std::vector<Live> live_;
  int32_t run_ = 0;
  // The holders of the last full step when it used no in-flight entries
  // (every live worker is among them), else null.
  const Holders* step_holders_ = nullptr;
  static thread_local std::vector<uint64_t> mark_;  // generation << 8 | tiers
  static thread_local uint64_t generation_;
};

thread_local std::vector<uint64_t> KvIndex::Walker::mark_;
thread_local uint64_t KvIndex::Walker::generation_ = 0;

void KvIndex::MatchLocked(absl::Span<const BlockHash> hashes, std::vector<SlotMatch>* matches) const {
  Walker(*this, hashes, matches).Run();
}

KvIndex::Stats KvIndex::stats() const {
  absl::ReaderMutexLock lock(&mu_);
  return {.workers = slots_.size() - inflight_only_workers_,
          .blocks = blocks_.size(),
          .entries = entries_,
          .gaps = gaps_,
          .snapshots = snapshots_,
          .tier_entries = {tier_entries_[0], tier_entries_[1], tier_entries_[2], tier_entries_[3]},
          .inflight_entries = inflight_entries_,
          .holder_sets = sets_.size()};
}

}  // namespace tandem::router
