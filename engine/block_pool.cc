#include "engine/block_pool.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace tandem::engine {

absl::StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(const Options& options) {
  if (options.num_blocks <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockPool: num_blocks must be > 0, got ", options.num_blocks));
  }
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockPool: block_size must be > 0, got ", options.block_size));
  }
  if (int64_t{options.num_blocks} * options.block_size > std::numeric_limits<int32_t>::max()) {
    // Slots (block * block_size + offset) are int32_t.
    return absl::InvalidArgumentError(absl::StrCat("BlockPool: num_blocks * block_size overflows int32: ",
                                                   options.num_blocks, " * ", options.block_size));
  }
  return std::unique_ptr<BlockPool>(new BlockPool(options));
}

int32_t BlockPool::BlocksForBudget(size_t bytes, const kernels::KvLayout& layout) {
  if (layout.num_layers <= 0 || layout.num_kv_heads <= 0 || layout.head_dim <= 0 || layout.block_size <= 0) {
    return 0;
  }
  const size_t block_bytes = layout.BlockBytes();
  if (block_bytes == 0) return 0;
  const size_t n = bytes / block_bytes;
  return static_cast<int32_t>(std::min<size_t>(n, static_cast<size_t>(std::numeric_limits<int32_t>::max())));
}

BlockPool::BlockPool(const Options& options)
    : num_blocks_(options.num_blocks),
      block_size_(options.block_size),
      on_evict_(options.on_evict),
      on_commit_(options.on_commit),
      block_bytes_(options.block_bytes),
      refcount_(num_blocks_, 0),
      cached_(num_blocks_, false),
      hash_(num_blocks_, 0),
      tokens_(static_cast<size_t>(num_blocks_) * block_size_, 0),
      lru_prev_(num_blocks_ + 1, num_blocks_),
      lru_next_(num_blocks_ + 1, num_blocks_) {
  free_.reserve(num_blocks_);
  // A stack: push high ids first so block 0 is handed out first.
  for (int32_t b = num_blocks_ - 1; b >= 0; --b) free_.push_back(b);
  cache_.reserve(num_blocks_);
}

void BlockPool::LruPushBack(int32_t block) {
  const int32_t sentinel = num_blocks_;
  const int32_t last = lru_prev_[sentinel];
  lru_prev_[block] = last;
  lru_next_[block] = sentinel;
  lru_next_[last] = block;
  lru_prev_[sentinel] = block;
  ++num_evictable_;
}

void BlockPool::LruRemove(int32_t block) {
  const int32_t prev = lru_prev_[block];
  const int32_t next = lru_next_[block];
  lru_next_[prev] = next;
  lru_prev_[next] = prev;
  lru_prev_[block] = num_blocks_;
  lru_next_[block] = num_blocks_;
  --num_evictable_;
}

void BlockPool::Uncache(int32_t block) {
  cache_.erase(hash_[block]);
  cached_[block] = false;
  hash_[block] = 0;
}

absl::Span<const int32_t> BlockPool::TokensOf(int32_t block) const {
  return absl::MakeConstSpan(tokens_).subspan(static_cast<size_t>(block) * block_size_, block_size_);
}

absl::StatusOr<int32_t> BlockPool::Allocate() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (num_evictable_ > 0) {
    block = lru_next_[num_blocks_];  // least recently used
    LruRemove(block);
    if (on_evict_) {
      EvictedBlock evicted;
      evicted.hash = hash_[block];
      evicted.block_id = block;
      evicted.tokens = TokensOf(block);
      if (block_bytes_) evicted.bytes = block_bytes_(block);
      on_evict_(evicted);
    }
    Uncache(block);
    ++stats_.evictions;
  } else {
    return absl::ResourceExhaustedError(absl::StrCat("BlockPool: all ", num_blocks_, " blocks are in use"));
  }
  refcount_[block] = 1;
  return block;
}

void BlockPool::AddRef(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " out of range");
  TANDEM_CHECK(refcount_[block] > 0, "AddRef on unreferenced block ", block);
  ++refcount_[block];
}

void BlockPool::Release(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " out of range");
  TANDEM_CHECK(refcount_[block] > 0, "Release of unreferenced block ", block, " (double free?)");
  if (--refcount_[block] > 0) return;
  if (cached_[block]) {
    LruPushBack(block);
  } else {
    free_.push_back(block);
  }
}

bool BlockPool::Commit(int32_t block, BlockHash hash, absl::Span<const int32_t> tokens) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " out of range");
  TANDEM_CHECK(refcount_[block] > 0, "Commit of unreferenced block ", block);
  TANDEM_CHECK(static_cast<int32_t>(tokens.size()) == block_size_, "Commit of ", tokens.size(),
               " tokens into a block of ", block_size_);
  if (cached_[block]) {
    TANDEM_CHECK(hash_[block] == hash, "block ", block, " re-committed under hash ", hash,
                 ", already registered as ", hash_[block]);
    return true;
  }
  const auto [it, inserted] = cache_.try_emplace(hash, block);
  if (!inserted) return false;  // Another block holds this hash: keep it.
  cached_[block] = true;
  hash_[block] = hash;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<ptrdiff_t>(block) * block_size_);
  if (on_commit_) on_commit_(hash);
  return true;
}

std::optional<int32_t> BlockPool::Lookup(BlockHash hash, absl::Span<const int32_t> tokens) {
  const auto it = cache_.find(hash);
  if (it == cache_.end()) {
    ++stats_.misses;
    return std::nullopt;
  }
  const int32_t block = it->second;
  const absl::Span<const int32_t> cached = TokensOf(block);
  if (!std::equal(tokens.begin(), tokens.end(), cached.begin(), cached.end())) {
    ++stats_.misses;
    ++stats_.collisions;
    return std::nullopt;
  }
  if (refcount_[block] == 0) LruRemove(block);
  ++refcount_[block];
  ++stats_.hits;
  return block;
}

std::optional<int32_t> BlockPool::Peek(BlockHash hash, absl::Span<const int32_t> tokens) const {
  const auto it = cache_.find(hash);
  if (it == cache_.end()) return std::nullopt;
  const absl::Span<const int32_t> cached = TokensOf(it->second);
  if (!std::equal(tokens.begin(), tokens.end(), cached.begin(), cached.end())) return std::nullopt;
  return it->second;
}

std::optional<BlockHash> BlockPool::HashOf(int32_t block) const {
  TANDEM_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " out of range");
  if (!cached_[block]) return std::nullopt;
  return hash_[block];
}

int32_t BlockPool::RefCount(int32_t block) const {
  TANDEM_CHECK(block >= 0 && block < num_blocks_, "block id ", block, " out of range");
  return refcount_[block];
}

absl::Status BlockPool::CheckInvariants() const {
  const int32_t sentinel = num_blocks_;
  std::vector<uint8_t> on_free(num_blocks_, 0);
  std::vector<uint8_t> on_lru(num_blocks_, 0);

  for (int32_t b : free_) {
    if (b < 0 || b >= num_blocks_) {
      return absl::InternalError(absl::StrCat("free list holds out-of-range id ", b));
    }
    if (on_free[b]) return absl::InternalError(absl::StrCat("block ", b, " twice on free list"));
    on_free[b] = 1;
  }

  // Walk the LRU list forwards, checking the back links; bounded so that a
  // cycle is reported rather than looped on.
  int32_t lru_len = 0;
  int32_t last = sentinel;
  for (int32_t prev = sentinel, b = lru_next_[sentinel]; b != sentinel; prev = b, b = lru_next_[b]) {
    if (b < 0 || b > num_blocks_) {
      return absl::InternalError(absl::StrCat("LRU list holds out-of-range id ", b));
    }
    if (lru_prev_[b] != prev) {
      return absl::InternalError(
          absl::StrCat("LRU back link of block ", b, " is ", lru_prev_[b], ", expected ", prev));
    }
    if (on_lru[b]) return absl::InternalError(absl::StrCat("block ", b, " twice on LRU list"));
    on_lru[b] = 1;
    last = b;
    if (++lru_len > num_blocks_) return absl::InternalError("LRU list is longer than the pool");
  }
  if (lru_prev_[sentinel] != last) {
    return absl::InternalError(
        absl::StrCat("LRU tail is ", lru_prev_[sentinel], ", the walk ended at ", last));
  }
  if (lru_len != num_evictable_) {
    return absl::InternalError(
        absl::StrCat("LRU list has ", lru_len, " blocks, num_evictable_ is ", num_evictable_));
  }

  int32_t num_cached = 0;
  for (int32_t b = 0; b < num_blocks_; ++b) {
    const int32_t rc = refcount_[b];
    if (rc < 0) return absl::InternalError(absl::StrCat("block ", b, " has refcount ", rc));
    const bool is_free = on_free[b];
    const bool is_referenced = rc > 0;
    const bool is_evictable = on_lru[b];
    if (static_cast<int>(is_free) + is_referenced + is_evictable != 1) {
      return absl::InternalError(absl::StrCat(
          "block ", b, " is free=", is_free, " referenced=", is_referenced, " evictable=", is_evictable,
          " (exactly one expected), cached=", static_cast<bool>(cached_[b])));
    }
    if (is_free && cached_[b]) {
      return absl::InternalError(absl::StrCat("free block ", b, " is still cached"));
    }
    if (is_evictable && !cached_[b]) {
      return absl::InternalError(absl::StrCat("LRU block ", b, " is not cached"));
    }
    if (!is_evictable && (lru_prev_[b] != sentinel || lru_next_[b] != sentinel)) {
      return absl::InternalError(absl::StrCat("block ", b, " off the LRU has stale links"));
    }
    if (cached_[b]) {
      ++num_cached;
      const auto it = cache_.find(hash_[b]);
      if (it == cache_.end() || it->second != b) {
        return absl::InternalError(
            absl::StrCat("block ", b, " is cached as ", hash_[b], " but the map disagrees"));
      }
    }
  }
  if (num_cached != static_cast<int32_t>(cache_.size())) {
    return absl::InternalError(
        absl::StrCat(num_cached, " cached blocks but the hash map has ", cache_.size(), " entries"));
  }
  for (const auto& [hash, b] : cache_) {
    if (b < 0 || b >= num_blocks_ || !cached_[b] || hash_[b] != hash) {
      return absl::InternalError(
          absl::StrCat("hash map entry ", hash, " -> ", b, " disagrees with the block"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem::engine
