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

// The best tier among a holder's tier bits (bit t: tier t); 0 when only bit
// 0 (in flight) is set.
// A worker still matching in KvIndex::Match, with its per-tier counts.
struct Live {
  uint32_t slot;
  int32_t tier_blocks[4];
  int32_t first_lower;  // -1 until a block not in HBM
  int32_t inflight;
};

int BestTier(uint8_t tiers) {
  for (int t = 1; t <= kMaxTier; ++t) {
    if (tiers & (1u << t)) return t;
  }
  return 0;
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
  return slot;
}

void KvIndex::SetTier(uint32_t slot, BlockHash hash, int tier, bool present) {
  if (!ValidTier(tier)) return;
  const uint8_t bit = static_cast<uint8_t>(1u << tier);
  Worker& w = workers_[slot];
  if (present) {
    Holders& holders = blocks_[hash];
    for (Holder& h : holders) {
      if (h.slot == slot) {
        if ((h.tiers & bit) == 0) ++tier_entries_[tier];
        h.tiers |= bit;
        return;
      }
    }
    holders.push_back({slot, bit});
    ++tier_entries_[tier];
    w.hashes.insert(hash);
    ++entries_;
    if (!inflight_.empty()) ErasePending(slot, hash);  // announced: no longer only in flight
    return;
  }
  auto it = blocks_.find(hash);
  if (it == blocks_.end()) return;
  Holders& holders = it->second;
  for (size_t i = 0; i < holders.size(); ++i) {
    if (holders[i].slot != slot) continue;
    if ((holders[i].tiers & bit) != 0) --tier_entries_[tier];
    holders[i].tiers &= static_cast<uint8_t>(~bit);
    if (holders[i].tiers == 0) {
      holders.erase(holders.begin() + static_cast<ptrdiff_t>(i));
      w.hashes.erase(hash);
      --entries_;
      if (holders.empty()) blocks_.erase(it);
    }
    return;
  }
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
    Holders& holders = it->second;
    for (const Holder& h : holders) {
      if (h.slot != slot) continue;
      for (int t = 1; t <= kMaxTier; ++t) {
        if ((h.tiers & (1u << t)) != 0) --tier_entries_[t];
      }
    }
    holders.erase(
        std::remove_if(holders.begin(), holders.end(), [slot](const Holder& h) { return h.slot == slot; }),
        holders.end());
    --entries_;
    if (holders.empty()) blocks_.erase(it);
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
  absl::ReaderMutexLock lock(&mu_);
  // In-flight entries live until a writer sweeps them; past their expiry
  // they are ignored here. No clock read when nothing is in flight.
  const bool any_inflight = !inflight_.empty();
  const absl::Time now =
      any_inflight ? (options_.clock ? options_.clock() : absl::Now()) : absl::InfinitePast();
  // The holders and in-flight entries of block `i` (either may be null).
  auto holders_of = [&](size_t i) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    auto it = blocks_.find(hashes[i]);
    return it == blocks_.end() ? nullptr : &it->second;
  };
  auto pendings_of = [&](size_t i) ABSL_SHARED_LOCKS_REQUIRED(mu_) -> const Pendings* {
    if (!any_inflight) return nullptr;
    auto it = inflight_.find(hashes[i]);
    return it == inflight_.end() ? nullptr : &it->second;
  };
  const Holders* holders = holders_of(0);
  const Pendings* pendings = pendings_of(0);
  if (holders == nullptr && pendings == nullptr) return out;

  // Workers still matching (Live). `mark` (per thread,
  // indexed by slot) holds the generation at which a slot was last seen
  // among a block's holders, and with which tiers (bit 0: in flight); every
  // block of every query takes a new generation, so the array is never
  // cleared.
  thread_local std::vector<uint64_t> mark;  // generation << 8 | tiers
  thread_local uint64_t generation = 0;
  if (mark.size() < workers_.size()) mark.resize(workers_.size(), 0);
  // Mark a block's holders, and its unexpired in-flight entries (bit 0), with `gen`.
  auto mark_holders = [&](const Holders* hs, uint64_t gen) {
    if (hs == nullptr) return;
    for (const Holder& h : *hs) mark[h.slot] = (gen << 8) | h.tiers;
  };
  auto mark_pendings = [&](const Pendings* ps, uint64_t gen) {
    if (ps == nullptr) return;
    for (const Pending& p : *ps) {
      if (p.expires <= now) continue;
      mark[p.slot] = (mark[p.slot] >> 8) == gen ? (mark[p.slot] | 1) : ((gen << 8) | 1);
    }
  };
  // The first block's holders, each once, start the walk.
  std::vector<Live> live;
  {
    const uint64_t gen = ++generation;
    mark_holders(holders, gen);
    mark_pendings(pendings, gen);
    auto start = [&](uint32_t slot) {
      if ((mark[slot] >> 8) != gen || (mark[slot] & 0xff) == 0) return;
      live.push_back({slot, {0, 0, 0, 0}, -1, 0});
      mark[slot] = gen << 8;  // seen: not again
    };
    if (holders != nullptr) {
      live.reserve(holders->size());
      for (const Holder& h : *holders) start(h.slot);
    }
    if (pendings != nullptr) {
      for (const Pending& p : *pendings) start(p.slot);
    }
    if (live.empty()) return out;
    out.reserve(live.size());
  }

  // Runs under `lock`; a lambda is analysed on its own, so it says so.
  auto finish = [&](const Live& l, size_t depth) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    PrefixMatch m;
    m.worker_id = workers_[l.slot].id;
    m.blocks = static_cast<int32_t>(depth);
    std::copy(l.tier_blocks, l.tier_blocks + 4, m.tier_blocks);
    m.first_lower_block = l.first_lower < 0 ? m.blocks : l.first_lower;
    m.inflight_blocks = l.inflight;
    out.push_back(std::move(m));
  };

  // A long prompt's walk is a chain of dependent cache misses in a large
  // table; asking for the blocks a few steps ahead overlaps them.
  constexpr size_t kPrefetchAhead = 4;
  for (size_t i = 1; i <= kPrefetchAhead && i < hashes.size(); ++i) blocks_.prefetch(hashes[i]);
  size_t depth = 0;
  while (true) {
    if (depth + kPrefetchAhead < hashes.size()) blocks_.prefetch(hashes[depth + kPrefetchAhead]);
    const uint64_t gen = ++generation;
    mark_holders(holders, gen);
    mark_pendings(pendings, gen);
    // Past block 0 the in-flight entries are looked up only when a live
    // worker lacks the block (through a long cached prefix, never).
    if (pendings == nullptr && depth > 0 && any_inflight &&
        std::any_of(live.begin(), live.end(), [&](const Live& l) { return (mark[l.slot] >> 8) != gen; })) {
      mark_pendings(pendings_of(depth), gen);
    }
    size_t kept = 0;
    for (Live& l : live) {
      const uint64_t m = mark[l.slot];
      if ((m >> 8) == gen) {
        int tier = BestTier(static_cast<uint8_t>(m & 0xff));
        if (tier == 0) {  // in flight: in HBM once computed there
          tier = tandem::v1::KV_TIER_HBM;
          ++l.inflight;
        }
        ++l.tier_blocks[tier];
        if (tier != tandem::v1::KV_TIER_HBM && l.first_lower < 0) l.first_lower = static_cast<int32_t>(depth);
        live[kept++] = l;
      } else {
        finish(l, depth);
      }
    }
    live.resize(kept);
    ++depth;
    if (live.empty() || depth == hashes.size()) break;
    holders = holders_of(depth);
    pendings = holders == nullptr ? pendings_of(depth) : nullptr;
    if (holders == nullptr && pendings == nullptr) break;
  }
  for (const Live& l : live) finish(l, depth);
  return out;
}

KvIndex::Stats KvIndex::stats() const {
  absl::ReaderMutexLock lock(&mu_);
  return {.workers = slots_.size() - inflight_only_workers_,
          .blocks = blocks_.size(),
          .entries = entries_,
          .gaps = gaps_,
          .snapshots = snapshots_,
          .tier_entries = {tier_entries_[0], tier_entries_[1], tier_entries_[2], tier_entries_[3]},
          .inflight_entries = inflight_entries_};
}

}  // namespace tandem::router
