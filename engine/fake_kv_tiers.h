// An in-memory KvTiers for the engine's tests: a map from hash to the block's
// tokens and bytes, no eviction, no I/O, so KvManager, TierLoader and Engine
// are tested without kvstore (TieredStore has its own tests; the two together
// are tests/engine_tiers_test.cc).
//
//   FakeKvTiers tiers({.model_id = "m", .block_tokens = 4, .payload_bytes = 256});
//   tiers.Insert(hash, tokens, bytes);           // as if offloaded earlier
//   kv_options.tiers = &tiers;
//   ... tiers.Erase(hash) from another thread: a Load after MayHold misses ...
//
// Thread safety: every method from any thread (one std::mutex; std, not
// absl::Mutex, so the engine's async tests stay TSan-clean like kvstore's).
#ifndef TANDEM_ENGINE_FAKE_KV_TIERS_H_
#define TANDEM_ENGINE_FAKE_KV_TIERS_H_

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/kv_tiers.h"

namespace tandem::engine {

class FakeKvTiers : public KvTiers {
 public:
  struct Options {
    // The blocks' model and shape. Default: "" / 0 / 0 (set them).
    std::string model_id;
    int32_t block_tokens = 0;
    size_t payload_bytes = 0;
    // MayHold says true for every block, as with a shared store below that
    // only a Load asks (which then misses unless Insert put it). Default: false.
    bool remote_below = false;
  };
  struct Stats {
    int64_t offloads = 0;
    int64_t loads = 0;  // successful
    int64_t misses = 0;
  };

  explicit FakeKvTiers(Options options) : options_(std::move(options)) {}

  const std::string& model_id() const override { return options_.model_id; }
  int32_t block_tokens() const override { return options_.block_tokens; }
  size_t payload_bytes() const override { return options_.payload_bytes; }

  absl::Status Offload(BlockHash hash, absl::Span<const int32_t> tokens,
                       absl::Span<const uint8_t> payload) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.offloads;
    return InsertLocked(hash, tokens, payload, KvTierSource::kDram);
  }

  absl::StatusOr<KvTierSource> Load(BlockHash hash, absl::Span<const int32_t> tokens,
                                    absl::Span<uint8_t> payload_out) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = blocks_.find(hash);
    if (it == blocks_.end() ||
        !std::equal(tokens.begin(), tokens.end(), it->second.tokens.begin(), it->second.tokens.end())) {
      ++stats_.misses;
      return absl::NotFoundError(absl::StrCat("block ", hash, " not in the fake tiers"));
    }
    if (payload_out.size() != it->second.payload.size()) {
      return absl::InvalidArgumentError("payload_out has the wrong size");
    }
    std::copy(it->second.payload.begin(), it->second.payload.end(), payload_out.begin());
    ++stats_.loads;
    return it->second.source;
  }

  bool MayHold(BlockHash hash) const override { return options_.remote_below || HoldsLocally(hash); }

  bool HoldsLocally(BlockHash hash) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return blocks_.contains(hash);
  }

  // Stores a block that Load reports as coming from `source`.
  absl::Status Insert(BlockHash hash, absl::Span<const int32_t> tokens, absl::Span<const uint8_t> payload,
                      KvTierSource source = KvTierSource::kDram) {
    std::lock_guard<std::mutex> lock(mu_);
    return InsertLocked(hash, tokens, payload, source);
  }
  void Erase(BlockHash hash) {
    std::lock_guard<std::mutex> lock(mu_);
    blocks_.erase(hash);
  }
  Stats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  struct Block {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> payload;
    KvTierSource source = KvTierSource::kDram;
  };

  absl::Status InsertLocked(BlockHash hash, absl::Span<const int32_t> tokens,
                            absl::Span<const uint8_t> payload, KvTierSource source) {
    if (tokens.size() != static_cast<size_t>(options_.block_tokens) ||
        payload.size() != options_.payload_bytes) {
      return absl::InvalidArgumentError("block of the wrong shape");
    }
    blocks_[hash] = Block{{tokens.begin(), tokens.end()}, {payload.begin(), payload.end()}, source};
    return absl::OkStatus();
  }

  const Options options_;
  mutable std::mutex mu_;
  absl::flat_hash_map<BlockHash, Block> blocks_;  // guarded by mu_
  Stats stats_;                                   // guarded by mu_
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_FAKE_KV_TIERS_H_
