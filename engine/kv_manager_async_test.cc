// KvManager's asynchronous tier loads under churn, without a model (so it
// also runs under ThreadSanitizer: the kernels' ifunc resolvers do not): the
// owning thread starts, frees (cancelling loads in flight), polls and
// "computes" sequences at random while another thread erases and re-puts the
// tiers' blocks (FakeKvTiers), so copies fail between lookup and copy. Every block a
// sequence reuses must hold exactly its block's bytes, the bookkeeping must
// hold after every operation, and the loader must never write into a block
// that went back to the pool (a later user would see foreign bytes). And the
// TierLoader alone: no write into a cancelled job's memory after Cancel.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "common/block_hash.h"
#include "engine/block_pool.h"
#include "engine/fake_kv_tiers.h"
#include "engine/kv_manager.h"
#include "engine/tier_loader.h"
#include "gtest/gtest.h"
#include "tests/testing/gate.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::Gate;

constexpr int32_t kTokens = 4;  // per block
constexpr size_t kPayload = 256;
constexpr int32_t kPoolBlocks = 24;
constexpr int kPrompts = 6;
constexpr int kPromptBlocks = 4;  // prompts of 4 blocks + 1 token

std::vector<uint8_t> PayloadOf(BlockHash h) {
  std::vector<uint8_t> p(kPayload);
  for (size_t i = 0; i < kPayload; ++i)
    p[i] = static_cast<uint8_t>(h >> (i % 8 * 8)) ^ static_cast<uint8_t>(i);
  return p;
}

// Block h's tokens (for the loader test, where no prompt chains the hashes).
std::vector<int32_t> TokensOf(BlockHash h) {
  std::vector<int32_t> t(kTokens);
  for (int32_t k = 0; k < kTokens; ++k) t[k] = static_cast<int32_t>((h * 131 + k * 7) % 32000);
  return t;
}

TEST(KvManagerAsyncTest, RandomStartFreePollWhileTheTiersChurn) {
  auto store = std::make_unique<FakeKvTiers>(
      FakeKvTiers::Options{.model_id = "m", .block_tokens = kTokens, .payload_bytes = kPayload});
  std::vector<uint8_t> memory(kPoolBlocks * kPayload);
  ASSERT_OK_AND_ASSIGN(auto pool, BlockPool::Create({.num_blocks = kPoolBlocks, .block_size = kTokens}));
  KvManager::Options ko;
  ko.model_id = "m";
  ko.tiers = store.get();
  ko.block_memory = [&](int32_t b) { return absl::MakeSpan(memory.data() + b * kPayload, kPayload); };
  ko.max_queued_tier_loads = 2;  // small: some admissions fall back to synchronous copies
  // Slow the loader a little so that frees meet copies in flight.
  ko.tier_load_hook = [](int64_t, int32_t, BlockHash) { std::this_thread::yield(); };
  ASSERT_OK_AND_ASSIGN(auto kv, KvManager::Create(ko, pool.get()));

  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<BlockHash>> hashes;
  for (int p = 0; p < kPrompts; ++p) {
    std::vector<int32_t> t(kPromptBlocks * kTokens + 1);
    for (size_t i = 0; i < t.size(); ++i) t[i] = p * 100 + static_cast<int32_t>(i);
    prompts.push_back(t);
    hashes.push_back(HashFullBlocks("m", t, kTokens));
    for (int b = 0; b < kPromptBlocks; ++b) {
      ASSERT_OK(store->Insert(hashes[p][b], absl::MakeConstSpan(t).subspan(b * kTokens, kTokens),
                              PayloadOf(hashes[p][b])));
    }
  }
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    std::mt19937 rng(7);
    while (!stop.load()) {
      const int p = static_cast<int>(rng() % kPrompts), b = static_cast<int>(rng() % kPromptBlocks);
      if (rng() % 2) {
        store->Erase(hashes[p][b]);
      } else {
        (void)store->Insert(hashes[p][b], absl::MakeConstSpan(prompts[p]).subspan(b * kTokens, kTokens),
                            PayloadOf(hashes[p][b]));
      }
    }
  });

  // The reused prefix must hold the right bytes; the rest is "computed"
  // (written) and committed, as the engine would.
  auto reuse_and_compute = [&](int64_t id, int32_t cached) {
    const absl::Span<const int32_t> table = kv->BlockTable(id);
    const int p = static_cast<int>(id % kPrompts);
    for (int b = 0; b < kPromptBlocks; ++b) {
      uint8_t* bytes = memory.data() + table[b] * kPayload;
      if (b < cached / kTokens) {
        ASSERT_EQ(std::memcmp(bytes, PayloadOf(hashes[p][b]).data(), kPayload), 0)
            << "sequence " << id << " block " << b;
      } else {
        std::memcpy(bytes, PayloadOf(hashes[p][b]).data(), kPayload);
      }
    }
    kv->CommitFullBlocks(id, prompts[p], static_cast<int32_t>(prompts[p].size()));
  };

  std::mt19937 rng(1);
  std::vector<int64_t> live;
  int64_t next_id = 0, loads_done = 0, loads_failed = 0, frees = 0;
  for (int it = 0; it < 6000; ++it) {
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 && live.size() < 6) {
      const int64_t id = next_id++;
      const std::vector<int32_t>& prompt = prompts[id % kPrompts];
      const int32_t len = static_cast<int32_t>(prompt.size());
      if (kv->BlocksToAdmit(prompt, len) > pool->num_free_blocks()) continue;
      ASSERT_OK_AND_ASSIGN(const int32_t cached, kv->StartSequence(id, prompt));
      ASSERT_OK(kv->EnsureCapacity(id, len));
      if (!kv->IsLoading(id)) reuse_and_compute(id, cached);
      live.push_back(id);
    } else if (op == 1 && !live.empty()) {
      const size_t i = rng() % live.size();
      kv->FreeSequence(live[i]);  // loading or not
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      ++frees;
    } else {
      if (op == 3) (void)kv->WaitForLoads(absl::Now() + absl::Milliseconds(1));
      for (const KvManager::LoadDone& d : kv->PollLoads()) {
        ++loads_done;
        if (!d.error.ok()) ++loads_failed;
        EXPECT_EQ(d.cached_tokens % kTokens, 0);
        reuse_and_compute(d.seq_id, d.cached_tokens);
      }
    }
    ASSERT_OK(kv->CheckInvariants());
    if (::testing::Test::HasFatalFailure()) break;
  }
  stop.store(true);
  churn.join();
  EXPECT_GT(loads_done, 0);
  EXPECT_GT(frees, 0);
  EXPECT_GT(kv->stats().async_load_blocks, 0);
  EXPECT_EQ(kv->num_loading(), static_cast<int32_t>(std::count_if(
                                   live.begin(), live.end(), [&](int64_t id) { return kv->IsLoading(id); })));
  RecordProperty("loads_done", static_cast<int>(loads_done));
  RecordProperty("loads_failed", static_cast<int>(loads_failed));
  kv.reset();  // joins the loader with sequences still loading
  EXPECT_EQ(pool->num_free_blocks(), kPoolBlocks);
}

// The loader alone: after Cancel returns, the cancelled job's buffers are
// never written again and its result is never reported, whether Cancel found
// it running (held in the hook) or already finished.
TEST(TierLoaderTest, NoWriteAfterCancelAndNoResult) {
  auto store = std::make_unique<FakeKvTiers>(
      FakeKvTiers::Options{.model_id = "test-model", .block_tokens = kTokens, .payload_bytes = kPayload});
  for (BlockHash h = 1; h <= 4; ++h) ASSERT_OK(store->Insert(h, TokensOf(h), PayloadOf(h)));
  Gate gate;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<PoolCopier> copier, PoolCopier::Create(nullptr, kPayload));
  TierLoader loader(store.get(),
                    {.max_queued_jobs = 1,
                     .hook =
                         [&](int64_t id, int32_t index, BlockHash) {
                           if (id == 1 && index == 0) gate.Enter();
                         }},
                    std::move(copier));
  absl::Cleanup release = [&] { gate.Release(); };
  std::vector<std::vector<uint8_t>> bufs(4, std::vector<uint8_t>(kPayload, 0));
  TierLoader::Job job1{.id = 1, .loads = {}};
  for (BlockHash h = 1; h <= 3; ++h) job1.loads.push_back({h, TokensOf(h), absl::MakeSpan(bufs[h - 1])});
  ASSERT_TRUE(loader.Submit(std::move(job1)));
  ASSERT_TRUE(gate.WaitEntered()) << "the held copy never started";
  TierLoader::Job job2{.id = 2, .loads = {{4, TokensOf(4), absl::MakeSpan(bufs[3])}}};
  ASSERT_TRUE(loader.Submit(std::move(job2)));
  TierLoader::Job job3{.id = 3, .loads = {}};
  EXPECT_FALSE(loader.Submit(std::move(job3)));  // the queue holds one job
  EXPECT_EQ(loader.outstanding(), 2);
  std::thread releaser([&] { gate.Release(); });
  loader.Cancel(1);
  releaser.join();
  for (int i = 0; i < 3; ++i) std::memset(bufs[i].data(), 0xAA, kPayload);  // "freed and reused"
  // Job 2 runs after job 1 ended (one thread, FIFO).
  std::vector<TierLoader::Result> results;
  while (results.empty()) {
    ASSERT_TRUE(loader.WaitForResult(absl::Now() + absl::Seconds(30)));
    results = loader.Poll();
  }
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].id, 2);
  EXPECT_EQ(results[0].loaded, 1);
  EXPECT_EQ(results[0].dram, 1);
  EXPECT_EQ(bufs[3], PayloadOf(4));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(bufs[i], std::vector<uint8_t>(kPayload, 0xAA)) << i;
  EXPECT_EQ(loader.outstanding(), 0);
}

}  // namespace
}  // namespace tandem::engine
