#include "decode_worker/landing_area.h"

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace tandem::decode_worker {
namespace {

// A hung device, not a slow one: a reservation's blocks copy in milliseconds.
constexpr absl::Duration kCopyTimeout = absl::Seconds(10);

}  // namespace

LandingArea::Slots& LandingArea::Slots::operator=(Slots&& other) noexcept {
  if (this != &other) {
    Return();
    area_ = other.area_;
    ids_ = std::move(other.ids_);
    other.area_ = nullptr;
  }
  return *this;
}

void LandingArea::Slots::Return() {
  if (area_ != nullptr) area_->Release(ids_);
  area_ = nullptr;
  ids_.clear();
}

absl::StatusOr<std::unique_ptr<LandingArea>> LandingArea::Create(kernels::Backend* backend,
                                                                 transfer::TransferEngine* transfer,
                                                                 size_t block_bytes, int32_t slots) {
  if (slots < 1 || block_bytes == 0) {
    return absl::InvalidArgumentError("landing area: needs at least one slot of a non-empty block");
  }
  std::unique_ptr<LandingArea> area(new LandingArea(backend, transfer, block_bytes, slots));
  const size_t bytes = block_bytes * static_cast<size_t>(slots);
  TANDEM_ASSIGN_OR_RETURN(void* base, backend->AllocatePinnedHost(bytes));
  area->base_ = static_cast<uint8_t*>(base);
  absl::StatusOr<transfer::RegisteredRegion> region =
      transfer->Register(base, bytes, transfer::MemoryKind::kHost);
  if (!region.ok()) {
    backend->FreePinnedHost(base);
    area->base_ = nullptr;
    return region.status();
  }
  area->region_ = *region;
  absl::StatusOr<std::unique_ptr<kernels::CopyStream>> stream = backend->CreateCopyStream();
  if (!stream.ok()) return stream.status();  // the destructor unregisters and frees
  {
    absl::MutexLock lock(&area->copy_mu_);
    area->stream_ = *std::move(stream);
  }
  absl::MutexLock lock(&area->mu_);
  for (int32_t s = slots - 1; s >= 0; --s) area->free_.push_back(s);
  return area;
}

LandingArea::~LandingArea() {
  if (base_ == nullptr) return;
  (void)transfer_->Unregister(region_.region_id);
  {
    absl::MutexLock lock(&copy_mu_);
    stream_.reset();  // waits for its copies
  }
  backend_->FreePinnedHost(base_);
}

int32_t LandingArea::free_slots() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(free_.size());
}

absl::StatusOr<LandingArea::Slots> LandingArea::Acquire(int32_t n) {
  absl::MutexLock lock(&mu_);
  if (n < 0 || static_cast<size_t>(n) > free_.size()) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("KV landing slots: %d wanted, %d of %d free (transfers in flight hold the rest)", n,
                        free_.size(), num_slots_));
  }
  std::vector<int32_t> ids(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  return Slots(this, std::move(ids));
}

void LandingArea::Release(absl::Span<const int32_t> ids) {
  absl::MutexLock lock(&mu_);
  free_.insert(free_.end(), ids.begin(), ids.end());
}

absl::Status LandingArea::CopyToPool(const Slots& slots, absl::Span<const absl::Span<uint8_t>> pool_blocks) {
  if (slots.ids().size() != pool_blocks.size()) {
    return absl::InternalError(
        absl::StrFormat("landing area: %d slots for %d pool blocks", slots.ids().size(), pool_blocks.size()));
  }
  absl::MutexLock lock(&copy_mu_);
  for (size_t i = 0; i < pool_blocks.size(); ++i) {
    if (pool_blocks[i].size() != block_bytes_) {
      return absl::InternalError("landing area: a pool block of the wrong size");
    }
    stream_->FromHost(SlotBytes(slots.ids()[i]).data(), block_bytes_, pool_blocks[i].data());
  }
  return stream_->Synchronize(absl::Now() + kCopyTimeout);
}

}  // namespace tandem::decode_worker
