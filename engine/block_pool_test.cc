#include "engine/block_pool.h"

#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kv_layout.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::_;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Optional;

// EXPECT_OK/ASSERT_OK in tests/testing/status_matchers.h bind a reference to
// the status of their argument, which dangles when the argument is a
// temporary (CheckInvariants(), EnsureCapacity(...)); a matcher keeps the
// temporary alive for the whole assertion.
MATCHER(IsOk, "is OK") {
  const absl::Status& status = ::tandem::testing::GetStatus(arg);
  *result_listener << "status is " << status.ToString();
  return status.ok();
}

constexpr int32_t kBlockSize = 4;

std::vector<int32_t> Tokens(int32_t start) {
  std::vector<int32_t> t(kBlockSize);
  std::iota(t.begin(), t.end(), start);
  return t;
}

std::unique_ptr<BlockPool> MakePool(int32_t num_blocks, BlockPool::Options options = {}) {
  options.num_blocks = num_blocks;
  options.block_size = kBlockSize;
  absl::StatusOr<std::unique_ptr<BlockPool>> pool = BlockPool::Create(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(pool).value();
}

TEST(BlockPoolTest, CreateRejectsBadOptions) {
  BlockPool::Options options;
  options.num_blocks = 0;
  options.block_size = 16;
  EXPECT_THAT(BlockPool::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_blocks")));
  options.num_blocks = 4;
  options.block_size = 0;
  EXPECT_THAT(BlockPool::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_size")));
  options.num_blocks = 1 << 30;
  options.block_size = 16;
  EXPECT_THAT(BlockPool::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overflow")));
}

TEST(BlockPoolTest, BlocksForBudget) {
  kernels::KvLayout layout{.num_layers = 2, .num_kv_heads = 4, .head_dim = 8, .block_size = 16};
  const size_t block_bytes = layout.BlockBytes();
  ASSERT_EQ(block_bytes, size_t{2} * 2 * 16 * 4 * 8 * sizeof(float));
  EXPECT_EQ(BlockPool::BlocksForBudget(0, layout), 0);
  EXPECT_EQ(BlockPool::BlocksForBudget(block_bytes - 1, layout), 0);
  EXPECT_EQ(BlockPool::BlocksForBudget(block_bytes, layout), 1);
  EXPECT_EQ(BlockPool::BlocksForBudget(10 * block_bytes + block_bytes / 2, layout), 10);
  EXPECT_EQ(BlockPool::BlocksForBudget(SIZE_MAX, layout), INT32_MAX);
  EXPECT_EQ(BlockPool::BlocksForBudget(1 << 20, kernels::KvLayout{}), 0);
}

TEST(BlockPoolTest, AllocatesEveryBlockOnceThenExhausts) {
  auto pool = MakePool(3);
  EXPECT_EQ(pool->num_blocks(), 3);
  EXPECT_EQ(pool->num_free_blocks(), 3);
  std::vector<int32_t> got;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
    EXPECT_EQ(pool->RefCount(b), 1);
    got.push_back(b);
    EXPECT_THAT(pool->CheckInvariants(), IsOk());
  }
  EXPECT_THAT(got, ::testing::UnorderedElementsAre(0, 1, 2));
  EXPECT_EQ(pool->num_free_blocks(), 0);
  EXPECT_THAT(pool->Allocate(), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("3")));
  pool->Release(got[1]);
  EXPECT_EQ(pool->num_free_blocks(), 1);
  ASSERT_OK_AND_ASSIGN(int32_t again, pool->Allocate());
  EXPECT_EQ(again, got[1]);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, RefCountsFollowAddRefAndRelease) {
  auto pool = MakePool(2);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  pool->AddRef(b);
  pool->AddRef(b);
  EXPECT_EQ(pool->RefCount(b), 3);
  pool->Release(b);
  pool->Release(b);
  EXPECT_EQ(pool->RefCount(b), 1);
  EXPECT_EQ(pool->num_free_blocks(), 1);
  pool->Release(b);
  EXPECT_EQ(pool->RefCount(b), 0);
  EXPECT_EQ(pool->num_free_blocks(), 2);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, CommittedBlockIsCachedAfterReleaseAndRevivedByLookup) {
  auto pool = MakePool(2);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  EXPECT_TRUE(pool->Commit(b, 42, Tokens(10)));
  EXPECT_TRUE(pool->Contains(42));
  EXPECT_THAT(pool->HashOf(b), Optional(BlockHash{42}));
  EXPECT_EQ(pool->num_cached_blocks(), 1);
  EXPECT_EQ(pool->num_evictable_blocks(), 0);
  pool->Release(b);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
  EXPECT_EQ(pool->num_evictable_blocks(), 1);
  EXPECT_EQ(pool->num_free_blocks(), 2);  // evictable counts as free
  EXPECT_TRUE(pool->Contains(42));

  EXPECT_THAT(pool->Peek(42, Tokens(10)), Optional(b));
  EXPECT_EQ(pool->stats().hits, 0);  // Peek has no side effects
  EXPECT_EQ(pool->RefCount(b), 0);

  EXPECT_THAT(pool->Lookup(42, Tokens(10)), Optional(b));
  EXPECT_EQ(pool->RefCount(b), 1);
  EXPECT_EQ(pool->num_evictable_blocks(), 0);
  EXPECT_EQ(pool->num_free_blocks(), 1);
  EXPECT_EQ(pool->stats().hits, 1);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());

  // A second user shares it.
  EXPECT_THAT(pool->Lookup(42, Tokens(10)), Optional(b));
  EXPECT_EQ(pool->RefCount(b), 2);
  pool->Release(b);
  pool->Release(b);
  EXPECT_EQ(pool->num_evictable_blocks(), 1);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, LookupMissesCount) {
  auto pool = MakePool(2);
  EXPECT_EQ(pool->Lookup(7, Tokens(0)), std::nullopt);
  EXPECT_EQ(pool->stats().misses, 1);
  EXPECT_EQ(pool->stats().hits, 0);
  EXPECT_FALSE(pool->Contains(7));
}

TEST(BlockPoolTest, CommitIsIdempotentForTheSameHash) {
  auto pool = MakePool(2);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  EXPECT_TRUE(pool->Commit(b, 5, Tokens(0)));
  EXPECT_TRUE(pool->Commit(b, 5, Tokens(0)));
  EXPECT_EQ(pool->num_cached_blocks(), 1);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, DuplicateHashKeepsTheFirstBlockAndFreesTheSecond) {
  auto pool = MakePool(3);
  ASSERT_OK_AND_ASSIGN(int32_t first, pool->Allocate());
  ASSERT_OK_AND_ASSIGN(int32_t second, pool->Allocate());
  EXPECT_TRUE(pool->Commit(first, 9, Tokens(0)));
  EXPECT_FALSE(pool->Commit(second, 9, Tokens(0)));
  EXPECT_EQ(pool->HashOf(second), std::nullopt);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
  pool->Release(second);  // uncached: straight back to the free list
  EXPECT_EQ(pool->num_evictable_blocks(), 0);
  EXPECT_EQ(pool->RefCount(second), 0);
  EXPECT_THAT(pool->Lookup(9, Tokens(0)), Optional(first));
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, HashCollisionWithDifferentTokensMisses) {
  auto pool = MakePool(2);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  // A fabricated hash stands in for two token blocks that collide.
  constexpr BlockHash kCollidingHash = 0xdeadbeef;
  ASSERT_TRUE(pool->Commit(b, kCollidingHash, Tokens(100)));
  pool->Release(b);
  EXPECT_TRUE(pool->Contains(kCollidingHash));
  EXPECT_EQ(pool->Peek(kCollidingHash, Tokens(200)), std::nullopt);
  EXPECT_EQ(pool->Lookup(kCollidingHash, Tokens(200)), std::nullopt);
  EXPECT_EQ(pool->stats().collisions, 1);
  EXPECT_EQ(pool->stats().misses, 1);
  EXPECT_EQ(pool->RefCount(b), 0);  // no reference taken on a miss
  // A prefix or extension of the cached tokens is not a match either.
  std::vector<int32_t> longer = Tokens(100);
  longer.push_back(0);
  EXPECT_EQ(pool->Lookup(kCollidingHash, longer), std::nullopt);
  EXPECT_EQ(pool->Lookup(kCollidingHash, absl::MakeConstSpan(Tokens(100)).first(2)), std::nullopt);
  EXPECT_THAT(pool->Lookup(kCollidingHash, Tokens(100)), Optional(b));
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

struct Evicted {
  BlockHash hash;
  int32_t block_id;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> bytes;
};

TEST(BlockPoolTest, EvictsLeastRecentlyReleasedCachedBlockOnlyWhenNoFreeBlock) {
  constexpr int32_t kNum = 4;
  constexpr size_t kBytesPerBlock = 8;
  std::vector<uint8_t> kv(kNum * kBytesPerBlock);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<uint8_t>(i);
  std::vector<Evicted> evicted;
  BlockPool::Options options;
  options.on_evict = [&](const EvictedBlock& e) {
    evicted.push_back({e.hash, e.block_id, std::vector<int32_t>(e.tokens.begin(), e.tokens.end()),
                       std::vector<uint8_t>(e.bytes.begin(), e.bytes.end())});
  };
  options.block_bytes = [&](int32_t block) {
    return absl::MakeConstSpan(kv).subspan(block * kBytesPerBlock, kBytesPerBlock);
  };
  auto pool = MakePool(kNum, options);

  // Three cached blocks released in the order b, a, c; one block stays free.
  ASSERT_OK_AND_ASSIGN(int32_t a, pool->Allocate());
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  ASSERT_OK_AND_ASSIGN(int32_t c, pool->Allocate());
  pool->Commit(a, 100, Tokens(100));
  pool->Commit(b, 200, Tokens(200));
  pool->Commit(c, 300, Tokens(300));
  pool->Release(b);
  pool->Release(a);
  pool->Release(c);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
  EXPECT_EQ(pool->num_free_blocks(), 4);

  // The free block goes first; nothing is evicted.
  ASSERT_OK_AND_ASSIGN(int32_t d, pool->Allocate());
  EXPECT_THAT(evicted, IsEmpty());
  EXPECT_NE(d, a);
  EXPECT_NE(d, b);
  EXPECT_NE(d, c);

  // Touch b (Lookup + Release): it becomes the most recently used.
  ASSERT_THAT(pool->Lookup(200, Tokens(200)), Optional(b));
  pool->Release(b);

  // Now the LRU order is a, c, b.
  ASSERT_OK_AND_ASSIGN(int32_t e1, pool->Allocate());
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(e1, a);
  EXPECT_EQ(evicted[0].hash, 100u);
  EXPECT_EQ(evicted[0].block_id, a);
  EXPECT_THAT(evicted[0].tokens, ElementsAreArray(Tokens(100)));
  EXPECT_THAT(evicted[0].bytes,
              ElementsAreArray(absl::MakeConstSpan(kv).subspan(a * kBytesPerBlock, kBytesPerBlock)));
  EXPECT_FALSE(pool->Contains(100));
  EXPECT_EQ(pool->HashOf(a), std::nullopt);
  EXPECT_EQ(pool->RefCount(a), 1);
  EXPECT_THAT(pool->CheckInvariants(), IsOk());

  ASSERT_OK_AND_ASSIGN(int32_t e2, pool->Allocate());
  ASSERT_OK_AND_ASSIGN(int32_t e3, pool->Allocate());
  EXPECT_EQ(e2, c);
  EXPECT_EQ(e3, b);
  ASSERT_EQ(evicted.size(), 3u);
  EXPECT_EQ(evicted[1].hash, 300u);
  EXPECT_EQ(evicted[2].hash, 200u);
  EXPECT_THAT(evicted[2].tokens, ElementsAreArray(Tokens(200)));
  EXPECT_EQ(pool->stats().evictions, 3);
  EXPECT_EQ(pool->num_cached_blocks(), 0);
  EXPECT_THAT(pool->Allocate(), StatusIs(absl::StatusCode::kResourceExhausted, _));
  EXPECT_THAT(pool->CheckInvariants(), IsOk());

  // The evicted hash can be registered again by its new block.
  EXPECT_TRUE(pool->Commit(e3, 100, Tokens(100)));
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolTest, EvictionWithoutBlockBytesGivesEmptyBytes) {
  std::vector<Evicted> evicted;
  BlockPool::Options options;
  options.on_evict = [&](const EvictedBlock& e) {
    evicted.push_back(
        {e.hash, e.block_id, {e.tokens.begin(), e.tokens.end()}, {e.bytes.begin(), e.bytes.end()}});
  };
  auto pool = MakePool(1, options);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  pool->Commit(b, 1, Tokens(0));
  pool->Release(b);
  ASSERT_OK_AND_ASSIGN(int32_t again, pool->Allocate());
  EXPECT_EQ(again, b);
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_THAT(evicted[0].bytes, IsEmpty());
  EXPECT_THAT(evicted[0].tokens, ElementsAre(0, 1, 2, 3));
}

TEST(BlockPoolTest, EvictionWithoutHookIsSilent) {
  auto pool = MakePool(1);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  pool->Commit(b, 1, Tokens(0));
  pool->Release(b);
  ASSERT_OK_AND_ASSIGN(int32_t again, pool->Allocate());
  EXPECT_EQ(again, b);
  EXPECT_EQ(pool->stats().evictions, 1);
  EXPECT_FALSE(pool->Contains(1));
  EXPECT_THAT(pool->CheckInvariants(), IsOk());
}

TEST(BlockPoolDeathTest, DoubleReleaseAborts) {
  auto pool = MakePool(1);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  pool->Release(b);
  EXPECT_DEATH(pool->Release(b), "double free");
}

TEST(BlockPoolDeathTest, CommitOfUnreferencedBlockAborts) {
  auto pool = MakePool(1);
  EXPECT_DEATH(pool->Commit(0, 1, Tokens(0)), "unreferenced");
}

TEST(BlockPoolDeathTest, CommitWithWrongTokenCountAborts) {
  auto pool = MakePool(1);
  ASSERT_OK_AND_ASSIGN(int32_t b, pool->Allocate());
  EXPECT_DEATH(pool->Commit(b, 1, std::vector<int32_t>{1, 2}), "tokens");
}

}  // namespace
}  // namespace tandem::engine
