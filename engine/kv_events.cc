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

KvEventLog::KvEventLog(size_t max_pending) : max_pending_(std::max<size_t>(1, max_pending)) {
  absl::MutexLock lock(&mu_);
  cursors_[kFirstConsumer] = 1;
}

void KvEventLog::Append(KvEvent event) {
  kept_.push_back(event);
  if (kept_.size() > max_pending_) {  // a consumer still reading it sees a gap
    kept_.pop_front();
    ++first_kept_;
  }
  if (cursors_.empty()) Trim();  // nobody reads: keep nothing
}

void KvEventLog::Trim() {
  uint64_t slowest = first_kept_ + kept_.size();
  for (const auto& [consumer, next] : cursors_) slowest = std::min(slowest, next);
  while (first_kept_ < slowest) {
    kept_.pop_front();
    ++first_kept_;
  }
}

KvEventLog::ConsumerId KvEventLog::AddConsumer() {
  absl::MutexLock lock(&mu_);
  const ConsumerId id = next_consumer_++;
  cursors_[id] = first_kept_ + kept_.size();
  return id;
}

void KvEventLog::RemoveConsumer(ConsumerId consumer) {
  absl::MutexLock lock(&mu_);
  if (cursors_.erase(consumer) > 0) Trim();
}

KvEventLog::Batch KvEventLog::Drain(ConsumerId consumer, size_t max_events) {
  absl::MutexLock lock(&mu_);
  Batch batch;
  auto cursor = cursors_.find(consumer);
  if (cursor == cursors_.end()) return batch;
  const uint64_t end = first_kept_ + kept_.size();
  // Events before first_kept_ were dropped: starting later than the cursor
  // tells the receiver it missed them.
  const uint64_t first = std::max(cursor->second, first_kept_);
  const uint64_t n = std::min<uint64_t>(max_events, end - first);
  if (n == 0) return batch;
  batch.first_sequence_number = first;
  batch.sequence_number = first + n - 1;
  const auto begin = kept_.begin() + static_cast<ptrdiff_t>(first - first_kept_);
  batch.events.assign(begin, begin + static_cast<ptrdiff_t>(n));
  cursor->second = first + n;
  Trim();
  return batch;
}

KvEventLog::Snapshot KvEventLog::TakeSnapshot() const {
  absl::MutexLock lock(&mu_);
  Snapshot snap;
  snap.sequence_number = first_kept_ + kept_.size() - 1;
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
