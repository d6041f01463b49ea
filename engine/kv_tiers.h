// What the engine needs from the KV tiers below its pool (DRAM, SSD, a shared
// store), as an interface the engine owns: the engine offloads the blocks its
// pool evicts, and continues a prompt's cached prefix into the tiers, copying
// hits into pool blocks (KvManager, "Tiers"; TierLoader). kvstore's
// TieredStore implements it; the engine links no tier implementation (no
// UCX, no RocksDB), and its tests use engine/fake_kv_tiers.h.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<kvstore::TieredStore> store,
//                           kvstore::TieredStore::Create(store_options));
//   EngineOptions options;
//   options.tiers = store.get();  // a TieredStore is a KvTiers; outlives the engine
//
// Every block has the shape block_tokens() / payload_bytes() and belongs to
// model_id(); KvManager and Engine::Create check those against their pool.
//
// Thread safety: implementations must allow every method from any thread at
// once: the engine thread offloads and looks up while the KvManager's loader
// thread loads.
#ifndef TANDEM_ENGINE_KV_TIERS_H_
#define TANDEM_ENGINE_KV_TIERS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"

namespace tandem::engine {

// Where a loaded block came from (KvManager counts DRAM hits apart from the
// slower rest).
enum class KvTierSource { kDram, kSsd, kRemote };

class KvTiers {
 public:
  virtual ~KvTiers() = default;

  // The model whose blocks the tiers hold (as in every block hash), tokens
  // per block and KV bytes per block. Fixed for the object's life.
  virtual const std::string& model_id() const = 0;
  virtual int32_t block_tokens() const = 0;
  virtual size_t payload_bytes() const = 0;

  // Takes a block the pool evicts (HBM -> tiers). An error means the block
  // was not kept; the engine drops it (the tiers are a cache). Must not
  // block for long: it runs inside the engine's allocation.
  virtual absl::Status Offload(BlockHash hash, absl::Span<const int32_t> tokens,
                               absl::Span<const uint8_t> payload) = 0;

  // Copies the block's KV bytes into `payload_out` (payload_bytes long) and
  // says where they came from. `tokens` must equal the stored tokens (else a
  // miss: a hash collision). NotFound on a miss; any error leaves the block
  // to be recomputed by the caller.
  virtual absl::StatusOr<KvTierSource> Load(BlockHash hash, absl::Span<const int32_t> tokens,
                                            absl::Span<uint8_t> payload_out) = 0;

  // Whether Load may find the block (a local tier holds it, or there is a
  // tier below that only a Load asks). No I/O. StartSequence takes a pool
  // block for each such block of a prompt's prefix.
  virtual bool MayHold(BlockHash hash) const = 0;

  // Whether a tier of this process holds the block now. No I/O. MatchPrefix
  // (admission's estimate) counts these.
  virtual bool HoldsLocally(BlockHash hash) const = 0;
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_KV_TIERS_H_
