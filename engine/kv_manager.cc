#include "engine/kv_manager.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tandem::engine {

absl::StatusOr<std::unique_ptr<KvManager>> KvManager::Create(const Options& options, BlockPool* pool) {
  if (pool == nullptr) return absl::InvalidArgumentError("KvManager: pool is null");
  if (options.model_id.empty()) {
    return absl::InvalidArgumentError("KvManager: model_id must be set (it names every block)");
  }
  if (options.block_size != 0 && options.block_size != pool->block_size()) {
    return absl::InvalidArgumentError(absl::StrCat("KvManager: block_size ", options.block_size,
                                                   " differs from the pool's ", pool->block_size()));
  }
  if (options.max_queued_tier_loads < 1) {
    return absl::InvalidArgumentError("KvManager: max_queued_tier_loads must be >= 1");
  }
  if (options.tiers != nullptr) {
    if (!options.block_memory) {
      return absl::InvalidArgumentError("KvManager: tiers need block_memory to copy hits into");
    }
    if (options.tiers->block_tokens() != pool->block_size() ||
        options.tiers->model_id() != options.model_id) {
      return absl::InvalidArgumentError(
          absl::StrCat("KvManager: the KV tiers hold blocks of ", options.tiers->block_tokens(),
                       " tokens of model '", options.tiers->model_id(), "', the pool ", pool->block_size(),
                       " tokens of '", options.model_id, "'"));
    }
  }
  std::unique_ptr<KvManager> manager(new KvManager(options, pool, pool->block_size()));
  if (options.tiers != nullptr) {
    // One copier per thread that copies: this one for the engine thread, one
    // for the loader's.
    const size_t bytes = options.tiers->payload_bytes();
    TANDEM_ASSIGN_OR_RETURN(manager->sync_copier_, PoolCopier::Create(options.backend, bytes));
    if (options.async_tier_loads) {
      TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<PoolCopier> copier, PoolCopier::Create(options.backend, bytes));
      manager->loader_ =
          std::make_unique<TierLoader>(manager->tiers_,
                                       TierLoader::Options{.max_queued_jobs = options.max_queued_tier_loads,
                                                           .hook = options.tier_load_hook},
                                       std::move(copier));
    }
  }
  return manager;
}

KvManager::KvManager(const Options& options, BlockPool* pool, int32_t block_size)
    : model_id_(options.model_id),
      block_size_(block_size),
      seed_(ModelSeed(options.model_id)),
      pool_(pool),
      tiers_(options.tiers),
      block_memory_(options.block_memory),
      tier_load_hook_(options.tier_load_hook) {}

KvManager::~KvManager() {
  loader_.reset();  // no copy runs into a block after this
  for (auto& [id, seq] : seqs_) {
    for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) pool_->Release(*it);
  }
}

int32_t KvManager::BlocksForTokens(int32_t tokens) const {
  if (tokens <= 0) return 0;
  return static_cast<int32_t>((int64_t{tokens} + block_size_ - 1) / block_size_);
}

absl::StatusOr<int32_t> KvManager::StartSequence(int64_t seq_id, absl::Span<const int32_t> prompt_tokens,
                                                 bool wait_for_loads) {
  if (prompt_tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": empty prompt"));
  }
  if (prompt_tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq_id, ": prompt of ", prompt_tokens.size(), " tokens is too long"));
  }
  const auto [it, inserted] = seqs_.try_emplace(seq_id);
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already started"));
  }
  Sequence& seq = it->second;
  // Pool hits are referenced as they are found; tier hits get a pool block
  // each, whose KV is copied in now or by the loader (see the header).
  const bool sync = loader_ == nullptr || wait_for_loads;
  TierLoader::Job job{.id = seq_id, .loads = {}};
  TierLoader::Result sync_result{.id = seq_id};
  auto in_pool = [&](BlockHash hash, absl::Span<const int32_t> tokens) {
    const std::optional<int32_t> block = pool_->Lookup(hash, tokens);
    if (!block.has_value()) return false;
    seq.blocks.push_back(*block);
    seq.hashes.push_back(hash);
    return true;
  };
  auto in_tiers = [&](BlockHash hash, absl::Span<const int32_t> tokens) {
    if (!tiers_->MayHold(hash) || pool_->num_free_blocks() == 0) return false;
    absl::StatusOr<int32_t> block = pool_->Allocate();  // may evict an HBM block into the tiers
    if (!block.ok()) return false;
    seq.blocks.push_back(*block);
    seq.loading_hashes.push_back(hash);
    seq.loading_tokens.insert(seq.loading_tokens.end(), tokens.begin(), tokens.end());
    if (!sync) {
      job.loads.push_back({hash, std::vector<int32_t>(tokens.begin(), tokens.end()), block_memory_(*block)});
      return true;
    }
    // Copy before the next Allocate, whose eviction could push this block
    // out of a small DRAM tier.
    const int32_t index = sync_result.requested++;
    if (tier_load_hook_) tier_load_hook_(seq_id, index, hash);
    KvTierSource source = KvTierSource::kDram;
    const absl::Status loaded = sync_copier_->Write(block_memory_(*block), [&](absl::Span<uint8_t> host) {
      absl::StatusOr<KvTierSource> tier = tiers_->Load(hash, tokens, host);
      if (tier.ok()) source = *tier;
      return tier.status();
    });
    if (!loaded.ok()) {  // evicted meanwhile, a collision, or corrupt: compute it instead
      sync_result.error = loaded;
      return false;
    }
    ++sync_result.loaded;
    ++(source == KvTierSource::kDram ? sync_result.dram : sync_result.ssd);
    return true;
  };
  WalkPrefix(prompt_tokens, in_pool, in_tiers);
  stats_.hbm_hit_blocks += static_cast<int64_t>(seq.hashes.size());
  ++stats_.sequences_started;
  stats_.prompt_tokens += static_cast<int64_t>(prompt_tokens.size());
  const int32_t hbm_tokens = static_cast<int32_t>(seq.hashes.size()) * block_size_;
  stats_.cached_prompt_tokens += hbm_tokens;
  if (seq.loading_hashes.empty()) return hbm_tokens;
  seq.loading = true;
  if (sync) {
    stats_.sync_load_blocks += sync_result.requested;
    return FinishLoads(seq_id, seq, sync_result).cached_tokens;
  }
  const int32_t num_loads = static_cast<int32_t>(job.loads.size());
  if (loader_->Submit(std::move(job))) {
    ++num_loading_;
    stats_.async_load_blocks += num_loads;
    return static_cast<int32_t>(seq.blocks.size()) * block_size_;
  }
  // The loader's queue is full: copy here, now (a failed Submit left `job` intact).
  stats_.sync_load_blocks += num_loads;
  return FinishLoads(seq_id, seq, TierLoader::Run(tiers_, sync_copier_.get(), job, tier_load_hook_, {}))
      .cached_tokens;
}

KvManager::LoadDone KvManager::FinishLoads(int64_t seq_id, Sequence& seq, const TierLoader::Result& result) {
  TANDEM_CHECK(seq.loading && result.requested == static_cast<int32_t>(seq.loading_hashes.size()) &&
                   result.loaded <= result.requested,
               "FinishLoads: sequence ", seq_id, " loads ", seq.loading_hashes.size(),
               " blocks, result says ", result.loaded, " of ", result.requested);
  for (int32_t j = 0; j < result.loaded; ++j) {
    const absl::Span<const int32_t> tokens =
        absl::MakeConstSpan(seq.loading_tokens).subspan(static_cast<size_t>(j) * block_size_, block_size_);
    pool_->Commit(seq.blocks[seq.hashes.size()], seq.loading_hashes[j], tokens);
    seq.hashes.push_back(seq.loading_hashes[j]);
  }
  // Blocks past the loaded ones stay in the table, private and uncommitted:
  // the caller computes their KV.
  seq.loading = false;
  seq.loading_hashes.clear();
  seq.loading_tokens.clear();
  stats_.dram_hit_blocks += result.dram;
  stats_.ssd_hit_blocks += result.ssd;
  stats_.failed_load_blocks += result.requested - result.loaded;
  stats_.cached_prompt_tokens += int64_t{result.loaded} * block_size_;
  LoadDone done;
  done.seq_id = seq_id;
  done.cached_tokens = static_cast<int32_t>(seq.hashes.size()) * block_size_;
  done.loaded_blocks = result.loaded;
  done.failed_blocks = result.requested - result.loaded;
  done.error = result.error;
  return done;
}

bool KvManager::IsLoading(int64_t seq_id) const {
  const auto it = seqs_.find(seq_id);
  return it != seqs_.end() && it->second.loading;
}

std::vector<KvManager::LoadDone> KvManager::PollLoads() {
  std::vector<LoadDone> out;
  if (loader_ == nullptr || num_loading_ == 0) return out;
  for (const TierLoader::Result& r : loader_->Poll()) {
    const auto it = seqs_.find(r.id);
    // Cancelled sequences report nothing (FreeSequence cancels first).
    TANDEM_CHECK(it != seqs_.end() && it->second.loading, "PollLoads: result for sequence ", r.id,
                 ", which is not loading");
    --num_loading_;
    out.push_back(FinishLoads(r.id, it->second, r));
  }
  return out;
}

bool KvManager::WaitForLoads(absl::Time deadline) {
  if (loader_ == nullptr || num_loading_ == 0) return false;
  return loader_->WaitForResult(deadline);
}

KvManager::PrefixWalk KvManager::WalkPrefix(absl::Span<const int32_t> prompt_tokens, PrefixStep in_pool,
                                            PrefixStep in_tiers) const {
  PrefixWalk walk;
  if (prompt_tokens.empty()) return walk;
  const size_t max_blocks = (prompt_tokens.size() - 1) / block_size_;
  BlockHash prev = seed_;
  bool pool_phase = true;
  for (size_t i = 0; i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    if (pool_phase && in_pool(hash, tokens)) {
      ++walk.pool_blocks;
    } else {
      pool_phase = false;
      if (tiers_ == nullptr || !in_tiers(hash, tokens)) break;
      ++walk.tier_blocks;
    }
    prev = hash;
  }
  return walk;
}

KvManager::PrefixMatch KvManager::MatchPrefix(absl::Span<const int32_t> prompt_tokens) const {
  PrefixMatch match;
  auto in_pool = [&](BlockHash hash, absl::Span<const int32_t> tokens) {
    const std::optional<int32_t> block = pool_->Peek(hash, tokens);
    if (!block.has_value()) return false;
    if (pool_->RefCount(*block) == 0) ++match.evictable_blocks;
    return true;
  };
  auto in_tiers = [&](BlockHash hash, absl::Span<const int32_t>) { return tiers_->HoldsLocally(hash); };
  const PrefixWalk walk = WalkPrefix(prompt_tokens, in_pool, in_tiers);
  match.tier_blocks = walk.tier_blocks;
  match.cached_blocks = walk.pool_blocks + walk.tier_blocks;
  match.cached_tokens = match.cached_blocks * block_size_;
  return match;
}

int32_t KvManager::BlocksToAdmit(absl::Span<const int32_t> prompt_tokens, int32_t total_tokens) const {
  const PrefixMatch match = MatchPrefix(prompt_tokens);
  const int32_t new_blocks =
      std::max(BlocksForTokens(total_tokens), match.cached_blocks) - match.cached_blocks;
  return new_blocks + match.evictable_blocks + match.tier_blocks;
}

int32_t KvManager::BlocksNeeded(int64_t seq_id, int32_t total_tokens) const {
  const auto it = seqs_.find(seq_id);
  TANDEM_CHECK(it != seqs_.end(), "unknown sequence ", seq_id);
  const int32_t have = static_cast<int32_t>(it->second.blocks.size());
  return std::max(0, BlocksForTokens(total_tokens) - have);
}

absl::Status KvManager::EnsureCapacity(int64_t seq_id, int32_t total_tokens) {
  if (total_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", seq_id, ": negative token count ", total_tokens));
  }
  const auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " not started"));
  }
  std::vector<int32_t>& blocks = it->second.blocks;
  const int32_t needed = BlocksForTokens(total_tokens) - static_cast<int32_t>(blocks.size());
  if (needed <= 0) return absl::OkStatus();
  // Check up front so that a request that cannot fit evicts nothing.
  if (needed > pool_->num_free_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("sequence ", seq_id, ": needs ", needed, " more KV blocks for ", total_tokens,
                     " tokens, the pool has ", pool_->num_free_blocks(), " free of ", pool_->num_blocks()));
  }
  const size_t old_size = blocks.size();
  for (int32_t i = 0; i < needed; ++i) {
    absl::StatusOr<int32_t> block = pool_->Allocate();
    if (!block.ok()) {
      // Unreachable while the up-front check holds; undo this call's blocks.
      while (blocks.size() > old_size) {
        pool_->Release(blocks.back());
        blocks.pop_back();
      }
      return block.status();
    }
    blocks.push_back(*block);
  }
  return absl::OkStatus();
}

void KvManager::CommitFullBlocks(int64_t seq_id, absl::Span<const int32_t> all_tokens,
                                 int32_t num_computed_tokens) {
  const auto it = seqs_.find(seq_id);
  TANDEM_CHECK(it != seqs_.end(), "CommitFullBlocks: unknown sequence ", seq_id);
  TANDEM_CHECK(num_computed_tokens >= 0 && static_cast<size_t>(num_computed_tokens) <= all_tokens.size(),
               "CommitFullBlocks: ", num_computed_tokens, " computed tokens of ", all_tokens.size());
  Sequence& seq = it->second;
  TANDEM_CHECK(!seq.loading, "CommitFullBlocks: sequence ", seq_id, " is still loading from the tiers");
  const size_t full = static_cast<size_t>(num_computed_tokens / block_size_);
  TANDEM_CHECK(full <= seq.blocks.size(), "CommitFullBlocks: sequence ", seq_id, " has ", full,
               " computed full blocks but a table of ", seq.blocks.size());
  BlockHash prev = seq.hashes.empty() ? seed_ : seq.hashes.back();
  for (size_t i = seq.hashes.size(); i < full; ++i) {
    const absl::Span<const int32_t> tokens = all_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    pool_->Commit(seq.blocks[i], hash, tokens);
    seq.hashes.push_back(hash);
    prev = hash;
  }
}

absl::Span<const int32_t> KvManager::BlockTable(int64_t seq_id) const {
  const auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return {};
  return it->second.blocks;
}

int32_t KvManager::Slot(int64_t seq_id, int32_t position) const {
  const auto it = seqs_.find(seq_id);
  TANDEM_CHECK(it != seqs_.end(), "Slot: unknown sequence ", seq_id);
  const std::vector<int32_t>& blocks = it->second.blocks;
  TANDEM_CHECK(position >= 0 && position / block_size_ < static_cast<int32_t>(blocks.size()),
               "Slot: position ", position, " outside sequence ", seq_id, "'s ", blocks.size(), " blocks");
  return blocks[position / block_size_] * block_size_ + position % block_size_;
}

void KvManager::FreeSequence(int64_t seq_id) {
  const auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  if (it->second.loading && loader_ != nullptr) {
    // Before the blocks return to the pool: no copy may land in them after.
    loader_->Cancel(seq_id);
    --num_loading_;
  }
  const std::vector<int32_t>& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) pool_->Release(*b);
  seqs_.erase(it);
}

absl::Status KvManager::CheckInvariants() const {
  if (absl::Status s = pool_->CheckInvariants(); !s.ok()) return s;
  const int32_t n = pool_->num_blocks();
  std::vector<int32_t> holders(n, 0);
  std::vector<int64_t> last_holder(n, std::numeric_limits<int64_t>::min());
  for (const auto& [id, seq] : seqs_) {
    if (seq.hashes.size() + seq.loading_hashes.size() > seq.blocks.size()) {
      return absl::InternalError(absl::StrCat("sequence ", id, " has ", seq.hashes.size(), " hashes and ",
                                              seq.loading_hashes.size(), " loading blocks for ",
                                              seq.blocks.size(), " blocks"));
    }
    if (seq.loading_tokens.size() != seq.loading_hashes.size() * static_cast<size_t>(block_size_) ||
        (!seq.loading && !seq.loading_hashes.empty())) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": inconsistent loading state"));
    }
    for (size_t i = 0; i < seq.blocks.size(); ++i) {
      const int32_t b = seq.blocks[i];
      if (b < 0 || b >= n) {
        return absl::InternalError(absl::StrCat("sequence ", id, " holds bad block id ", b));
      }
      if (holders[b] > 0 && last_holder[b] == id) {
        return absl::InternalError(absl::StrCat("sequence ", id, " holds block ", b, " twice"));
      }
      ++holders[b];
      last_holder[b] = id;
      const std::optional<BlockHash> cached = pool_->HashOf(b);
      if (cached.has_value()) {
        if (i >= seq.hashes.size()) {
          return absl::InternalError(
              absl::StrCat("sequence ", id, " block ", i, " (id ", b, ") is cached but not committed by it"));
        }
        if (*cached != seq.hashes[i]) {
          return absl::InternalError(absl::StrCat("sequence ", id, " block ", i, " (id ", b,
                                                  ") is cached as ", *cached, ", the sequence's chain says ",
                                                  seq.hashes[i]));
        }
      }
    }
  }
  for (int32_t b = 0; b < n; ++b) {
    if (pool_->RefCount(b) != holders[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " has refcount ", pool_->RefCount(b), " but ",
                                              holders[b], " sequences hold it"));
    }
    if (holders[b] > 1 && !pool_->HashOf(b).has_value()) {
      return absl::InternalError(
          absl::StrCat("block ", b, " is shared by ", holders[b], " sequences but not cached"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem::engine
