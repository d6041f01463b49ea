#include "kvstore/tiered_store.h"

#include <algorithm>
#include <mutex>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::SmallFileSystem;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;
using ::testing::UnorderedElementsAre;

constexpr int32_t kTokens = 16;
constexpr size_t kPayload = 6000;

// Replays events into per-tier sets: what a router's index would believe.
struct EventLog {
  std::mutex mu;
  std::set<BlockHash> dram, ssd;
  int removed_ssd = 0;
  void operator()(const TierEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    std::set<BlockHash>& s = e.tier == Tier::kDram ? dram : ssd;
    for (BlockHash h : e.hashes) {
      if (e.kind == TierEvent::Kind::kStored) {
        EXPECT_TRUE(s.insert(h).second) << "Stored twice: " << h;
      } else {
        EXPECT_EQ(s.erase(h), 1u) << "Removed without Stored: " << h;
        if (e.tier == Tier::kSsd) ++removed_ssd;
      }
    }
  }
};

TieredStore::Options Opts(const std::string& ssd_path, size_t dram_blocks, EventLog* log) {
  TieredStore::Options o;
  o.model_id = "test-model";
  o.block_tokens = kTokens;
  o.payload_bytes = kPayload;
  o.dram_bytes = dram_blocks * EncodedBlockBytes(kTokens, kPayload);
  o.ssd_path = ssd_path;
  o.ssd_bytes = size_t{1} << 30;
  if (log != nullptr) o.on_event = [log](const TierEvent& e) { (*log)(e); };
  return o;
}

std::set<BlockHash> SnapshotOf(const TieredStore& store, Tier tier) {
  std::set<BlockHash> out;
  for (const auto& [h, t] : store.Snapshot()) {
    if (t == tier) out.insert(h);
  }
  return out;
}

TEST(TieredStoreTest, OffloadThenPromoteIsBitExactFromDramAndSsd) {
  TempDir dir;
  EventLog log;
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(Opts(dir.path() + "/ssd", 4, &log)));
  for (BlockHash h = 1; h <= 10; ++h)
    ASSERT_OK(store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload)));
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(store->Find(10), Tier::kDram);
  EXPECT_EQ(store->Find(1), Tier::kSsd);  // evicted from DRAM, written behind
  std::vector<uint8_t> out(kPayload);
  ASSERT_OK_AND_ASSIGN(Tier from, store->Get(10, TokensFor(10, kTokens), absl::MakeSpan(out)));
  EXPECT_EQ(from, Tier::kDram);
  EXPECT_EQ(out, PayloadFor(10, kPayload));
  ASSERT_OK_AND_ASSIGN(from, store->Get(1, TokensFor(1, kTokens), absl::MakeSpan(out)));
  EXPECT_EQ(from, Tier::kSsd);
  EXPECT_EQ(out, PayloadFor(1, kPayload));
  EXPECT_EQ(store->Find(1), Tier::kDram);  // promoted
  // Different tokens under the same hash: a miss, never someone else's KV.
  EXPECT_THAT(store->Get(2, TokensFor(3, kTokens), absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store->Get(77, TokensFor(77, kTokens), absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kNotFound));
  // The events describe exactly what the tiers hold.
  EXPECT_EQ(log.dram, SnapshotOf(*store, Tier::kDram));
  EXPECT_EQ(log.ssd, SnapshotOf(*store, Tier::kSsd));
  EXPECT_EQ(log.ssd.size(), 10u);
  EXPECT_EQ(log.dram.size(), 4u);
  const TieredStore::Stats stats = store->stats();
  EXPECT_EQ(stats.dram_hits, 1);
  EXPECT_EQ(stats.ssd_hits, 1);
  EXPECT_EQ(stats.ssd_writes, 10);
}

TEST(TieredStoreTest, ShutdownDrainsTheWriteQueue) {
  TempDir dir;
  {
    TieredStore::Options o = Opts(dir.path() + "/ssd", 2, nullptr);
    o.write_queue_blocks = 64;
    ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(o));
    for (BlockHash h = 1; h <= 40; ++h)
      ASSERT_OK(store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload)));
  }  // no Flush: the destructor writes whatever is queued
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(Opts(dir.path() + "/ssd", 2, nullptr)));
  EXPECT_EQ(store->ssd()->num_blocks(), 40u);
  std::vector<uint8_t> out(kPayload);
  for (BlockHash h = 1; h <= 40; ++h) {
    ASSERT_TRUE(store->Get(h, TokensFor(h, kTokens), absl::MakeSpan(out)).ok()) << h;
    EXPECT_EQ(out, PayloadFor(h, kPayload)) << h;
  }
}

TEST(TieredStoreTest, EraseAndCorruptionAreReportedAsRemoved) {
  TempDir dir;
  EventLog log;
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(Opts(dir.path() + "/ssd", 8, &log)));
  for (BlockHash h = 1; h <= 3; ++h) ASSERT_OK(store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload)));
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(30)));
  ASSERT_OK(store->Erase(2));
  EXPECT_EQ(store->Find(2), std::nullopt);
  EXPECT_THAT(log.dram, UnorderedElementsAre(1, 3));
  EXPECT_THAT(log.ssd, UnorderedElementsAre(1, 3));
  // Corrupt block 3 on SSD (a value with a bad checksum under its key) and
  // drop it from DRAM so the read goes to SSD.
  std::string bad = EncodeBlock({.model_id_hash = ModelIdHash("test-model"),
                                 .block_hash = 3,
                                 .tokens = TokensFor(3, kTokens),
                                 .payload = PayloadFor(3, kPayload)});
  bad[bad.size() - 1] ^= 0x40;
  ASSERT_OK(store->ssd()->Put(
      3, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()), nullptr));
  ASSERT_TRUE(store->dram().Erase(3));
  std::vector<uint8_t> out(kPayload, 0);
  EXPECT_THAT(store->Get(3, TokensFor(3, kTokens), absl::MakeSpan(out)),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(out, std::vector<uint8_t>(kPayload, 0));  // nothing copied out
  EXPECT_EQ(store->Find(3), std::nullopt);
  EXPECT_THAT(log.ssd, UnorderedElementsAre(1));
  EXPECT_EQ(store->stats().corrupt_blocks, 1);
}

TEST(TieredStoreTest, DramOnlyStoreAndBadSizes) {
  EventLog log;
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(Opts("", 2, &log)));
  EXPECT_EQ(store->ssd(), nullptr);
  for (BlockHash h = 1; h <= 3; ++h) ASSERT_OK(store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload)));
  EXPECT_THAT(log.dram, UnorderedElementsAre(2, 3));
  EXPECT_EQ(store->Find(1), std::nullopt);
  EXPECT_THAT(store->Put(9, TokensFor(9, 3), PayloadFor(9, kPayload)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::vector<uint8_t> small(10);
  EXPECT_THAT(store->Get(2, TokensFor(2, kTokens), absl::MakeSpan(small)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(store->Flush(absl::Now()));
}

// A full device under the SSD tier (issue #17): once a write fails there the
// store stops writing behind (nothing more is queued for SSD) and keeps
// serving from DRAM and from what SSD holds.
TEST(TieredStoreTest, FullSsdDeviceStopsWriteBehindAndKeepsServing) {
  TempDir dir;
  const std::string mount_point = dir.path() + "/small";
  SmallFileSystem fs(mount_point, size_t{1} << 20);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(Opts(mount_point + "/ssd", 4, nullptr)));
  BlockHash h = 0;
  while (store->ssd()->writable() && h < 1000) {
    ++h;
    ASSERT_OK(store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload)));
    ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(30)));
  }
  ASSERT_FALSE(store->ssd()->writable()) << "1 MiB never filled";
  const TieredStore::Stats full = store->stats();
  EXPECT_GE(full.ssd_write_errors, 1);
  for (BlockHash more = h + 1; more <= h + 20; ++more) {
    ASSERT_OK(store->Put(more, TokensFor(more, kTokens), PayloadFor(more, kPayload)));
  }
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(store->stats().ssd_write_errors, full.ssd_write_errors) << "blocks were still queued for SSD";
  EXPECT_EQ(store->stats().ssd_writes, full.ssd_writes);
  std::vector<uint8_t> out(kPayload);
  ASSERT_OK_AND_ASSIGN(Tier from, store->Get(h + 20, TokensFor(h + 20, kTokens), absl::MakeSpan(out)));
  EXPECT_EQ(from, Tier::kDram);
  EXPECT_EQ(out, PayloadFor(h + 20, kPayload));
  ASSERT_OK_AND_ASSIGN(from, store->Get(1, TokensFor(1, kTokens), absl::MakeSpan(out)));
  EXPECT_EQ(from, Tier::kSsd);
  EXPECT_EQ(out, PayloadFor(1, kPayload));
}

}  // namespace
}  // namespace tandem::kvstore
