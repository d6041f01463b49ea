#include "engine/kv_events.h"

#include <algorithm>

#include "engine/block_pool.h"
#include "gtest/gtest.h"

namespace tandem::engine {
namespace {

using Kind = KvEvent::Kind;

TEST(KvEventLogTest, BatchesNumberTheirEventsConsecutivelyAndKeepOrder) {
  KvEventLog log;
  EXPECT_TRUE(log.Drain(10).events.empty());
  log.Stored(1, KvTier::kHbm);
  log.Stored(2, KvTier::kHbm);
  log.Removed(1, KvTier::kHbm);
  KvEventLog::Batch a = log.Drain(2);
  ASSERT_EQ(a.events.size(), 2u);
  EXPECT_EQ(a.first_sequence_number, 1u);
  EXPECT_EQ(a.sequence_number, 2u);
  EXPECT_EQ(a.events[0].hash, 1u);
  EXPECT_EQ(a.events[1].hash, 2u);
  KvEventLog::Batch b = log.Drain(10);
  ASSERT_EQ(b.events.size(), 1u);
  EXPECT_EQ(b.first_sequence_number, 3u);
  EXPECT_EQ(b.sequence_number, 3u);
  EXPECT_EQ(b.events[0].kind, Kind::kRemoved);
  EXPECT_EQ(log.num_held(), 1u);
}

TEST(KvEventLogTest, SnapshotHoldsEveryTierAndTheLastAppendedNumber) {
  KvEventLog log;
  log.Stored(7, KvTier::kHbm);
  log.Stored(7, KvTier::kDram);
  log.Stored(8, KvTier::kSsd);
  (void)log.Drain(100);
  log.Removed(7, KvTier::kHbm);  // event 4, not drained: already in the snapshot
  KvEventLog::Snapshot snap = log.TakeSnapshot();
  EXPECT_EQ(snap.sequence_number, 4u);
  std::vector<std::pair<BlockHash, KvTier>> held;
  for (const KvEvent& e : snap.stored) held.push_back({e.hash, e.tier});
  std::sort(held.begin(), held.end());
  EXPECT_EQ(held, (std::vector<std::pair<BlockHash, KvTier>>{{7, KvTier::kDram}, {8, KvTier::kSsd}}));
}

TEST(KvEventLogTest, OverflowStartsTheNextBatchLateSoTheReceiverSeesAGap) {
  KvEventLog log(/*max_pending=*/3);
  for (BlockHash h = 1; h <= 5; ++h) log.Stored(h, KvTier::kHbm);
  KvEventLog::Batch batch = log.Drain(10);
  EXPECT_EQ(batch.first_sequence_number, 3u);  // 1 and 2 were dropped
  EXPECT_EQ(batch.sequence_number, 5u);
  ASSERT_EQ(batch.events.size(), 3u);
  EXPECT_EQ(batch.events[0].hash, 3u);
  EXPECT_EQ(log.Drain(10).sequence_number, 0u);  // nothing pending
  log.Stored(9, KvTier::kHbm);
  batch = log.Drain(10);
  EXPECT_EQ(batch.first_sequence_number, 6u);
  EXPECT_EQ(batch.sequence_number, 6u);
  EXPECT_EQ(log.num_held(), 6u);  // the held set stays exact
}

TEST(KvEventLogTest, EveryConsumerReadsTheSameNumberedEventsAtItsOwnPace) {
  KvEventLog log;
  log.Stored(1, KvTier::kHbm);
  const KvEventLog::ConsumerId late = log.AddConsumer();  // starts after event 1
  log.Stored(2, KvTier::kHbm);
  log.Removed(1, KvTier::kHbm);
  KvEventLog::Batch first = log.Drain(KvEventLog::kFirstConsumer, 10);
  EXPECT_EQ(first.first_sequence_number, 1u);
  EXPECT_EQ(first.sequence_number, 3u);
  KvEventLog::Batch a = log.Drain(late, 1);
  EXPECT_EQ(a.first_sequence_number, 2u);
  ASSERT_EQ(a.events.size(), 1u);
  EXPECT_EQ(a.events[0].hash, 2u);
  log.Stored(3, KvTier::kDram);
  KvEventLog::Batch b = log.Drain(late, 10);  // event 3 was kept for it
  EXPECT_EQ(b.first_sequence_number, 3u);
  EXPECT_EQ(b.sequence_number, 4u);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(b.events[0].kind, Kind::kRemoved);
  EXPECT_EQ(b.events[1].tier, KvTier::kDram);
  // The snapshot is the same whoever asks: it includes event 4.
  EXPECT_EQ(log.TakeSnapshot().sequence_number, 4u);
  // A forgotten consumer drains nothing and holds nothing back.
  log.RemoveConsumer(late);
  EXPECT_TRUE(log.Drain(late, 10).events.empty());
  EXPECT_EQ(log.Drain(10).first_sequence_number, 4u);
}

TEST(KvEventLogTest, ASlowConsumerLosesOnlyWhatOverflowsAndTheOtherLosesNothing) {
  KvEventLog log(/*max_pending=*/4);
  const KvEventLog::ConsumerId slow = log.AddConsumer();
  for (BlockHash h = 1; h <= 10; ++h) {
    log.Stored(h, KvTier::kHbm);
    KvEventLog::Batch fast = log.Drain(10);  // keeps up
    ASSERT_EQ(fast.first_sequence_number, h);
    ASSERT_EQ(fast.sequence_number, h);
  }
  KvEventLog::Batch behind = log.Drain(slow, 100);
  EXPECT_EQ(behind.first_sequence_number, 7u);  // 1..6 overflowed: a gap
  EXPECT_EQ(behind.sequence_number, 10u);
  EXPECT_EQ(behind.events.size(), 4u);
}

TEST(KvEventLogTest, BlockPoolReportsCommitsAndEvictions) {
  KvEventLog log;
  BlockPool::Options options;
  options.num_blocks = 1;
  options.block_size = 2;
  options.on_commit = [&](BlockHash h) { log.Stored(h, KvTier::kHbm); };
  options.on_evict = [&](const EvictedBlock& b) { log.Removed(b.hash, KvTier::kHbm); };
  auto pool = BlockPool::Create(options);
  ASSERT_TRUE(pool.ok());
  const std::vector<int32_t> tokens = {1, 2};
  int32_t b = *(*pool)->Allocate();
  EXPECT_TRUE((*pool)->Commit(b, 42, tokens));
  EXPECT_TRUE((*pool)->Commit(b, 42, tokens));  // already registered: no second event
  (*pool)->Release(b);
  b = *(*pool)->Allocate();  // evicts 42
  KvEventLog::Batch batch = log.Drain(10);
  ASSERT_EQ(batch.events.size(), 2u);
  EXPECT_EQ(batch.events[0].kind, Kind::kStored);
  EXPECT_EQ(batch.events[1].kind, Kind::kRemoved);
  EXPECT_EQ(batch.events[1].hash, 42u);
  EXPECT_EQ(log.num_held(), 0u);
}

}  // namespace
}  // namespace tandem::engine
