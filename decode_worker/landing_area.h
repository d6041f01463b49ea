// Where prefill workers write a reservation's KV when the decode worker's pool
// is memory the host may not touch (a GPU's; the CPU backend's guarded mode):
// pinned host slots of one block each, registered with the transfer engine.
// After the transfer the decode worker checks the landed bytes against the
// prefill worker's CRC32Cs, copies the slots into the reserved pool blocks on
// a copy stream and only then activates the request. (Mooncake's and NIXL's
// host-staged paths do the same; a CUDA-aware UCX or GPUDirect would let
// prefill workers write the pool directly and make this class unnecessary.)
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<LandingArea> landing,
//                           LandingArea::Create(backend, transfer, block_bytes, 256));
//   TANDEM_ASSIGN_OR_RETURN(LandingArea::Slots slots, landing->Acquire(n));  // Reserve
//   ... the prefill worker writes block i to slot slots.ids()[i] of landing->region() ...
//   TANDEM_RETURN_IF_ERROR(landing->CopyToPool(slots, pool_block_spans));     // before Activate
//
// Back-pressure: Acquire fails with RESOURCE_EXHAUSTED when the slots are all
// held by reservations in flight (the router then tries another decode
// worker); slots go back when their Slots object is destroyed.
//
// Thread safety: all methods from any thread. CopyToPool calls share one copy
// stream, one at a time.
#ifndef TANDEM_DECODE_WORKER_LANDING_AREA_H_
#define TANDEM_DECODE_WORKER_LANDING_AREA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "transfer/transfer_engine.h"

namespace tandem::decode_worker {

class LandingArea {
 public:
  // Slots held for one reservation; returned to the area when destroyed.
  class Slots {
   public:
    Slots() = default;
    Slots(Slots&& other) noexcept : area_(other.area_), ids_(std::move(other.ids_)) { other.area_ = nullptr; }
    Slots& operator=(Slots&& other) noexcept;
    ~Slots() { Return(); }
    const std::vector<int32_t>& ids() const { return ids_; }

   private:
    friend class LandingArea;
    Slots(LandingArea* area, std::vector<int32_t> ids) : area_(area), ids_(std::move(ids)) {}
    void Return();

    LandingArea* area_ = nullptr;
    std::vector<int32_t> ids_;
  };

  // `slots` blocks of pinned host memory from `backend`, registered with
  // `transfer`; both borrowed and must outlive the area.
  static absl::StatusOr<std::unique_ptr<LandingArea>> Create(kernels::Backend* backend,
                                                             transfer::TransferEngine* transfer,
                                                             size_t block_bytes, int32_t slots);
  // REQUIRES: every Slots object was destroyed.
  ~LandingArea();
  LandingArea(const LandingArea&) = delete;
  LandingArea& operator=(const LandingArea&) = delete;

  // What a reservation hands the prefill worker: slot s is at s * block_bytes.
  const transfer::RegisteredRegion& region() const { return region_; }
  int32_t num_slots() const { return num_slots_; }
  int32_t free_slots() const;

  // `n` slots, or RESOURCE_EXHAUSTED naming how many are free.
  absl::StatusOr<Slots> Acquire(int32_t n);

  // The landed bytes of slot `slot` (host memory).
  absl::Span<const uint8_t> SlotBytes(int32_t slot) const {
    return {base_ + static_cast<size_t>(slot) * block_bytes_, block_bytes_};
  }

  // Copies slot slots.ids()[i] into pool block pool_blocks[i] (backend
  // memory) for every i, and waits for the copies.
  absl::Status CopyToPool(const Slots& slots, absl::Span<const absl::Span<uint8_t>> pool_blocks);

 private:
  LandingArea(kernels::Backend* backend, transfer::TransferEngine* transfer, size_t block_bytes,
              int32_t slots)
      : backend_(backend), transfer_(transfer), block_bytes_(block_bytes), num_slots_(slots) {}
  void Release(absl::Span<const int32_t> ids);

  kernels::Backend* const backend_;
  transfer::TransferEngine* const transfer_;
  const size_t block_bytes_;
  const int32_t num_slots_;
  uint8_t* base_ = nullptr;  // pinned host memory, num_slots_ blocks
  transfer::RegisteredRegion region_;

  mutable absl::Mutex mu_;
  std::vector<int32_t> free_ ABSL_GUARDED_BY(mu_);

  absl::Mutex copy_mu_;  // one CopyToPool at a time on the stream
  std::unique_ptr<kernels::CopyStream> stream_ ABSL_GUARDED_BY(copy_mu_);
};

}  // namespace tandem::decode_worker

#endif  // TANDEM_DECODE_WORKER_LANDING_AREA_H_
