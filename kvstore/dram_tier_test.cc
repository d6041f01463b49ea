#include "kvstore/dram_tier.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;

std::vector<uint8_t> Read(DramTier& tier, BlockHash h) {
  std::vector<uint8_t> out;
  tier.Get(h, [&](absl::Span<const uint8_t> v) { out.assign(v.begin(), v.end()); });
  return out;
}

TEST(DramTierTest, EvictsLeastRecentlyUsedWithinTheBudget) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create({.slot_bytes = 100, .capacity_bytes = 350}));
  EXPECT_EQ(tier->num_slots(), 3u);
  std::vector<BlockHash> evicted;
  for (BlockHash h = 1; h <= 3; ++h) ASSERT_OK(tier->Put(h, PayloadFor(h, 100), &evicted));
  EXPECT_TRUE(evicted.empty());
  EXPECT_EQ(Read(*tier, 1), PayloadFor(1, 100));  // 1 becomes most recent: 2 is the LRU
  ASSERT_OK(tier->Put(4, PayloadFor(4, 60), &evicted));
  EXPECT_THAT(evicted, ElementsAre(2));
  EXPECT_FALSE(tier->Contains(2));
  EXPECT_EQ(Read(*tier, 4), PayloadFor(4, 60));
  EXPECT_THAT(tier->Keys(), ElementsAre(3, 1, 4));
  EXPECT_EQ(tier->used_bytes(), 260u);
  EXPECT_LE(tier->slots_in_use() * tier->slot_bytes(), tier->capacity_bytes());
}

TEST(DramTierTest, ReplaceEraseAndSizeLimits) {
  ASSERT_OK_AND_ASSIGN(auto tier, DramTier::Create({.slot_bytes = 64, .capacity_bytes = 128}));
  ASSERT_OK(tier->Put(9, PayloadFor(1, 64), nullptr));
  ASSERT_OK(tier->Put(9, PayloadFor(2, 32), nullptr));  // replaces, same slot
  EXPECT_EQ(Read(*tier, 9), PayloadFor(2, 32));
  EXPECT_EQ(tier->slots_in_use(), 1u);
  EXPECT_TRUE(tier->Erase(9));
  EXPECT_FALSE(tier->Erase(9));
  EXPECT_FALSE(tier->Get(9, [](absl::Span<const uint8_t>) {}));
  EXPECT_EQ(tier->used_bytes(), 0u);
  EXPECT_THAT(tier->Put(1, PayloadFor(1, 65), nullptr), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DramTier::Create({.slot_bytes = 64, .capacity_bytes = 63}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DramTierTest, SlotsLiveInTheTransferEngineRegion) {
  transfer::TransferOptions options;
  options.name = "dram-tier-test";
  absl::StatusOr<std::unique_ptr<transfer::TransferEngine>> engine =
      transfer::TransferEngine::Create(options);
  if (!engine.ok()) GTEST_SKIP() << "no UCX transport here: " << engine.status();
  ASSERT_OK_AND_ASSIGN(
      auto tier, DramTier::Create({.slot_bytes = 256, .capacity_bytes = 1024, .transfer = engine->get()}));
  ASSERT_TRUE(tier->region().has_value());
  EXPECT_GE(tier->region()->bytes, 1024u);
  EXPECT_FALSE(tier->region()->packed_rkey.empty());
  ASSERT_OK(tier->Put(5, PayloadFor(5, 200), nullptr));
  ASSERT_OK_AND_ASSIGN(DramTier::Location loc, [&]() -> absl::StatusOr<DramTier::Location> {
    auto l = tier->Locate(5);
    if (!l) return absl::NotFoundError("5");
    return *l;
  }());
  // A remote reader sees the value at base + offset.
  const uint8_t* base = reinterpret_cast<const uint8_t*>(tier->region()->base_address);
  EXPECT_EQ(std::vector<uint8_t>(base + loc.offset, base + loc.offset + loc.bytes), PayloadFor(5, 200));
}

}  // namespace
}  // namespace tandem::kvstore
