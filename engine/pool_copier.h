// Moves whole KV blocks between host memory and the engine's pool, which is
// backend memory: device memory on a GPU, and memory the host may not touch
// under the CPU backend's guarded mode (kernels/backend.h). Where the backend
// says the host may touch it (the plain CPU backend), a block is read and
// written in place, as before; otherwise through one pinned host block and
// the thread's own copy stream.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<PoolCopier> copier,
//                           PoolCopier::Create(backend, layout.BlockBytes()));
//   // tier hit -> pool block (the tiers write into host memory):
//   TANDEM_RETURN_IF_ERROR(copier->Write(pool_block_span, [&](absl::Span<uint8_t> host) {
//     return tiers->Load(hash, tokens, host).status(); }));
//   // pool block -> host (an eviction offered to the tiers):
//   TANDEM_ASSIGN_OR_RETURN(absl::Span<const uint8_t> host, copier->Read(pool_block_span));
//
// Pool spans are (address, length) in backend memory, never dereferenced
// here unless the backend is host-accessible.
//
// Thread safety: one copier per thread (each owns a copy stream and a
// staging block); the caller keeps the pool block away from concurrent ops
// (it holds the block).
#ifndef TANDEM_ENGINE_POOL_COPIER_H_
#define TANDEM_ENGINE_POOL_COPIER_H_

#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/backend.h"

namespace tandem::engine {

class PoolCopier {
 public:
  // How long one block's device copy may take before the copier gives up
  // (a hung device, not a slow one: a block copies in microseconds).
  static constexpr absl::Duration kCopyTimeout = absl::Seconds(10);

  // `backend` is borrowed and must outlive the copier. Null backend: the
  // pool is host memory (tests of the bookkeeping alone). `staging_blocks`:
  // how many blocks ReadBlocks stages at once (the pinned memory it holds).
  static absl::StatusOr<std::unique_ptr<PoolCopier>> Create(kernels::Backend* backend, size_t block_bytes,
                                                            int32_t staging_blocks = 1);
  ~PoolCopier();
  PoolCopier(const PoolCopier&) = delete;
  PoolCopier& operator=(const PoolCopier&) = delete;

  // Whether pool memory is touched in place (no staging).
  bool direct() const { return stream_ == nullptr; }
  // Most blocks one ReadBlocks takes (unbounded when direct()).
  int32_t capacity() const { return direct() ? INT32_MAX : staging_blocks_; }

  // Fills the pool block `dst` with what `fill` writes into a host block of
  // block_bytes; `fill`'s error is returned and the pool block is then
  // unspecified. In place when direct().
  absl::Status Write(absl::Span<uint8_t> dst, absl::FunctionRef<absl::Status(absl::Span<uint8_t>)> fill);

  // The bytes of the pool block `src`, in host memory valid until the next
  // call on this copier (the pool block itself when direct()).
  absl::StatusOr<absl::Span<const uint8_t>> Read(absl::Span<const uint8_t> src);

  // Read for up to capacity() blocks at once: their copies are queued
  // together and waited for once. The host views stay valid until the next
  // call. InvalidArgument past capacity().
  absl::StatusOr<std::vector<absl::Span<const uint8_t>>> ReadBlocks(
      absl::Span<const absl::Span<const uint8_t>> srcs);

 private:
  PoolCopier(kernels::Backend* backend, size_t block_bytes, int32_t staging_blocks)
      : backend_(backend), block_bytes_(block_bytes), staging_blocks_(staging_blocks) {}

  kernels::Backend* const backend_;
  const size_t block_bytes_;
  const int32_t staging_blocks_;
  std::unique_ptr<kernels::CopyStream> stream_;  // null when direct
  uint8_t* staging_ = nullptr;                   // pinned host block; null when direct
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_POOL_COPIER_H_
