#include "engine/kv_events.h"

#include <algorithm>

namespace tandem::engine {
namespace {
uint32_t Bit(KvTier tier) { return 1u << static_cast<int32_t>(tier); }
}  // namespace

void KvEventLog::Stored(BlockHash hash, KvTier tier) {
  absl::MutexLock lock(&mu_);
  held_[hash] |= Bit(tier);
  Append({KvEvent::Kind::kStored, tier, hash});
}

void KvEventLog::Removed(BlockHash hash, KvTier tier) {
  absl::MutexLock lock(&mu_);
  auto it = held_.find(hash);
  if (it != held_.end()) {
    it->second &= ~Bit(tier);
    if (it->second == 0) held_.erase(it);
  }
  Append({KvEvent::Kind::kRemoved, tier, hash});
}

void KvEventLog::Append(KvEvent event) {
  if (pending_.size() - pending_begin_ >= max_pending_) {
    ++pending_begin_;  // drop the oldest; the next batch announces the gap
    dropped_ = true;
  }
  if (pending_begin_ > 4096 && pending_begin_ * 2 > pending_.size()) {
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(pending_begin_));
    pending_begin_ = 0;
  }
  pending_.push_back(event);
}

KvEventLog::Batch KvEventLog::Drain(size_t max_events) {
  absl::MutexLock lock(&mu_);
  Batch batch;
  const size_t n = std::min(max_events, pending_.size() - pending_begin_);
  if (n == 0) return batch;
  // A skipped number tells the receiver that events were lost.
  if (dropped_) ++last_sequence_;
  dropped_ = false;
  batch.sequence_number = ++last_sequence_;
  batch.events.assign(pending_.begin() + static_cast<ptrdiff_t>(pending_begin_),
                      pending_.begin() + static_cast<ptrdiff_t>(pending_begin_ + n));
  pending_begin_ += n;
  if (pending_begin_ == pending_.size()) {
    pending_.clear();
    pending_begin_ = 0;
  }
  return batch;
}

KvEventLog::Snapshot KvEventLog::TakeSnapshot() const {
  absl::MutexLock lock(&mu_);
  Snapshot snap;
  snap.sequence_number = last_sequence_;
  snap.stored.reserve(held_.size());
  for (const auto& [hash, tiers] : held_) {
    for (KvTier tier : {KvTier::kHbm, KvTier::kDram, KvTier::kSsd}) {
      if (tiers & Bit(tier)) snap.stored.push_back({KvEvent::Kind::kStored, tier, hash});
    }
  }
  return snap;
}

size_t KvEventLog::num_held() const {
  absl::MutexLock lock(&mu_);
  return held_.size();
}

}  // namespace tandem::engine
