#include "kvstore/dram_tier.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace tandem::kvstore {

absl::StatusOr<std::unique_ptr<DramTier>> DramTier::Create(const Options& options) {
  if (options.slot_bytes == 0) return absl::InvalidArgumentError("DramTier: slot_bytes must be > 0");
  const size_t num_slots = options.capacity_bytes / options.slot_bytes;
  if (num_slots == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("DramTier: capacity_bytes %d holds no slot of %d bytes",
                                                      options.capacity_bytes, options.slot_bytes));
  }
  const size_t bytes = num_slots * options.slot_bytes;
  std::optional<transfer::RegisteredRegion> region;
  uint8_t* base = nullptr;
  if (options.transfer != nullptr) {
    absl::StatusOr<transfer::RegisteredRegion> r = options.transfer->Allocate(bytes);
    if (!r.ok()) return r.status();
    region = *std::move(r);
    base = reinterpret_cast<uint8_t*>(region->base_address);
  } else {
    constexpr size_t kAlign = 4096;
    base = static_cast<uint8_t*>(std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign));
    if (base == nullptr) {
      return absl::ResourceExhaustedError(absl::StrFormat("DramTier: cannot allocate %d bytes", bytes));
    }
  }
  // Touch every page now, so that no Put pays a page fault (and the pool is
  // resident from the start, as a pinned pool would be).
  std::memset(base, 0, bytes);
  std::unique_ptr<DramTier> tier(new DramTier(options, base, num_slots));
  tier->region_ = std::move(region);
  return tier;
}

DramTier::DramTier(const Options& options, uint8_t* base, size_t num_slots)
    : slot_bytes_(options.slot_bytes),
      capacity_bytes_(options.capacity_bytes),
      num_slots_(num_slots),
      transfer_(options.transfer),
      base_(base) {
  free_slots_.reserve(num_slots);
  for (size_t i = num_slots; i > 0; --i) free_slots_.push_back(i - 1);
}

DramTier::~DramTier() {
  if (region_.has_value()) {
    // Best effort: the engine frees its regions on destruction anyway.
    (void)transfer_->Unregister(region_->region_id);
  } else {
    std::free(base_);
  }
}

size_t DramTier::TakeSlotLocked(BlockHash hash, std::vector<BlockHash>* evicted) {
  if (auto it = entries_.find(hash); it != entries_.end()) {
    const size_t slot = it->second.slot;
    used_bytes_ -= it->second.bytes;
    lru_.erase(it->second.lru);
    entries_.erase(it);
    return slot;
  }
  if (!free_slots_.empty()) {
    const size_t slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  // Full: evict the least recently used value (there is one: num_slots_ >= 1).
  const BlockHash victim = lru_.front();
  lru_.pop_front();
  auto it = entries_.find(victim);
  const size_t slot = it->second.slot;
  used_bytes_ -= it->second.bytes;
  entries_.erase(it);
  if (evicted != nullptr) evicted->push_back(victim);
  return slot;
}

absl::Status DramTier::PutWith(BlockHash hash, size_t bytes,
                               absl::FunctionRef<void(absl::Span<uint8_t>)> fill,
                               std::vector<BlockHash>* evicted) {
  if (bytes == 0 || bytes > slot_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DramTier: value of %d bytes does not fit a %d-byte slot", bytes, slot_bytes_));
  }
  StdMutexLock lock(&mu_);
  const size_t slot = TakeSlotLocked(hash, evicted);
  fill(absl::MakeSpan(base_ + slot * slot_bytes_, bytes));
  lru_.push_back(hash);
  entries_[hash] = Entry{slot, bytes, std::prev(lru_.end())};
  used_bytes_ += bytes;
  return absl::OkStatus();
}

absl::Status DramTier::Put(BlockHash hash, absl::Span<const uint8_t> value, std::vector<BlockHash>* evicted) {
  return PutWith(
      hash, value.size(),
      [&](absl::Span<uint8_t> slot) { std::memcpy(slot.data(), value.data(), value.size()); }, evicted);
}

bool DramTier::Get(BlockHash hash, absl::FunctionRef<void(absl::Span<const uint8_t>)> visit) {
  StdMutexLock lock(&mu_);
  auto it = entries_.find(hash);
  if (it == entries_.end()) return false;
  lru_.splice(lru_.end(), lru_, it->second.lru);
  visit(absl::MakeConstSpan(base_ + it->second.slot * slot_bytes_, it->second.bytes));
  return true;
}

bool DramTier::Contains(BlockHash hash) const {
  StdMutexLock lock(&mu_);
  return entries_.contains(hash);
}

bool DramTier::Erase(BlockHash hash) {
  StdMutexLock lock(&mu_);
  auto it = entries_.find(hash);
  if (it == entries_.end()) return false;
  free_slots_.push_back(it->second.slot);
  used_bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  return true;
}

std::vector<BlockHash> DramTier::Keys() const {
  StdMutexLock lock(&mu_);
  return std::vector<BlockHash>(lru_.begin(), lru_.end());
}

std::optional<DramTier::Location> DramTier::Locate(BlockHash hash) const {
  StdMutexLock lock(&mu_);
  auto it = entries_.find(hash);
  if (it == entries_.end()) return std::nullopt;
  return Location{it->second.slot * slot_bytes_, it->second.bytes};
}

size_t DramTier::used_bytes() const {
  StdMutexLock lock(&mu_);
  return used_bytes_;
}

size_t DramTier::slots_in_use() const {
  StdMutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace tandem::kvstore
