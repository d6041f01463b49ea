// The engine with KV tiers: blocks evicted from a tiny HBM pool land in the
// DRAM tier (and, written behind, on SSD); a returning prompt reuses its
// prefix from there, and greedy generation gives exactly the tokens that
// recomputing the prefix gives.
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "kvstore/tiered_store.h"
#include "model/loader.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::TempDir;

constexpr int32_t kBlock = 16;
constexpr int32_t kPromptLen = 64;  // 3 reusable blocks (one token is always computed)
constexpr int32_t kNewTokens = 8;   // 72 tokens: 5 blocks, the whole pool

class EngineTiersTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string spec = GetParam();
    if (spec == "stories260K") {
      spec = std::string(TANDEM_SHARED_DIR) + "/models/stories260K.gguf";
      if (!std::filesystem::exists(spec)) GTEST_SKIP() << spec << " not found";
    }
    ASSERT_OK_AND_ASSIGN(model_, model::LoadModel(spec));
    backend_ = kernels::CreateCpuBackend({.num_threads = 2});
    ASSERT_OK_AND_ASSIGN(llama_, model::LlamaModel::Create(model_->config, model_->weights, backend_.get()));
    std::mt19937 rng(42);
    for (auto* p : {&prompt_a_, &prompt_b_}) {
      for (int i = 0; i < kPromptLen; ++i) p->push_back(1 + static_cast<int32_t>(rng() % (model_->config.vocab_size - 1)));
    }
  }

  TieredStore::Options StoreOptions(size_t dram_blocks, const std::string& ssd_path) const {
    const kernels::KvLayout layout = model_->config.KvLayoutFor(kBlock);
    TieredStore::Options o;
    o.model_id = model_->config.model_id;
    o.block_tokens = kBlock;
    o.payload_bytes = layout.BlockBytes();
    o.dram_bytes = dram_blocks * EncodedBlockBytes(kBlock, layout.BlockBytes());
    o.ssd_path = ssd_path;
    o.ssd_bytes = size_t{64} << 20;
    o.put_timeout = absl::Seconds(10);  // a test must not drop blocks
    return o;
  }

  std::unique_ptr<engine::Engine> MakeEngine(TieredStore* tiers) {
    engine::EngineOptions options;
    options.block_size = kBlock;
    options.num_blocks = 5;
    options.tiers = tiers;
    auto e = engine::Engine::Create(options, llama_.get(), backend_.get(), model_->tokenizer.get());
    EXPECT_OK(e.status());
    return e.ok() ? std::move(*e) : nullptr;
  }

  // Runs one greedy request to the end; returns its tokens and cached count.
  std::pair<std::vector<int32_t>, int32_t> Run(engine::Engine& eng, int64_t id, const std::vector<int32_t>& prompt) {
    EXPECT_OK(eng.Add({.id = id, .prompt_tokens = prompt, .max_tokens = kNewTokens, .stop_at_eos = false}));
    std::vector<int32_t> tokens;
    int32_t cached = -1;
    while (eng.HasWork()) {
      absl::StatusOr<std::vector<engine::SequenceUpdate>> updates = eng.Step();
      EXPECT_OK(updates.status());
      if (!updates.ok()) break;
      EXPECT_OK(eng.CheckInvariants());
      for (const engine::SequenceUpdate& u : *updates) {
        tokens.insert(tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
        cached = u.cached_tokens;
      }
    }
    return {tokens, cached};
  }

  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
  std::vector<int32_t> prompt_a_, prompt_b_;
};

TEST_P(EngineTiersTest, PrefixFromDramAndSsdGivesTheRecomputedTokens) {
  // Reference: prompt A computed from scratch, no tiers.
  std::vector<int32_t> reference;
  {
    std::unique_ptr<engine::Engine> eng = MakeEngine(nullptr);
    ASSERT_NE(eng, nullptr);
    auto [tokens, cached] = Run(*eng, 1, prompt_a_);
    ASSERT_EQ(cached, 0);
    reference = tokens;
    ASSERT_EQ(reference.size(), static_cast<size_t>(kNewTokens));
  }
  TempDir dir;
  for (const bool via_ssd : {false, true}) {
    SCOPED_TRACE(via_ssd ? "via SSD" : "via DRAM");
    // Via SSD: a one-block DRAM tier keeps only the last block A lost (its
    // first: a sequence frees its tail first); the other two survive only on SSD.
    ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(StoreOptions(via_ssd ? 1 : 16,
                                                                      via_ssd ? dir.path() + "/ssd" : "")));
    std::unique_ptr<engine::Engine> eng = MakeEngine(store.get());
    ASSERT_NE(eng, nullptr);
    EXPECT_EQ(Run(*eng, 1, prompt_a_).first, reference);
    Run(*eng, 2, prompt_b_);  // needs the whole pool: evicts every block of A into the tiers
    ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(60)));
    const std::vector<BlockHash> a_hashes = HashFullBlocks(model_->config.model_id, prompt_a_, kBlock);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(store->Find(a_hashes[i]), via_ssd && i > 0 ? Tier::kSsd : Tier::kDram) << "block " << i;
    }
    auto [tokens, cached] = Run(*eng, 3, prompt_a_);
    EXPECT_EQ(cached, 3 * kBlock);
    EXPECT_EQ(tokens, reference);
    const engine::KvManager::Stats& stats = eng->kv_manager().stats();
    EXPECT_EQ(stats.hbm_hit_blocks, 0);
    EXPECT_EQ(stats.dram_hit_blocks, via_ssd ? 1 : 3);
    EXPECT_EQ(stats.ssd_hit_blocks, via_ssd ? 2 : 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineTiersTest, ::testing::Values("synthetic:tiny", "stories260K"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           return p.param == "synthetic:tiny" ? std::string("Tiny") : std::string("Stories260K");
                         });

}  // namespace
}  // namespace tandem::kvstore
