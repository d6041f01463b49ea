// The engine with KV tiers: blocks evicted from a tiny HBM pool land in the
// DRAM tier (and, written behind, on SSD); a returning prompt reuses its
// prefix from there, and greedy generation gives exactly the tokens that
// recomputing the prefix gives, with the tier copies done synchronously
// (inside the admitting Step) or by the KvManager's loader thread. A copy
// that fails (the block erased or corrupted after the lookup) truncates the
// reused prefix and the rest is recomputed; a held copy does not hold up the
// other sequences; cancelling a loading sequence is safe.
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "kvstore/tiered_store.h"
#include "model/loader.h"
#include "tests/testing/device.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::Gate;

using ::tandem::kvstore::testing::TempDir;

constexpr int32_t kBlock = 16;
constexpr int32_t kPromptLen = 64;  // 3 reusable blocks (one token is always computed)
constexpr int32_t kNewTokens = 8;   // 72 tokens: 5 blocks, the whole pool

// Param: model spec, asynchronous tier loads.
class EngineTiersTest : public ::testing::TestWithParam<std::tuple<std::string, bool>> {
 protected:
  void SetUp() override {
    std::string spec = std::get<0>(GetParam());
    async_ = std::get<1>(GetParam());
    if (spec == "stories260K") {
      spec = std::string(TANDEM_SHARED_DIR) + "/models/stories260K.gguf";
      if (!std::filesystem::exists(spec)) GTEST_SKIP() << spec << " not found";
    }
    ASSERT_OK_AND_ASSIGN(model_, model::LoadModel(spec));
    backend_ = ::tandem::testing::TestBackend(2);
    ASSERT_OK_AND_ASSIGN(llama_, model::LlamaModel::Create(model_->config, model_->weights, backend_.get()));
    std::mt19937 rng(42);
    for (auto* p : {&prompt_a_, &prompt_b_, &prompt_c_}) {
      for (int i = 0; i < kPromptLen; ++i)
        p->push_back(1 + static_cast<int32_t>(rng() % (model_->config.vocab_size - 1)));
    }
    prompt_c_.resize(20);
    a_hashes_ = HashFullBlocks(model_->config.model_id, prompt_a_, kBlock);
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

  std::unique_ptr<engine::Engine> MakeEngine(TieredStore* tiers, int32_t num_blocks = 5,
                                             engine::TierLoader::Hook hook = {}) {
    engine::EngineOptions options;
    options.block_size = kBlock;
    options.num_blocks = num_blocks;
    options.tiers = tiers;
    options.async_tier_loads = async_;
    options.tier_load_hook = std::move(hook);
    auto e = engine::Engine::Create(options, llama_.get(), backend_.get(), model_->tokenizer.get());
    EXPECT_OK(e.status());
    return e.ok() ? std::move(*e) : nullptr;
  }

  // Runs one greedy request to the end; returns its tokens and cached count.
  std::pair<std::vector<int32_t>, int32_t> Run(engine::Engine& eng, int64_t id,
                                               const std::vector<int32_t>& prompt) {
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

  // Prompt A's greedy tokens computed from scratch, without tiers.
  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt) {
    std::unique_ptr<engine::Engine> eng = MakeEngine(nullptr, 8);
    if (eng == nullptr) return {};
    auto [tokens, cached] = Run(*eng, 1, prompt);
    EXPECT_EQ(cached, 0);
    EXPECT_EQ(tokens.size(), static_cast<size_t>(kNewTokens));
    return tokens;
  }

  // A store holding prompt A's three reusable blocks: in DRAM, or (a
  // one-block DRAM tier) block 0 in DRAM and blocks 1 and 2 only on SSD.
  std::unique_ptr<TieredStore> StoreWithPromptA(bool via_ssd, const std::string& dir,
                                                const std::vector<int32_t>& reference) {
    absl::StatusOr<std::unique_ptr<TieredStore>> store =
        TieredStore::Create(StoreOptions(via_ssd ? 1 : 16, via_ssd ? dir + "/ssd" : ""));
    EXPECT_OK(store.status());
    if (!store.ok()) return nullptr;
    std::unique_ptr<engine::Engine> eng = MakeEngine(store->get());
    EXPECT_EQ(Run(*eng, 1, prompt_a_).first, reference);
    // B needs the whole pool: evicts every block of A into the tiers. Via
    // SSD the one-block DRAM tier keeps only the last block A lost (its
    // first: a sequence frees its tail first); the others survive on SSD.
    Run(*eng, 2, prompt_b_);
    EXPECT_OK((*store)->Flush(absl::Now() + absl::Seconds(60)));
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ((*store)->Find(a_hashes_[i]), via_ssd && i > 0 ? Tier::kSsd : Tier::kDram) << "block " << i;
    }
    return std::move(*store);
  }

  bool async_ = true;
  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
  std::vector<int32_t> prompt_a_, prompt_b_, prompt_c_;
  std::vector<BlockHash> a_hashes_;
};

TEST_P(EngineTiersTest, PrefixFromDramAndSsdGivesTheRecomputedTokens) {
  const std::vector<int32_t> reference = Reference(prompt_a_);
  ASSERT_EQ(reference.size(), static_cast<size_t>(kNewTokens));
  TempDir dir;
  for (const bool via_ssd : {false, true}) {
    SCOPED_TRACE(via_ssd ? "via SSD" : "via DRAM");
    std::unique_ptr<TieredStore> store = StoreWithPromptA(via_ssd, dir.path(), reference);
    ASSERT_NE(store, nullptr);
    std::unique_ptr<engine::Engine> eng = MakeEngine(store.get());
    ASSERT_NE(eng, nullptr);
    auto [tokens, cached] = Run(*eng, 3, prompt_a_);
    EXPECT_EQ(cached, 3 * kBlock);
    EXPECT_EQ(tokens, reference);
    const engine::KvManager::Stats& stats = eng->kv_manager().stats();
    EXPECT_EQ(stats.hbm_hit_blocks, 0);
    EXPECT_EQ(stats.dram_hit_blocks, via_ssd ? 1 : 3);
    EXPECT_EQ(stats.ssd_hit_blocks, via_ssd ? 2 : 0);
    EXPECT_EQ(stats.failed_load_blocks, 0);
    EXPECT_EQ(stats.async_load_blocks, async_ ? 3 : 0);
    EXPECT_EQ(stats.sync_load_blocks, async_ ? 0 : 3);
    EXPECT_EQ(eng->stats().tier_load_sequences, async_ ? 1 : 0);
    EXPECT_EQ(eng->stats().cached_prompt_tokens, 3 * kBlock);
    EXPECT_EQ(eng->stats().prompt_tokens_computed, kPromptLen - 3 * kBlock);
  }
}

// The block at index 1 of the load vanishes (DRAM: erased) or turns corrupt
// (SSD: a value with a bad checksum) between the lookup and its copy: the
// reused prefix is block 0 alone and the rest is recomputed, same tokens.
TEST_P(EngineTiersTest, AFailedCopyTruncatesThePrefixAndTheTokensStayRight) {
  const std::vector<int32_t> reference = Reference(prompt_a_);
  ASSERT_EQ(reference.size(), static_cast<size_t>(kNewTokens));
  TempDir dir;
  for (const bool via_ssd : {false, true}) {
    SCOPED_TRACE(via_ssd ? "corrupt on SSD" : "erased from DRAM");
    std::unique_ptr<TieredStore> store = StoreWithPromptA(via_ssd, dir.path(), reference);
    ASSERT_NE(store, nullptr);
    TieredStore* s = store.get();
    const std::string model_id = model_->config.model_id;
    const std::vector<int32_t> block1(prompt_a_.begin() + kBlock, prompt_a_.begin() + 2 * kBlock);
    const size_t payload_bytes = s->options().payload_bytes;
    int hook_calls = 0;
    auto hook = [&, via_ssd](int64_t id, int32_t index, BlockHash hash) {
      ++hook_calls;  // one thread at a time: the loader, or the engine thread in sync mode
      if (id != 3 || index != 1) return;
      ASSERT_EQ(hash, a_hashes_[1]);
      if (!via_ssd) {
        ASSERT_OK(s->Erase(hash));
        return;
      }
      std::string bad = EncodeBlock({.model_id_hash = ModelIdHash(model_id),
                                     .block_hash = hash,
                                     .tokens = block1,
                                     .payload = std::vector<uint8_t>(payload_bytes, 7)});
      bad[bad.size() - 1] ^= 0x40;
      (void)s->dram().Erase(hash);
      ASSERT_OK(s->ssd()->Put(
          hash, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()), nullptr));
    };
    std::unique_ptr<engine::Engine> eng = MakeEngine(s, 5, hook);
    ASSERT_NE(eng, nullptr);
    auto [tokens, cached] = Run(*eng, 3, prompt_a_);
    EXPECT_EQ(cached, kBlock);
    EXPECT_EQ(tokens, reference);
    EXPECT_EQ(s->Find(a_hashes_[1]), std::nullopt);
    const engine::KvManager::Stats& stats = eng->kv_manager().stats();
    EXPECT_EQ(stats.dram_hit_blocks + stats.ssd_hit_blocks, 1);
    if (async_) {
      EXPECT_EQ(stats.failed_load_blocks, 2);  // the failed block and the one after it
      EXPECT_EQ(eng->stats().tier_load_failures, 1);
      EXPECT_EQ(hook_calls, 2);  // block 2 is not attempted
    } else {
      EXPECT_EQ(stats.failed_load_blocks, 1);  // block 2 is not even looked up
      EXPECT_EQ(hook_calls, 2);
    }
    EXPECT_EQ(eng->stats().cached_prompt_tokens, kBlock);
    EXPECT_EQ(eng->stats().prompt_tokens_computed, kPromptLen - kBlock);
    if (via_ssd) {
      EXPECT_EQ(s->stats().corrupt_blocks, 1);
    }
  }
}

// While A's copy is held on the loader thread, C (already running) decodes:
// the engine does not wait for A. Released, A finishes with its tokens.
TEST_P(EngineTiersTest, OthersDecodeWhileACopyIsHeld) {
  if (!async_) GTEST_SKIP() << "synchronous copies hold the engine thread by design";
  const std::vector<int32_t> reference = Reference(prompt_a_);
  const std::vector<int32_t> reference_c = Reference(prompt_c_);
  ASSERT_EQ(reference.size(), static_cast<size_t>(kNewTokens));
  TempDir dir;
  std::unique_ptr<TieredStore> store = StoreWithPromptA(/*via_ssd=*/false, dir.path(), reference);
  ASSERT_NE(store, nullptr);
  Gate gate;
  std::unique_ptr<engine::Engine> eng =
      MakeEngine(store.get(), 16, [&](int64_t id, int32_t index, BlockHash) {
        if (id == 3 && index == 0) gate.Enter();
      });
  ASSERT_NE(eng, nullptr);
  absl::Cleanup release = [&] { gate.Release(); };  // before the engine joins its loader
  std::map<int64_t, std::vector<int32_t>> tokens;
  auto step = [&] {
    absl::StatusOr<std::vector<engine::SequenceUpdate>> updates = eng->Step();
    ASSERT_OK(updates.status());
    ASSERT_OK(eng->CheckInvariants());
    for (const engine::SequenceUpdate& u : *updates) {
      tokens[u.id].insert(tokens[u.id].end(), u.new_tokens.begin(), u.new_tokens.end());
    }
  };
  ASSERT_OK(eng->Add({.id = 4, .prompt_tokens = prompt_c_, .max_tokens = kNewTokens, .stop_at_eos = false}));
  step();  // C's prefill and first token
  ASSERT_EQ(tokens[4].size(), 1u);
  ASSERT_OK(eng->Add({.id = 3, .prompt_tokens = prompt_a_, .max_tokens = kNewTokens, .stop_at_eos = false}));
  for (int i = 0; i < 3; ++i) step();  // A admitted, loading; C decodes each step
  ASSERT_TRUE(gate.WaitEntered()) << "the held copy never started";
  EXPECT_EQ(eng->num_loading(), 1);
  EXPECT_EQ(eng->num_running(), 1);
  EXPECT_EQ(tokens[4].size(), 4u);
  EXPECT_TRUE(tokens[3].empty());
  EXPECT_EQ(eng->stats().steps_with_tier_loads, 3);
  EXPECT_EQ(eng->stats().tier_load_sequences, 1);
  gate.Release();
  while (eng->HasWork()) step();
  EXPECT_EQ(tokens[3], reference);
  EXPECT_EQ(tokens[4], reference_c);
  EXPECT_EQ(eng->kv_manager().stats().dram_hit_blocks, 3);
  EXPECT_EQ(eng->kv_manager().num_sequences(), 0);
}

// Cancelling a loading sequence whose copy is in flight: the blocks return to
// the pool only after the copy ended; the engine stays consistent and the
// prompt, added again, gives its tokens.
TEST_P(EngineTiersTest, CancelWhileLoadingIsSafe) {
  if (!async_) GTEST_SKIP() << "no loading state with synchronous copies";
  const std::vector<int32_t> reference = Reference(prompt_a_);
  TempDir dir;
  std::unique_ptr<TieredStore> store = StoreWithPromptA(/*via_ssd=*/false, dir.path(), reference);
  ASSERT_NE(store, nullptr);
  Gate gate;
  std::unique_ptr<engine::Engine> eng = MakeEngine(store.get(), 5, [&](int64_t id, int32_t index, BlockHash) {
    if (id == 3 && index == 1) gate.Enter();
  });
  ASSERT_NE(eng, nullptr);
  absl::Cleanup release = [&] { gate.Release(); };
  ASSERT_OK(eng->Add({.id = 3, .prompt_tokens = prompt_a_, .max_tokens = kNewTokens, .stop_at_eos = false}));
  ASSERT_OK(eng->Step().status());
  ASSERT_TRUE(gate.WaitEntered()) << "the held copy never started";
  ASSERT_EQ(eng->num_loading(), 1);
  // Cancel waits for the held copy: release it from another thread, in
  // whichever order the two get there.
  std::thread releaser([&] { gate.Release(); });
  ASSERT_OK(eng->Cancel(3));
  releaser.join();
  EXPECT_EQ(eng->num_loading(), 0);
  EXPECT_EQ(eng->kv_manager().num_sequences(), 0);
  EXPECT_EQ(eng->kv_manager().pool().num_free_blocks(), 5);
  ASSERT_OK(eng->CheckInvariants());
  absl::StatusOr<std::vector<engine::SequenceUpdate>> updates = eng->Step();
  ASSERT_OK(updates.status());
  ASSERT_EQ(updates->size(), 1u);
  EXPECT_EQ((*updates)[0].end, engine::SequenceEnd::kCancelled);
  EXPECT_FALSE(eng->HasWork());
  // The loaded-then-cancelled blocks never entered the prefix cache.
  EXPECT_EQ(eng->kv_manager().pool().num_cached_blocks(), 0);
  auto [tokens, cached] = Run(*eng, 5, prompt_a_);
  EXPECT_EQ(tokens, reference);
}

// A shared store that holds nothing: with Options::remote every block past
// the pool's prefix may be there (TieredStore::MayHold), so admission takes
// pool blocks for all of them, more than MatchPrefix foresaw. The engine
// grows the table only as far as the pool allows, every copy misses, and the
// prompt is computed in full with the right tokens.
TEST_P(EngineTiersTest, ARemoteTierThatMissesEverythingDoesNotBreakAdmission) {
  class EmptyRemote : public RemoteTier {
   public:
    absl::StatusOr<std::string> Fetch(BlockHash) override { return absl::NotFoundError("empty"); }
    void Offer(BlockHash, std::string) override {}
  } remote;
  const std::vector<int32_t> reference = Reference(prompt_a_);
  TieredStore::Options o = StoreOptions(16, "");
  o.remote = &remote;
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(o));
  std::unique_ptr<engine::Engine> eng = MakeEngine(store.get());
  ASSERT_NE(eng, nullptr);
  auto [tokens, cached] = Run(*eng, 1, prompt_a_);
  EXPECT_EQ(cached, 0);
  EXPECT_EQ(tokens, reference);
  const engine::KvManager::Stats& stats = eng->kv_manager().stats();
  EXPECT_EQ(stats.failed_load_blocks, async_ ? 3 : 1);  // async: all three taken, the first copy misses
  EXPECT_EQ(eng->stats().prompt_tokens_computed, kPromptLen);
}

INSTANTIATE_TEST_SUITE_P(Models, EngineTiersTest,
                         ::testing::Combine(::testing::Values("synthetic:tiny", "stories260K"),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<std::string, bool>>& p) {
                           return std::string(std::get<0>(p.param) == "synthetic:tiny" ? "Tiny"
                                                                                       : "Stories260K") +
                                  (std::get<1>(p.param) ? "Async" : "Sync");
                         });

}  // namespace
}  // namespace tandem::kvstore
