// Per-sequence block tables over a BlockPool, with prefix reuse.
//
//   TANDEM_ASSIGN_OR_RETURN(auto kv, KvManager::Create({.model_id = "stories260K"}, pool));
//   TANDEM_ASSIGN_OR_RETURN(int32_t cached, kv->StartSequence(seq, prompt));  // reused prefix
//   TANDEM_RETURN_IF_ERROR(kv->EnsureCapacity(seq, prompt.size()));  // blocks for the rest
//   // With tiers (async): while kv->IsLoading(seq), compute nothing for it; each
//   // step, for (const KvManager::LoadDone& d : kv->PollLoads()) cached = d.cached_tokens.
//   ... run the model on prompt[cached:], writing KV at kv->Slot(seq, pos) ...
//   kv->CommitFullBlocks(seq, prompt, prompt.size());  // full blocks join the prefix cache
//   ... decode: EnsureCapacity(seq, n + 1), compute, CommitFullBlocks(seq, tokens, n + 1) ...
//   kv->FreeSequence(seq);  // finished, cancelled or preempted
//
// A sequence's block table maps token position p to block BlockTable(seq)[p /
// block_size] at offset p % block_size. A sequence holds one pool reference on
// each block of its table; blocks shared through the prefix cache are held by
// several sequences at once and are never written again (only full,
// committed blocks are shared, and a sequence only writes positions past its
// reused prefix).
//
// StartSequence reuses the longest prefix of the prompt whose full blocks are
// in the pool's prefix cache (chained hashes, tokens compared), but always
// leaves at least one prompt token to compute so the model produces logits
// for the next token: at most floor((prompt_len - 1) / block_size) blocks are
// reused.
//
// Admission and preemption: BlocksToAdmit(prompt, n) is exactly how much
// num_free_blocks() of the pool drops if the sequence is started and grown to n
// tokens now (MatchPrefix and StartSequence walk the prefix with the same
// WalkPrefix; the one exception: tiers with a store below that only a Load
// asks, where StartSequence takes a block for every KvTiers::MayHold block
// and MatchPrefix counts only the HoldsLocally ones); BlocksNeeded(seq, n) is
// the same for a running sequence. A
// scheduler compares those with pool->num_free_blocks(), and preempts by
// FreeSequence (the sequence's committed blocks stay cached, so restarting it
// later reuses them unless they were evicted meanwhile).
//
// Misuse that would corrupt the bookkeeping (Slot past the table, committing
// tokens past the table, an unknown sequence where one is required) aborts
// the process with a message.
//
// Tiers: with Options::tiers set, the prefix match continues past the last
// block found in the pool into the DRAM/SSD tiers (engine/kv_tiers.h):
// StartSequence allocates a pool block for each tier hit and copies the KV in
// (Options::block_memory). BlocksToAdmit counts those blocks as new
// allocations.
//   - Synchronous (Options::async_tier_loads false, or StartSequence with
//     wait_for_loads): the copies run inside StartSequence, on the caller's
//     thread; the loaded blocks are committed and counted in Stats as DRAM
//     or SSD hits before it returns. Each block is copied right after its
//     allocation (whose HBM eviction may push a later block out of a small
//     DRAM tier).
//   - Asynchronous (async_tier_loads, the default): StartSequence hands the
//     copies to a TierLoader (engine/tier_loader.h: one owned thread, bounded
//     queue; when the queue is full the copies run synchronously instead) and
//     returns the tokens the sequence will have cached if every copy
//     succeeds. All its blocks are allocated first, so in a DRAM tier too
//     small for the pool's evictions, a block may leave DRAM before its copy
//     (an SSD read instead, or a failed copy without SSD). The sequence is then loading (IsLoading): its
//     loading blocks are referenced by it alone and not in the prefix cache, so no other sequence can find,
//     reuse or evict them, and the caller must not compute on it nor CommitFullBlocks for it (it aborts)
//     until PollLoads reports it. EnsureCapacity may grow it meanwhile (blocks past the loading ones).
//     PollLoads, on the owning thread, commits the loaded blocks and returns
//     each finished sequence's final cached token count; WaitForLoads blocks
//     until one finishes or a deadline.
// A failed copy (the block left DRAM/SSD between the lookup and the copy, a
// corrupt SSD value) truncates the cached prefix to the blocks loaded before
// it; the failed block and the ones after it stay in the table as private,
// uncommitted blocks whose KV the caller computes, exactly as for a prefix
// that was never cached. FreeSequence of a loading sequence cancels its copies
// (dropping a queued job, or waiting for the block being copied) before its
// blocks return to the pool, so the loader never writes into a block that
// another sequence may hold.
//
// Thread safety: none, by design; owned by the engine thread, like the pool
// (the loader thread touches only the tiers and the loading blocks' bytes).
// The pool (and the tiers) are borrowed and must outlive the manager.
#ifndef TANDEM_ENGINE_KV_MANAGER_H_
#define TANDEM_ENGINE_KV_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "engine/block_pool.h"
#include "engine/kv_tiers.h"
#include "engine/tier_loader.h"

namespace tandem::engine {

class KvManager {
 public:
  struct Options {
    // Names the model in every block hash (see common/block_hash.h); must be
    // the same string the router and the store use for this model.
    // Default: empty, which Create rejects.
    std::string model_id;

    // Tokens per block; 0 means the pool's. If set it must equal the pool's.
    // Default: 0.
    int32_t block_size = 0;

    // Borrowed KV tiers below the pool, searched after the pool's prefix
    // cache (see the header comment); null = pool only. Its block_tokens and
    // payload_bytes must match the pool's blocks. Default: null.
    KvTiers* tiers = nullptr;

    // The KV bytes of a pool block, where tier hits are copied: an address
    // and length in `backend`'s memory, written through a PoolCopier (in
    // place when the host may touch it). Required with tiers.
    // Default: empty.
    std::function<absl::Span<uint8_t>(int32_t block_id)> block_memory;
    // The backend whose memory block_memory points into; null: host memory
    // (bookkeeping tests). Borrowed; must outlive the manager. Default: null.
    kernels::Backend* backend = nullptr;

    // Tier hits are copied by a background loader instead of inside
    // StartSequence (see "Tiers" in the header comment). Only with tiers.
    // Default: true.
    bool async_tier_loads = true;
    // Most sequences whose copies wait for the loader; past that
    // StartSequence copies synchronously. Must be >= 1. Default: 64.
    int32_t max_queued_tier_loads = 64;
    // Test hook, called before each tier copy (TierLoader::Hook; the job id
    // is the sequence id), on the thread doing the copy. Default: empty.
    TierLoader::Hook tier_load_hook;
  };

  struct Stats {
    int64_t sequences_started = 0;
    int64_t prompt_tokens = 0;         // summed over StartSequence calls
    int64_t cached_prompt_tokens = 0;  // of those, reused from the prefix cache
    // Reused blocks by where they were found: the pool (HBM), or promoted
    // from the DRAM or SSD tier.
    int64_t hbm_hit_blocks = 0;
    int64_t dram_hit_blocks = 0;
    int64_t ssd_hit_blocks = 0;
    // Tier copies by path: handed to the loader thread, or run inside
    // StartSequence (sync mode, wait_for_loads, or a full loader queue).
    int64_t async_load_blocks = 0;
    int64_t sync_load_blocks = 0;
    // Tier blocks found by the lookup but not loaded: the copy failed (or
    // came after a failed one) and the caller recomputes them.
    int64_t failed_load_blocks = 0;
  };

  // A loading sequence whose copies ended (PollLoads).
  struct LoadDone {
    int64_t seq_id = 0;
    // Final prompt tokens whose KV the sequence holds (pool hits plus the
    // loaded blocks), a multiple of block_size.
    int32_t cached_tokens = 0;
    int32_t loaded_blocks = 0;
    int32_t failed_blocks = 0;  // requested but not loaded
    absl::Status error;         // the first failed copy, OK if none
  };

  // What StartSequence would reuse for a prompt right now.
  struct PrefixMatch {
    int32_t cached_tokens = 0;  // = cached_blocks * block_size
    int32_t cached_blocks = 0;
    // Of the cached blocks, those now unreferenced (evictable): reusing them
    // takes them out of the pool's num_free_blocks().
    int32_t evictable_blocks = 0;
    // Of the cached blocks, those found in the tiers rather than the pool:
    // each needs a new pool block when the sequence starts.
    int32_t tier_blocks = 0;
  };

  // `pool` is borrowed and must outlive the manager. InvalidArgument on an
  // empty model_id or a block_size that differs from the pool's.
  static absl::StatusOr<std::unique_ptr<KvManager>> Create(const Options& options, BlockPool* pool);

  KvManager(const KvManager&) = delete;
  KvManager& operator=(const KvManager&) = delete;
  // Releases the blocks of every sequence still registered.
  ~KvManager();

  // Registers `seq_id` and gives it the longest cached prefix of
  // `prompt_tokens` (see the header comment); returns the number of prompt
  // tokens whose KV is already there (a multiple of block_size, < prompt
  // length). Takes no free blocks besides those for tier hits: call
  // EnsureCapacity next. With asynchronous tier loads the count includes
  // blocks still loading and may shrink (IsLoading, PollLoads);
  // wait_for_loads copies them before returning instead.
  // AlreadyExists if seq_id is registered; InvalidArgument on an empty prompt.
  absl::StatusOr<int32_t> StartSequence(int64_t seq_id, absl::Span<const int32_t> prompt_tokens,
                                        bool wait_for_loads = false);

  // Whether seq_id's tier copies have not been reported by PollLoads yet.
  bool IsLoading(int64_t seq_id) const;
  int32_t num_loading() const { return num_loading_; }

  // Sequences whose tier copies ended since the last call: their loaded
  // blocks are committed to the prefix cache and they are no longer loading.
  std::vector<LoadDone> PollLoads();

  // Waits until some loading sequence's copies ended (PollLoads has
  // something) or `deadline`; true if so. False at once if none is loading.
  bool WaitForLoads(absl::Time deadline);

  // Grows seq_id's table to cover positions [0, total_tokens). Never shrinks.
  // ResourceExhausted, with nothing allocated or evicted, if the pool has
  // fewer than BlocksNeeded(seq_id, total_tokens) free + evictable blocks.
  // NotFound for an unknown seq_id; InvalidArgument for total_tokens < 0.
  absl::Status EnsureCapacity(int64_t seq_id, int32_t total_tokens);

  // Registers in the prefix cache every full block of seq_id that is not yet
  // registered and whose KV has been computed: blocks wholly inside
  // all_tokens[0, num_computed_tokens). `all_tokens` is the sequence's tokens
  // so far (prompt then generated), at least num_computed_tokens long, and
  // must start with the prompt given to StartSequence. Blocks whose hash
  // another block already holds stay private to this sequence.
  // REQUIRES: seq_id registered; its table covers those blocks.
  void CommitFullBlocks(int64_t seq_id, absl::Span<const int32_t> all_tokens, int32_t num_computed_tokens);

  // The block ids of seq_id's table in position order; empty if unknown. The
  // span is invalidated by the next non-const call for this sequence.
  absl::Span<const int32_t> BlockTable(int64_t seq_id) const;

  // The KV slot of `position`: block * block_size + position % block_size.
  // REQUIRES: seq_id registered; 0 <= position < its table's capacity.
  int32_t Slot(int64_t seq_id, int32_t position) const;

  // Releases every block of seq_id (last block first, so that a sequence's
  // tail is evicted before its more shareable prefix) and forgets it. A
  // loading sequence's copies are cancelled first (may wait for the block
  // being copied). No-op for an unknown seq_id.
  void FreeSequence(int64_t seq_id);

  bool HasSequence(int64_t seq_id) const { return seqs_.contains(seq_id); }
  int32_t num_sequences() const { return static_cast<int32_t>(seqs_.size()); }
  int32_t block_size() const { return block_size_; }

  // ceil(tokens / block_size).
  int32_t BlocksForTokens(int32_t tokens) const;

  // Blocks EnsureCapacity(seq_id, total_tokens) would allocate (0 if the table
  // already covers them). REQUIRES: seq_id registered.
  int32_t BlocksNeeded(int64_t seq_id, int32_t total_tokens) const;

  // What StartSequence(…, prompt_tokens) would reuse now. No side effects.
  PrefixMatch MatchPrefix(absl::Span<const int32_t> prompt_tokens) const;

  // How much the pool's num_free_blocks() would drop if a sequence with this
  // prompt were started now and grown to `total_tokens` (>= prompt length).
  // No side effects.
  int32_t BlocksToAdmit(absl::Span<const int32_t> prompt_tokens, int32_t total_tokens) const;

  const Stats& stats() const { return stats_; }
  const BlockPool& pool() const { return *pool_; }

  // The pool's invariants, plus: every block's refcount equals the number of
  // sequence tables holding it (cached unreferenced blocks: 0); a block held
  // by several tables is cached; no table holds a block twice; each table's
  // committed blocks that are cached are cached under the sequence's chained
  // hash. Assumes this manager is the pool's only user taking references.
  absl::Status CheckInvariants() const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    // Chained hashes of blocks [0, hashes.size()), the ones already reused or
    // committed; CommitFullBlocks continues the chain from hashes.back().
    std::vector<BlockHash> hashes;
    // While loading: blocks [hashes.size(), hashes.size() + loading_hashes.size())
    // are being copied from the tiers; their hashes and tokens, for the
    // commit when they arrive.
    bool loading = false;
    std::vector<BlockHash> loading_hashes;
    std::vector<int32_t> loading_tokens;  // block_size per loading block
  };

  // A step of the prefix walk: whether the block (its chained hash and
  // tokens) is reused, which lets the walk go on to the next one.
  using PrefixStep = absl::FunctionRef<bool(BlockHash hash, absl::Span<const int32_t> tokens)>;
  struct PrefixWalk {
    int32_t pool_blocks = 0;  // accepted by in_pool
    int32_t tier_blocks = 0;  // accepted by in_tiers
  };

  KvManager(const Options& options, BlockPool* pool, int32_t block_size);
  // The one prefix walk StartSequence and MatchPrefix share, so that they
  // agree on a prompt's reusable blocks: the chained hashes of its full
  // blocks, at most (prompt length - 1) / block_size of them (one token is
  // always left to compute), offered in order to `in_pool` while it accepts
  // them, then (with tiers) to `in_tiers`; the first block refused ends it.
  PrefixWalk WalkPrefix(absl::Span<const int32_t> prompt_tokens, PrefixStep in_pool,
                        PrefixStep in_tiers) const;
  // Commits the loaded blocks of `seq`, ends its loading state, counts stats.
  LoadDone FinishLoads(int64_t seq_id, Sequence& seq, const TierLoader::Result& result);

  const std::string model_id_;
  const int32_t block_size_;
  const BlockHash seed_;
  BlockPool* const pool_;  // borrowed
  KvTiers* const tiers_;   // borrowed, may be null
  const std::function<absl::Span<uint8_t>(int32_t)> block_memory_;
  const TierLoader::Hook tier_load_hook_;
  // The engine thread's copier for synchronous tier loads; set with tiers.
  std::unique_ptr<PoolCopier> sync_copier_;
  absl::flat_hash_map<int64_t, Sequence> seqs_;
  int32_t num_loading_ = 0;
  Stats stats_;
  // Null without tiers or in synchronous mode. The destructor stops (joins)
  // it before releasing any block.
  std::unique_ptr<TierLoader> loader_;
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_KV_MANAGER_H_
