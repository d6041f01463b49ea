#include "engine/kv_manager.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstore/tiered_store.h"

// Aborts on caller bugs that would corrupt the bookkeeping (see the header).
// Local until common/ grows a shared CHECK (Debian's Abseil has no absl/log).
#define TANDEM_KV_CHECK(cond, ...)                                                               \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "%s:%d: KvManager check failed: %s: %s\n", __FILE__, __LINE__, #cond, \
                   absl::StrCat(__VA_ARGS__).c_str());                                           \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)

namespace tandem::engine {

absl::StatusOr<std::unique_ptr<KvManager>> KvManager::Create(const Options& options,
                                                             BlockPool* pool) {
  if (pool == nullptr) return absl::InvalidArgumentError("KvManager: pool is null");
  if (options.model_id.empty()) {
    return absl::InvalidArgumentError("KvManager: model_id must be set (it names every block)");
  }
  if (options.block_size != 0 && options.block_size != pool->block_size()) {
    return absl::InvalidArgumentError(absl::StrCat("KvManager: block_size ", options.block_size,
                                                   " differs from the pool's ",
                                                   pool->block_size()));
  }
  if (options.tiers != nullptr) {
    if (!options.block_memory) {
      return absl::InvalidArgumentError("KvManager: tiers need block_memory to copy hits into");
    }
    if (options.tiers->options().block_tokens != pool->block_size() ||
        options.tiers->options().model_id != options.model_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KvManager: the KV tiers hold blocks of ", options.tiers->options().block_tokens,
          " tokens of model '", options.tiers->options().model_id, "', the pool ", pool->block_size(),
          " tokens of '", options.model_id, "'"));
    }
  }
  return std::unique_ptr<KvManager>(new KvManager(options, pool, pool->block_size()));
}

KvManager::KvManager(const Options& options, BlockPool* pool, int32_t block_size)
    : model_id_(options.model_id),
      block_size_(block_size),
      seed_(ModelSeed(options.model_id)),
      pool_(pool),
      tiers_(options.tiers),
      block_memory_(options.block_memory) {}

KvManager::~KvManager() {
  for (auto& [id, seq] : seqs_) {
    for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) pool_->Release(*it);
  }
}

int32_t KvManager::BlocksForTokens(int32_t tokens) const {
  if (tokens <= 0) return 0;
  return static_cast<int32_t>((int64_t{tokens} + block_size_ - 1) / block_size_);
}

absl::StatusOr<int32_t> KvManager::StartSequence(int64_t seq_id,
                                                 absl::Span<const int32_t> prompt_tokens) {
  if (prompt_tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": empty prompt"));
  }
  if (prompt_tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, ": prompt of ",
                                                   prompt_tokens.size(), " tokens is too long"));
  }
  const auto [it, inserted] = seqs_.try_emplace(seq_id);
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already started"));
  }
  Sequence& seq = it->second;
  const size_t max_blocks = (prompt_tokens.size() - 1) / block_size_;
  BlockHash prev = seed_;
  for (size_t i = 0; i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    const std::optional<int32_t> block = pool_->Lookup(hash, tokens);
    if (!block.has_value()) break;
    seq.blocks.push_back(*block);
    seq.hashes.push_back(hash);
    prev = hash;
  }
  stats_.hbm_hit_blocks += static_cast<int64_t>(seq.blocks.size());
  // Continue in the tiers: each hit is copied into a new pool block and
  // committed (synchronously; see the header).
  for (size_t i = seq.blocks.size(); tiers_ != nullptr && i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    if (!tiers_->MayHold(hash) || pool_->num_free_blocks() == 0) break;
    absl::StatusOr<int32_t> block = pool_->Allocate();  // may evict an HBM block into the tiers
    if (!block.ok()) break;
    const absl::StatusOr<kvstore::Tier> tier = tiers_->Get(hash, tokens, block_memory_(*block));
    if (!tier.ok()) {  // evicted meanwhile, a collision, or corrupt: compute it instead
      pool_->Release(*block);
      break;
    }
    pool_->Commit(*block, hash, tokens);
    ++(*tier == kvstore::Tier::kDram ? stats_.dram_hit_blocks : stats_.ssd_hit_blocks);
    seq.blocks.push_back(*block);
    seq.hashes.push_back(hash);
    prev = hash;
  }
  const int32_t cached_tokens = static_cast<int32_t>(seq.blocks.size()) * block_size_;
  ++stats_.sequences_started;
  stats_.prompt_tokens += static_cast<int64_t>(prompt_tokens.size());
  stats_.cached_prompt_tokens += cached_tokens;
  return cached_tokens;
}

KvManager::PrefixMatch KvManager::MatchPrefix(absl::Span<const int32_t> prompt_tokens) const {
  PrefixMatch match;
  if (prompt_tokens.empty()) return match;
  const size_t max_blocks = (prompt_tokens.size() - 1) / block_size_;
  BlockHash prev = seed_;
  for (size_t i = 0; i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    const std::optional<int32_t> block = pool_->Peek(hash, tokens);
    if (!block.has_value()) break;
    ++match.cached_blocks;
    if (pool_->RefCount(*block) == 0) ++match.evictable_blocks;
    prev = hash;
  }
  for (size_t i = match.cached_blocks; tiers_ != nullptr && i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * block_size_, block_size_);
    const BlockHash hash = HashBlock(prev, model_id_, tokens);
    if (!tiers_->Find(hash).has_value()) break;
    ++match.cached_blocks;
    ++match.tier_blocks;
    prev = hash;
  }
  match.cached_tokens = match.cached_blocks * block_size_;
  return match;
}

int32_t KvManager::BlocksToAdmit(absl::Span<const int32_t> prompt_tokens,
                                 int32_t total_tokens) const {
  const PrefixMatch match = MatchPrefix(prompt_tokens);
  const int32_t new_blocks =
      std::max(BlocksForTokens(total_tokens), match.cached_blocks) - match.cached_blocks;
  return new_blocks + match.evictable_blocks + match.tier_blocks;
}

int32_t KvManager::BlocksNeeded(int64_t seq_id, int32_t total_tokens) const {
  const auto it = seqs_.find(seq_id);
  TANDEM_KV_CHECK(it != seqs_.end(), "unknown sequence ", seq_id);
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
    return absl::ResourceExhaustedError(absl::StrCat(
        "sequence ", seq_id, ": needs ", needed, " more KV blocks for ", total_tokens,
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
  TANDEM_KV_CHECK(it != seqs_.end(), "CommitFullBlocks: unknown sequence ", seq_id);
  TANDEM_KV_CHECK(
      num_computed_tokens >= 0 && static_cast<size_t>(num_computed_tokens) <= all_tokens.size(),
      "CommitFullBlocks: ", num_computed_tokens, " computed tokens of ", all_tokens.size());
  Sequence& seq = it->second;
  const size_t full = static_cast<size_t>(num_computed_tokens / block_size_);
  TANDEM_KV_CHECK(full <= seq.blocks.size(), "CommitFullBlocks: sequence ", seq_id, " has ", full,
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
  TANDEM_KV_CHECK(it != seqs_.end(), "Slot: unknown sequence ", seq_id);
  const std::vector<int32_t>& blocks = it->second.blocks;
  TANDEM_KV_CHECK(position >= 0 && position / block_size_ < static_cast<int32_t>(blocks.size()),
                  "Slot: position ", position, " outside sequence ", seq_id, "'s ", blocks.size(),
                  " blocks");
  return blocks[position / block_size_] * block_size_ + position % block_size_;
}

void KvManager::FreeSequence(int64_t seq_id) {
  const auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
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
    if (seq.hashes.size() > seq.blocks.size()) {
      return absl::InternalError(absl::StrCat("sequence ", id, " has ", seq.hashes.size(),
                                              " hashes for ", seq.blocks.size(), " blocks"));
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
          return absl::InternalError(absl::StrCat("sequence ", id, " block ", i, " (id ", b,
                                                  ") is cached but not committed by it"));
        }
        if (*cached != seq.hashes[i]) {
          return absl::InternalError(absl::StrCat("sequence ", id, " block ", i, " (id ", b,
                                                  ") is cached as ", *cached,
                                                  ", the sequence's chain says ", seq.hashes[i]));
        }
      }
    }
  }
  for (int32_t b = 0; b < n; ++b) {
    if (pool_->RefCount(b) != holders[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " has refcount ", pool_->RefCount(b),
                                              " but ", holders[b], " sequences hold it"));
    }
    if (holders[b] > 1 && !pool_->HashOf(b).has_value()) {
      return absl::InternalError(
          absl::StrCat("block ", b, " is shared by ", holders[b], " sequences but not cached"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem::engine
