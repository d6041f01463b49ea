// The DRAM tier (G2): a fixed pool of host-memory slots holding encoded KV
// block values (kvstore/block_format.h), LRU-evicted under a byte budget.
//
//   DramTier::Options options;
//   options.slot_bytes = EncodedBlockBytes(block_size, layout.BlockBytes());
//   options.capacity_bytes = size_t{4} << 30;
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<DramTier> dram, DramTier::Create(options));
//   std::vector<BlockHash> evicted;
//   TANDEM_RETURN_IF_ERROR(dram->Put(hash, value, &evicted));  // evicted: LRU victims
//   dram->Get(hash, [&](absl::Span<const uint8_t> value) { ... decode, copy out ... });
//
// Memory. capacity_bytes / slot_bytes slots are allocated once, in one region:
// plain 4 KiB-aligned host memory, or, when Options::transfer is set, memory
// allocated and registered through that TransferEngine (region()) so remote
// peers can read or write slots with UCX; Locate() gives a block's offset in
// the region. A value occupies one whole slot whatever its size, so the
// budget holds by construction: slots_in_use() * slot_bytes <= capacity_bytes.
//
// Thread safety: every method may be called from any thread. The Get
// visitor runs under the tier's lock (the slot cannot be reused while it
// reads) and must not call back into the tier.
//
// Locking uses StdMutex (common/mutex.h: std::mutex with thread-safety
// annotations, checked by scripts/check_thread_safety.sh) rather than
// absl::Mutex: Debian's libabsl is not built with ThreadSanitizer, so
// absl::Mutex's happens-before edges are invisible to TSan and a TSan build
// would report false races; with std::mutex (intercepted by TSan) the kvstore
// TSan run is meaningful.
#ifndef TANDEM_KVSTORE_DRAM_TIER_H_
#define TANDEM_KVSTORE_DRAM_TIER_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "common/mutex.h"
#include "transfer/transfer_engine.h"

namespace tandem::kvstore {

class DramTier {
 public:
  struct Options {
    // Bytes of one slot: the largest value Put accepts (normally
    // EncodedBlockBytes(block_size, KvLayout::BlockBytes())). Must be > 0.
    // Default: 0 (must be set). Fixed for the tier's lifetime.
    size_t slot_bytes = 0;

    // Byte budget; the tier holds capacity_bytes / slot_bytes slots (at least
    // one is required). Default: 0 (must be set). Fixed.
    size_t capacity_bytes = 0;

    // Borrowed; when set, the slot memory is allocated and registered through
    // it (TransferEngine::Allocate) so peers can address it, and unregistered
    // when the tier is destroyed. Must outlive the tier. Default: null (plain
    // aligned host memory).
    transfer::TransferEngine* transfer = nullptr;
  };

  // InvalidArgument for a zero slot or a budget below one slot; errors from
  // the transfer engine's Allocate; ResourceExhausted if memory is short.
  static absl::StatusOr<std::unique_ptr<DramTier>> Create(const Options& options);
  ~DramTier();
  DramTier(const DramTier&) = delete;
  DramTier& operator=(const DramTier&) = delete;

  // Stores `value` under `hash` (replacing an existing value, which becomes
  // most recently used), evicting least recently used values while no slot
  // is free; their hashes are appended to *evicted (may be null).
  // InvalidArgument if value is empty or longer than slot_bytes.
  absl::Status Put(BlockHash hash, absl::Span<const uint8_t> value, std::vector<BlockHash>* evicted);

  // Like Put, but `fill` writes the value straight into the slot (no staging
  // copy); `bytes` is its length.
  absl::Status PutWith(BlockHash hash, size_t bytes, absl::FunctionRef<void(absl::Span<uint8_t>)> fill,
                       std::vector<BlockHash>* evicted);

  // Calls `visit` with the value (under the lock) and marks it most recently
  // used; false if absent.
  bool Get(BlockHash hash, absl::FunctionRef<void(absl::Span<const uint8_t>)> visit);

  bool Contains(BlockHash hash) const;
  // False if absent.
  bool Erase(BlockHash hash);
  // Every stored hash, least recently used first.
  std::vector<BlockHash> Keys() const;

  // Offset in the slot region and length of `hash`'s value, for remote
  // readers (the value can be evicted and its slot reused at any later time).
  struct Location {
    size_t offset = 0;
    size_t bytes = 0;
  };
  std::optional<Location> Locate(BlockHash hash) const;

  // The registered region when Options::transfer was set.
  const std::optional<transfer::RegisteredRegion>& region() const { return region_; }

  size_t slot_bytes() const { return slot_bytes_; }
  size_t num_slots() const { return num_slots_; }
  size_t capacity_bytes() const { return capacity_bytes_; }
  // Sum of stored value lengths (<= slots_in_use() * slot_bytes()).
  size_t used_bytes() const;
  size_t slots_in_use() const;

 private:
  struct Entry {
    size_t slot = 0;
    size_t bytes = 0;
    std::list<BlockHash>::iterator lru;  // position in lru_
  };

  DramTier(const Options& options, uint8_t* base, size_t num_slots);
  // Returns a slot for `hash` (reusing its old one, a free one or the LRU
  // victim's).
  size_t TakeSlotLocked(BlockHash hash, std::vector<BlockHash>* evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t slot_bytes_;
  const size_t capacity_bytes_;
  const size_t num_slots_;
  transfer::TransferEngine* const transfer_;  // borrowed, may be null
  uint8_t* const base_;                       // owned (freed or unregistered in ~DramTier)
  std::optional<transfer::RegisteredRegion> region_;

  mutable StdMutex mu_;
  absl::flat_hash_map<BlockHash, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::list<BlockHash> lru_ ABSL_GUARDED_BY(mu_);  // front = least recent
  std::vector<size_t> free_slots_ ABSL_GUARDED_BY(mu_);
  size_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_DRAM_TIER_H_
