#include "router/kv_index.h"

#include <algorithm>

namespace tandem::router {
namespace {
constexpr int kMaxTier = 3;
bool ValidTier(int tier) { return tier >= 1 && tier <= kMaxTier; }
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

KvIndex::Outcome KvIndex::Apply(const tandem::v1::KvEventBatch& batch) {
  absl::MutexLock lock(&mu_);
  const bool known = slots_.contains(batch.worker_id());
  const uint32_t slot = SlotFor(batch.worker_id());
  Worker& w = workers_[slot];
  if (!known && batch.sequence_number() == 1) w.awaiting_snapshot = false;  // a fresh worker
  if (w.awaiting_snapshot) {
    w.buffered.push_back(batch);
    if (w.buffered.size() > options_.max_buffered_batches) w.buffered.pop_front();
    if (!known) ++gaps_;
    return known ? Outcome::kBuffered : Outcome::kNeedSnapshot;
  }
  if (batch.sequence_number() < w.next_sequence) return Outcome::kStale;
  if (batch.sequence_number() > w.next_sequence) {
    w.awaiting_snapshot = true;
    w.buffered.push_back(batch);
    ++gaps_;
    return Outcome::kNeedSnapshot;
  }
  ApplyEvents(slot, batch);
  w.next_sequence = batch.sequence_number() + 1;
  return Outcome::kApplied;
}

void KvIndex::ApplySnapshot(const tandem::v1::KvEventBatch& snapshot) {
  absl::MutexLock lock(&mu_);
  const uint32_t slot = SlotFor(snapshot.worker_id());
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
    if (batch.sequence_number() > cur.next_sequence) {  // still a gap: need a newer snapshot
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
  workers_[slot] = Worker{};
  slots_.erase(it);
  free_slots_.push_back(slot);
}

bool KvIndex::Known(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return slots_.contains(worker_id);
}

bool KvIndex::AwaitingSnapshot(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = slots_.find(worker_id);
  return it != slots_.end() && workers_[it->second].awaiting_snapshot;
}

std::vector<KvIndex::PrefixMatch> KvIndex::Match(absl::Span<const BlockHash> hashes) const {
  std::vector<PrefixMatch> out;
  if (hashes.empty()) return out;
  absl::ReaderMutexLock lock(&mu_);
  auto first = blocks_.find(hashes[0]);
  if (first == blocks_.end()) return out;

  // Workers still matching, with their per-tier counts. `mark` (per thread,
  // indexed by slot) holds the generation at which a slot was last seen
  // among a block's holders, and with which tiers; every block of every
  // query takes a new generation, so the array is never cleared.
  struct Live {
    uint32_t slot;
    int32_t tier_blocks[4];
    int32_t first_lower;  // -1 until a block not in HBM
  };
  thread_local std::vector<uint64_t> mark;  // generation << 8 | tiers
  thread_local uint64_t generation = 0;
  if (mark.size() < workers_.size()) mark.resize(workers_.size(), 0);
  std::vector<Live> live;
  live.reserve(first->second.size());
  for (const Holder& h : first->second) live.push_back({h.slot, {0, 0, 0, 0}, -1});

  auto best_tier = [](uint8_t tiers) {
    for (int t = 1; t <= kMaxTier; ++t) {
      if (tiers & (1u << t)) return t;
    }
    return 0;
  };
  // Runs under `lock`; a lambda is analysed on its own, so it says so.
  auto finish = [&](const Live& l, size_t depth) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    PrefixMatch m;
    m.worker_id = workers_[l.slot].id;
    m.blocks = static_cast<int32_t>(depth);
    std::copy(l.tier_blocks, l.tier_blocks + 4, m.tier_blocks);
    m.first_lower_block = l.first_lower < 0 ? m.blocks : l.first_lower;
    out.push_back(std::move(m));
  };

  size_t depth = 0;
  const Holders* holders = &first->second;
  while (true) {
    const uint64_t gen = ++generation;
    for (const Holder& h : *holders) mark[h.slot] = (gen << 8) | h.tiers;
    size_t kept = 0;
    for (Live& l : live) {
      const uint64_t m = mark[l.slot];
      if ((m >> 8) == gen) {
        const int tier = best_tier(static_cast<uint8_t>(m & 0xff));
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
    auto next = blocks_.find(hashes[depth]);
    if (next == blocks_.end()) break;
    holders = &next->second;
  }
  for (const Live& l : live) finish(l, depth);
  return out;
}

KvIndex::Stats KvIndex::stats() const {
  absl::ReaderMutexLock lock(&mu_);
  return {.workers = slots_.size(),
          .blocks = blocks_.size(),
          .entries = entries_,
          .gaps = gaps_,
          .snapshots = snapshots_,
          .tier_entries = {tier_entries_[0], tier_entries_[1], tier_entries_[2], tier_entries_[3]}};
}

}  // namespace tandem::router
