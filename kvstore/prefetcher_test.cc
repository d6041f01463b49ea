#include "kvstore/prefetcher.h"

#include <mutex>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;

constexpr int32_t kTokens = 16;
constexpr size_t kPayload = 4096;
constexpr char kModel[] = "test-model";

std::unique_ptr<TieredStore> MakeStore(const std::string& ssd_path, size_t dram_blocks) {
  TieredStore::Options o;
  o.model_id = kModel;
  o.block_tokens = kTokens;
  o.payload_bytes = kPayload;
  o.dram_bytes = dram_blocks * EncodedBlockBytes(kTokens, kPayload);
  o.ssd_path = ssd_path;
  o.ssd_bytes = size_t{1} << 30;
  absl::StatusOr<std::unique_ptr<TieredStore>> store = TieredStore::Create(o);
  EXPECT_OK(store.status());
  return store.ok() ? std::move(*store) : nullptr;
}

// A prompt of `blocks` full blocks plus a partial tail, and its block hashes.
struct Prompt {
  std::vector<int32_t> tokens;
  std::vector<BlockHash> hashes;
};
Prompt MakePrompt(int blocks) {
  Prompt p;
  for (int i = 0; i < blocks; ++i) {
    std::vector<int32_t> t = TokensFor(i, kTokens);
    p.tokens.insert(p.tokens.end(), t.begin(), t.end());
  }
  p.tokens.push_back(7);  // partial tail: not hashed
  p.hashes = HashFullBlocks(kModel, p.tokens, kTokens);
  return p;
}

absl::Span<const int32_t> BlockTokens(const Prompt& p, int i) {
  return absl::MakeConstSpan(p.tokens).subspan(i * kTokens, kTokens);
}

TEST(TieredStorePromoteTest, MovesSsdBlockIntoDramWithoutCopyingOut) {
  TempDir dir;
  std::unique_ptr<TieredStore> store = MakeStore(dir.path() + "/ssd", 2);
  ASSERT_NE(store, nullptr);
  const Prompt p = MakePrompt(4);
  for (int i = 0; i < 4; ++i) ASSERT_OK(store->Put(p.hashes[i], BlockTokens(p, i), PayloadFor(i, kPayload)));
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(10)));
  // DRAM holds 2 blocks: 0 and 1 were evicted to SSD only.
  ASSERT_EQ(store->Find(p.hashes[0]), Tier::kSsd);
  absl::StatusOr<Tier> from = store->Promote(p.hashes[0], BlockTokens(p, 0));
  ASSERT_OK(from.status());
  EXPECT_EQ(*from, Tier::kSsd);
  EXPECT_EQ(store->Find(p.hashes[0]), Tier::kDram);
  EXPECT_EQ(store->stats().promotions, 1);
  EXPECT_EQ(store->stats().ssd_hits, 0);  // a promotion is not a hit
  // Now a DRAM hit with the right bytes.
  std::vector<uint8_t> out(kPayload);
  from = store->Get(p.hashes[0], BlockTokens(p, 0), absl::MakeSpan(out));
  ASSERT_OK(from.status());
  EXPECT_EQ(*from, Tier::kDram);
  EXPECT_EQ(out, PayloadFor(0, kPayload));
  // Wrong tokens and unknown hashes are misses.
  EXPECT_THAT(store->Promote(p.hashes[1], BlockTokens(p, 2)).status(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Promote(12345, BlockTokens(p, 0)).status(), StatusIs(absl::StatusCode::kNotFound));
}

TEST(PrefetcherTest, PromotesPromptBlocksHeldOnSsdAndSkipsMissingOnes) {
  TempDir dir;
  std::unique_ptr<TieredStore> store = MakeStore(dir.path() + "/ssd", 8);
  ASSERT_NE(store, nullptr);
  const Prompt p = MakePrompt(6);
  // Blocks 0, 1, 3, 4 stored; 2 and 5 are not (e.g. held in the pool).
  for (int i : {0, 1, 3, 4}) ASSERT_OK(store->Put(p.hashes[i], BlockTokens(p, i), PayloadFor(i, kPayload)));
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(10)));
  // Push them out of DRAM with other blocks.
  for (int i = 100; i < 108; ++i) {
    ASSERT_OK(store->Put(1000 + i, TokensFor(i, kTokens), PayloadFor(i, kPayload)));
  }
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(10)));
  for (int i : {0, 1, 3, 4}) ASSERT_EQ(store->Find(p.hashes[i]), Tier::kSsd) << i;

  absl::StatusOr<std::unique_ptr<Prefetcher>> prefetcher =
      Prefetcher::Create({.model_id = kModel, .block_tokens = kTokens}, store.get());
  ASSERT_OK(prefetcher.status());
  ASSERT_TRUE((*prefetcher)->Enqueue(p.tokens));
  ASSERT_TRUE((*prefetcher)->WaitIdle(absl::Now() + absl::Seconds(30)));
  for (int i : {0, 1, 3, 4}) EXPECT_EQ(store->Find(p.hashes[i]), Tier::kDram) << i;
  EXPECT_FALSE(store->Find(p.hashes[2]).has_value());
  const Prefetcher::Stats stats = (*prefetcher)->stats();
  EXPECT_EQ(stats.requests, 1);
  EXPECT_EQ(stats.promoted_blocks, 4);
  EXPECT_EQ(stats.dram_blocks, 0);

  // Again: everything is in DRAM already.
  ASSERT_TRUE((*prefetcher)->Enqueue(p.tokens));
  ASSERT_TRUE((*prefetcher)->WaitIdle(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ((*prefetcher)->stats().dram_blocks, 4);
}

// The router's hint names the blocks: exactly those are promoted, in order,
// nothing is hashed, and stats (and on_stats) count the request as hinted.
TEST(PrefetcherTest, HintedHashesPromoteExactlyThoseBlocks) {
  TempDir dir;
  std::unique_ptr<TieredStore> store = MakeStore(dir.path() + "/ssd", 8);
  ASSERT_NE(store, nullptr);
  const Prompt p = MakePrompt(6);
  for (int i = 0; i < 6; ++i) ASSERT_OK(store->Put(p.hashes[i], BlockTokens(p, i), PayloadFor(i, kPayload)));
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(10)));
  for (int i = 100; i < 108; ++i) {
    ASSERT_OK(store->Put(1000 + i, TokensFor(i, kTokens), PayloadFor(i, kPayload)));
  }
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(10)));
  for (int i = 0; i < 6; ++i) ASSERT_EQ(store->Find(p.hashes[i]), Tier::kSsd) << i;

  std::mutex mu;
  std::vector<Prefetcher::Stats> reported;
  absl::StatusOr<std::unique_ptr<Prefetcher>> prefetcher =
      Prefetcher::Create({.model_id = kModel,
                          .block_tokens = kTokens,
                          .on_stats =
                              [&](const Prefetcher::Stats& s) {
                                std::lock_guard<std::mutex> lock(mu);
                                reported.push_back(s);
                              }},
                         store.get());
  ASSERT_OK(prefetcher.status());
  // Blocks 2 and 3 hinted (block 2's hash plus a hash the tiers do not hold
  // at block 3's place, and one past the prompt's full blocks is ignored).
  ASSERT_TRUE((*prefetcher)->EnqueueHashes({p.hashes[2], p.hashes[3]}, 2, p.tokens));
  ASSERT_TRUE((*prefetcher)->WaitIdle(absl::Now() + absl::Seconds(30)));
  for (int i : {2, 3}) EXPECT_EQ(store->Find(p.hashes[i]), Tier::kDram) << i;
  for (int i : {0, 1, 4, 5}) EXPECT_EQ(store->Find(p.hashes[i]), Tier::kSsd) << i;  // not hinted: untouched
  Prefetcher::Stats stats = (*prefetcher)->stats();
  EXPECT_EQ(stats.requests, 1);
  EXPECT_EQ(stats.hinted_requests, 1);
  EXPECT_EQ(stats.prompt_requests, 0);
  EXPECT_EQ(stats.promoted_blocks, 2);
  EXPECT_EQ(stats.hinted_promoted_blocks, 2);

  // A hash at the wrong block index (other tokens) is a miss, not a promotion;
  // hashes past the prompt's full blocks are dropped.
  ASSERT_TRUE((*prefetcher)->EnqueueHashes({p.hashes[0], p.hashes[5], 777, 778}, 5, p.tokens));
  ASSERT_TRUE((*prefetcher)->WaitIdle(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(store->Find(p.hashes[0]), Tier::kSsd);
  stats = (*prefetcher)->stats();
  EXPECT_EQ(stats.hinted_requests, 2);
  EXPECT_EQ(stats.hinted_promoted_blocks, 2);
  // Nothing left to promote: refused.
  EXPECT_FALSE((*prefetcher)->EnqueueHashes({p.hashes[0]}, 6, p.tokens));
  EXPECT_FALSE((*prefetcher)->EnqueueHashes({}, 0, p.tokens));
  EXPECT_FALSE((*prefetcher)->EnqueueHashes({p.hashes[0]}, -1, p.tokens));
  EXPECT_EQ((*prefetcher)->stats().dropped, 3);

  // The prompt-based entry counts apart.
  ASSERT_TRUE((*prefetcher)->Enqueue(p.tokens));
  ASSERT_TRUE((*prefetcher)->WaitIdle(absl::Now() + absl::Seconds(30)));
  stats = (*prefetcher)->stats();
  EXPECT_EQ(stats.prompt_requests, 1);
  EXPECT_EQ(stats.hinted_requests, 2);
  EXPECT_EQ(stats.promoted_blocks, 2 + 4);
  EXPECT_EQ(stats.hinted_promoted_blocks, 2);
  EXPECT_EQ(stats.dram_blocks - stats.hinted_dram_blocks, 2);
  // on_stats saw every change, the last one equal to stats().
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_FALSE(reported.empty());
  EXPECT_EQ(reported.back().requests, stats.requests);
  EXPECT_EQ(reported.back().dropped, stats.dropped);
  EXPECT_EQ(reported.back().promoted_blocks, stats.promoted_blocks);
  EXPECT_EQ(reported.back().hinted_promoted_blocks, stats.hinted_promoted_blocks);
  for (size_t i = 1; i < reported.size(); ++i) {
    EXPECT_GE(reported[i].requests + reported[i].dropped, reported[i - 1].requests + reported[i - 1].dropped);
    EXPECT_GE(reported[i].promoted_blocks, reported[i - 1].promoted_blocks);
  }
}

TEST(PrefetcherTest, RefusesShortPromptsAndBadOptions) {
  std::unique_ptr<TieredStore> store = MakeStore("", 4);
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(Prefetcher::Create({.model_id = kModel, .block_tokens = 8}, store.get()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Prefetcher::Create({.model_id = kModel, .block_tokens = kTokens}, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<std::unique_ptr<Prefetcher>> prefetcher =
      Prefetcher::Create({.model_id = kModel, .block_tokens = kTokens}, store.get());
  ASSERT_OK(prefetcher.status());
  std::vector<int32_t> short_prompt(kTokens - 1, 3);
  EXPECT_FALSE((*prefetcher)->Enqueue(short_prompt));
  EXPECT_EQ((*prefetcher)->stats().dropped, 1);
}

TEST(PrefetcherTest, BoundedQueueDropsAndDestructorJoinsWithWorkQueued) {
  TempDir dir;
  std::unique_ptr<TieredStore> store = MakeStore(dir.path() + "/ssd", 4);
  ASSERT_NE(store, nullptr);
  const Prompt p = MakePrompt(64);
  {
    absl::StatusOr<std::unique_ptr<Prefetcher>> prefetcher =
        Prefetcher::Create({.model_id = kModel, .block_tokens = kTokens, .max_queued = 2}, store.get());
    ASSERT_OK(prefetcher.status());
    int accepted = 0;
    for (int i = 0; i < 50; ++i) accepted += (*prefetcher)->Enqueue(p.tokens) ? 1 : 0;
    // Every call is either accepted or counted as dropped (how many of each
    // depends on how fast the thread drains the queue of 2).
    const Prefetcher::Stats stats = (*prefetcher)->stats();
    EXPECT_GE(accepted, 2);
    EXPECT_EQ(stats.requests, accepted);
    EXPECT_EQ(stats.requests + stats.dropped, 50);
  }  // destroyed with work possibly queued: must join, not hang
}

}  // namespace
}  // namespace tandem::kvstore
