// The engine's paged KV block pool (the HBM tier, G1) and its prefix cache.
//
//   BlockPool::Options options;
//   options.num_blocks = BlockPool::BlocksForBudget(kv_bytes, layout);
//   options.block_size = layout.block_size;
//   options.on_evict = [&](const EvictedBlock& b) { dram_tier.Offer(b); };
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<BlockPool> pool, BlockPool::Create(options));
//
//   if (std::optional<int32_t> hit = pool->Lookup(hash, tokens)) { ... reuse *hit ... }
//   TANDEM_ASSIGN_OR_RETURN(int32_t block, pool->Allocate());  // refcount 1
//   ... compute the block's KV ...
//   pool->Commit(block, hash, tokens);  // now findable by hash
//   pool->Release(block);               // refcount 0: cached, on the LRU
//
// The pool does bookkeeping only: block ids 0..num_blocks-1, their reference
// counts, which full blocks are registered under which BlockHash, and the LRU
// order of the unreferenced cached ones. The KV bytes themselves live in one
// backend allocation owned by the engine (block b at b * KvLayout::BlockBytes());
// the pool reaches them only through Options::block_bytes, to hand them to the
// eviction hook.
//
// Every block is in exactly one of three states:
//   free       refcount 0, not cached, on the free list;
//   referenced refcount > 0 (cached or not), held by one or more users;
//   evictable  refcount 0, cached, on the LRU list: its KV is still valid
//              and a Lookup revives it; Allocate takes it only when the free
//              list is empty, least recently released first, after calling
//              Options::on_evict.
//
// Commit registers a block's hash only if no other block holds that hash
// already (the first block wins; the duplicate stays uncached and returns to
// the free list when released). A block's registration never changes until it
// is evicted.
//
// Every hot operation (Allocate, AddRef, Release, Commit, Lookup) is O(1)
// expected (Commit and Lookup also copy/compare block_size tokens).
//
// Misuse that would corrupt the bookkeeping (releasing a block with refcount
// 0, an id out of range, committing a block nobody holds) is a bug in the
// caller and aborts the process with a message.
//
// Thread safety: none, by design. A pool is owned and used by one engine
// thread (the one that runs the step loop); other threads must hand work to
// it. The eviction hook runs on that thread, inside Allocate, and must not
// call back into the pool.
#ifndef TANDEM_ENGINE_BLOCK_POOL_H_
#define TANDEM_ENGINE_BLOCK_POOL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "kernels/kv_layout.h"

namespace tandem::engine {

// What the eviction hook is told about a cached block whose id is about to be
// reused. The spans are valid only during the hook call.
struct EvictedBlock {
  BlockHash hash = 0;
  int32_t block_id = -1;
  // The block's block_size token ids, as committed.
  absl::Span<const int32_t> tokens;
  // The block's KV bytes from Options::block_bytes; empty if that is unset.
  // They are in the backend's memory (device memory for a GPU backend), so
  // the hook copies them with the backend, not with memcpy.
  absl::Span<const uint8_t> bytes;
};

class BlockPool {
 public:
  struct Options {
    // Number of blocks in the pool; ids are 0..num_blocks-1. Must be > 0.
    // Default: 0 (must be set). Fixed for the pool's lifetime.
    int32_t num_blocks = 0;

    // Tokens per block; Commit and Lookup take exactly this many tokens.
    // Must be > 0 and equal the KvLayout's block_size.
    // Default: 16. Fixed for the pool's lifetime.
    int32_t block_size = 16;

    // Called with an evictable cached block just before Allocate reuses its id
    // (the tiers copy the bytes to DRAM here and emit a Removed KV event).
    // Must not call into the pool.
    // Default: empty (evictions are silent). Fixed for the pool's lifetime.
    std::function<void(const EvictedBlock&)> on_evict;

    // Called when Commit registers a hash that was not cached (a new block
    // in the prefix cache: the KV-event Stored). Must not call into the pool.
    // Default: empty.
    std::function<void(BlockHash)> on_commit;

    // Returns the KV bytes of a block (a view into the engine's KV
    // allocation), used only to fill EvictedBlock::bytes. Must not call into
    // the pool.
    // Default: empty (EvictedBlock::bytes is an empty span).
    std::function<absl::Span<const uint8_t>(int32_t block_id)> block_bytes;
  };

  struct Stats {
    int64_t hits = 0;        // Lookups that found a block with matching tokens.
    int64_t misses = 0;      // Lookups that did not (collisions included).
    int64_t collisions = 0;  // Misses where the hash matched but the tokens did not.
    int64_t evictions = 0;   // Cached blocks reused by Allocate.
  };

  // Fails with InvalidArgument on a bad num_blocks or block_size.
  static absl::StatusOr<std::unique_ptr<BlockPool>> Create(const Options& options);

  // How many blocks of `layout` fit in `bytes` (rounded down, at most
  // INT32_MAX); 0 if the layout describes an empty block.
  static int32_t BlocksForBudget(size_t bytes, const kernels::KvLayout& layout);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A block with refcount 1 and no hash: a free block if there is one, else
  // the least recently released evictable block (calling on_evict first).
  // ResourceExhausted if every block is referenced.
  absl::StatusOr<int32_t> Allocate();

  // Takes one more reference. REQUIRES: refcount(block) > 0.
  void AddRef(int32_t block);

  // Drops one reference. At zero a cached block becomes evictable (most
  // recently used end of the LRU); an uncached one returns to the free list.
  // REQUIRES: refcount(block) > 0.
  void Release(int32_t block);

  // Registers `block`, whose KV for `tokens` has been computed, under `hash`.
  // Returns true if `block` is (now or already) the cache's block for `hash`;
  // false if another block already holds `hash` (this one stays uncached).
  // REQUIRES: refcount(block) > 0; tokens.size() == block_size; the block is
  // not already registered under a different hash.
  bool Commit(int32_t block, BlockHash hash, absl::Span<const int32_t> tokens);

  // The cached block for `hash` if its tokens equal `tokens`, with a reference
  // taken for the caller (an evictable block leaves the LRU). std::nullopt on
  // a miss, including a hash collision (different tokens).
  std::optional<int32_t> Lookup(BlockHash hash, absl::Span<const int32_t> tokens);

  // Like Lookup, but takes no reference and changes neither the LRU order nor
  // the stats: the block Lookup would return right now, if any.
  std::optional<int32_t> Peek(BlockHash hash, absl::Span<const int32_t> tokens) const;

  // Whether some block is registered under `hash` (tokens not checked; no
  // reference taken, LRU order unchanged).
  bool Contains(BlockHash hash) const { return cache_.contains(hash); }

  // The hash `block` is registered under, if any.
  std::optional<BlockHash> HashOf(int32_t block) const;

  int32_t RefCount(int32_t block) const;

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  // Blocks Allocate can hand out without failing: free + evictable.
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_.size()) + num_evictable_; }
  // Of those, the cached ones (refcount 0, on the LRU).
  int32_t num_evictable_blocks() const { return num_evictable_; }
  // Blocks registered under a hash (referenced or evictable).
  int32_t num_cached_blocks() const { return static_cast<int32_t>(cache_.size()); }
  const Stats& stats() const { return stats_; }

  // Verifies the bookkeeping (O(num_blocks)); for tests and debug builds:
  // every block is exactly one of free / referenced / evictable; refcounts
  // are >= 0; the hash map and the per-block hashes agree; the free list has
  // no duplicates; the LRU list is well linked and holds exactly the
  // evictable blocks.
  absl::Status CheckInvariants() const;

 private:
  explicit BlockPool(const Options& options);

  // The LRU list is intrusive: prev_/next_ indexed by block id, with the
  // sentinel at index num_blocks_ (next_ of the sentinel is the least
  // recently used block, prev_ the most recently used).
  void LruPushBack(int32_t block);
  void LruRemove(int32_t block);
  // Drops `block`'s registration (map entry, hash, tokens stay as garbage).
  void Uncache(int32_t block);
  absl::Span<const int32_t> TokensOf(int32_t block) const;

  const int32_t num_blocks_;
  const int32_t block_size_;
  const std::function<void(const EvictedBlock&)> on_evict_;
  const std::function<void(BlockHash)> on_commit_;
  const std::function<absl::Span<const uint8_t>(int32_t)> block_bytes_;

  std::vector<int32_t> refcount_;
  std::vector<bool> cached_;       // registered in cache_
  std::vector<BlockHash> hash_;    // valid where cached_
  std::vector<int32_t> tokens_;    // [block][block_size], valid where cached_
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> lru_prev_;  // size num_blocks_ + 1 (sentinel last)
  std::vector<int32_t> lru_next_;
  int32_t num_evictable_ = 0;  // length of the LRU list
  absl::flat_hash_map<BlockHash, int32_t> cache_;
  Stats stats_;
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_BLOCK_POOL_H_
