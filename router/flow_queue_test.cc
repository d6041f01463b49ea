// FlowQueue on a FakeClock: admission, dispatch order (priority bands, fair
// shares across tenants), shedding, the queue TTL and deadlines, and
// callbacks that re-enter the queue.
#include "router/flow_queue.h"

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A queue under fixed limits that records what it dispatched and dropped.
class FlowQueueTest : public ::testing::Test {
 protected:
  void Make(int64_t max_admitted, int64_t max_running, FlowQueue::Options options = {}) {
    limits_ = {max_admitted, max_running};
    options.limits = [this] { return limits_; };
    options.clock = &clock_;
    options.on_shed = [this](std::string_view reason) { shed_.emplace_back(reason); };
    queue_ = std::make_unique<FlowQueue>(std::move(options));
  }
  absl::Status Enter(uint64_t key, std::string tenant, int32_t priority = 0, double cost = 100,
                     absl::Time deadline = absl::InfiniteFuture()) {
    return queue_->Enter({.key = key,
                          .priority = priority,
                          .tenant = std::move(tenant),
                          .cost = cost,
                          .deadline = deadline,
                          .dispatch = [this, key] { dispatched_.push_back(key); },
                          .drop = [this, key](absl::Status why) { dropped_.emplace_back(key, why); }});
  }

  FakeClock clock_;
  FlowQueue::Limits limits_;
  std::unique_ptr<FlowQueue> queue_;
  std::vector<uint64_t> dispatched_;
  std::vector<std::pair<uint64_t, absl::Status>> dropped_;
  std::vector<std::string> shed_;
};

TEST_F(FlowQueueTest, DispatchesAtOnceWhileThereIsRoomThenHoldsUntilDone) {
  Make(/*max_admitted=*/0, /*max_running=*/2);
  ASSERT_OK(Enter(1, "a"));
  ASSERT_OK(Enter(2, "a"));
  ASSERT_OK(Enter(3, "a"));
  EXPECT_THAT(dispatched_, ElementsAre(1, 2));
  EXPECT_EQ(queue_->stats().waiting, 1);
  EXPECT_EQ(queue_->stats().running, 2);
  queue_->Done(2);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3));
  queue_->Done(2);  // idempotent: frees nothing more
  EXPECT_EQ(queue_->stats().running, 2);
}

TEST_F(FlowQueueTest, NoRunningLimitMeansNothingWaits) {
  Make(/*max_admitted=*/0, /*max_running=*/0);
  for (uint64_t k = 1; k <= 5; ++k) ASSERT_OK(Enter(k, "a"));
  EXPECT_EQ(dispatched_.size(), 5u);
  EXPECT_EQ(queue_->stats().waiting, 0);
}

TEST_F(FlowQueueTest, HigherPriorityBandGoesFirst) {
  Make(0, 1);
  ASSERT_OK(Enter(1, "a"));  // runs
  ASSERT_OK(Enter(2, "a", /*priority=*/0));
  ASSERT_OK(Enter(3, "a", /*priority=*/-5));
  ASSERT_OK(Enter(4, "b", /*priority=*/7));
  EXPECT_THAT(queue_->stats().waiting_by_priority,
              ElementsAre(std::pair{-5, 1}, std::pair{0, 1}, std::pair{7, 1}));
  queue_->Done(1);
  queue_->Done(4);
  queue_->Done(2);
  EXPECT_THAT(dispatched_, ElementsAre(1, 4, 2, 3));
}

TEST_F(FlowQueueTest, LightTenantSkipsAHeavyTenantsBacklog) {
  Make(0, 1);
  ASSERT_OK(Enter(999, "x"));  // runs while heavy's backlog builds
  for (uint64_t k = 1; k <= 10; ++k) ASSERT_OK(Enter(k, "heavy"));
  queue_->Done(999);  // heavy's first runs
  ASSERT_OK(Enter(100, "light"));
  // The light request goes next, before heavy's nine waiting.
  queue_->Done(1);
  EXPECT_THAT(dispatched_, ElementsAre(999, 1, 100));
  queue_->Done(100);
  EXPECT_THAT(dispatched_, ElementsAre(999, 1, 100, 2));
}

TEST_F(FlowQueueTest, DecodeRoomBoundsDispatchesUntilPumped) {
  Make(/*max_admitted=*/0, /*max_running=*/4);
  limits_.dispatch_room = 0;  // the decode side is full
  ASSERT_OK(Enter(1, "a"));
  ASSERT_OK(Enter(2, "a"));
  EXPECT_TRUE(dispatched_.empty());
  EXPECT_EQ(queue_->stats().waiting, 2);
  limits_.dispatch_room = 1;  // one request ended on a decode worker
  queue_->Pump();
  EXPECT_THAT(dispatched_, ElementsAre(1));
  queue_->Pump();  // asked again: the router's room would now count request 1
  EXPECT_THAT(dispatched_, ElementsAre(1, 2));
  limits_.dispatch_room = -1;
  ASSERT_OK(Enter(3, "a"));
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3));
}

TEST_F(FlowQueueTest, WithTheDecodeRoomSpentOnlyATenantBelowItsShareOfActiveRequestsGoes) {
  Make(/*max_admitted=*/0, /*max_running=*/4, {.below_share_skips_limit = true});
  for (uint64_t k = 1; k <= 4; ++k) ASSERT_OK(Enter(k, "heavy"));
  for (uint64_t k = 1; k <= 4; ++k) queue_->Done(k);  // first tokens back; still decoding
  limits_.dispatch_room = 0;
  ASSERT_OK(Enter(5, "heavy"));  // alone at its share (4 of 4 active): waits
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4));
  // The light tenant (none active) is below half of the active requests:
  // its requests go without room, until it reaches its share.
  ASSERT_OK(Enter(6, "light"));
  ASSERT_OK(Enter(7, "light"));
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 6, 7));
  queue_->Ended(1);
  queue_->Pump();  // heavy: 3 of 5 active, above half
  EXPECT_EQ(queue_->stats().waiting, 1);
  limits_.dispatch_room = 1;
  queue_->Pump();
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 6, 7, 5));
}

TEST_F(FlowQueueTest, IdleTenantSkipsTheRunningLimitOncePerTenant) {
  Make(0, 1, {.below_share_skips_limit = true});
  ASSERT_OK(Enter(1, "heavy"));  // runs
  ASSERT_OK(Enter(2, "heavy"));  // waits: at the limit
  ASSERT_OK(Enter(3, "light"));  // light has none running: goes at once
  ASSERT_OK(Enter(4, "light"));  // light has one running: waits
  ASSERT_OK(Enter(5, "other"));  // so does a third tenant's first: 2 = twice the limit
  EXPECT_THAT(dispatched_, ElementsAre(1, 3));
  EXPECT_EQ(queue_->stats().running, 2);
  // Light and other are both idle now; one extra may run: the smaller
  // start tag, other's (light's second starts after its first's finish).
  queue_->Done(3);
  EXPECT_THAT(dispatched_, ElementsAre(1, 3, 5));
  // Heavy and light are both idle now, with equal start tags: the earlier
  // goes past the limit, then twice the limit runs again.
  queue_->Done(1);
  EXPECT_THAT(dispatched_, ElementsAre(1, 3, 5, 2));
  EXPECT_EQ(queue_->stats().waiting, 1);
  queue_->Done(5);
  EXPECT_THAT(dispatched_, ElementsAre(1, 3, 5, 2, 4));
}

TEST_F(FlowQueueTest, TenantBelowItsWeightedShareGoesPastTheLimit) {
  FlowQueue::Options options;
  options.below_share_skips_limit = true;
  options.tenant_weights = {{"light", 3}, {"heavy", 1}};
  Make(0, 4, std::move(options));
  for (uint64_t k = 1; k <= 6; ++k) ASSERT_OK(Enter(k, "heavy"));  // 4 run, 2 wait
  EXPECT_EQ(queue_->stats().running, 4);
  // Light's share of twice the limit is 6 (weight 3 of 4), capped at the
  // 4 it may run alone: four go past the limit, the fifth waits.
  for (uint64_t k = 11; k <= 15; ++k) ASSERT_OK(Enter(k, "light"));
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 11, 12, 13, 14));
  EXPECT_EQ(queue_->stats().running, 8);
  // Heavy's share is 2: with 2 of its own running it gets no slot, though
  // fewer than twice the limit run in all.
  queue_->Done(1);
  queue_->Done(2);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 11, 12, 13, 14));
  EXPECT_EQ(queue_->stats().running, 6);
  // With 1 running, heavy is below its share: its fifth goes past the limit.
  queue_->Done(3);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 11, 12, 13, 14, 5));
  // Light below its cap again: its fifth goes, not heavy's sixth.
  queue_->Done(11);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 11, 12, 13, 14, 5, 15));
  // Under the limit, plain order: heavy's sixth.
  queue_->Done(12);
  queue_->Done(13);
  queue_->Done(14);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3, 4, 11, 12, 13, 14, 5, 15, 6));
}

TEST_F(FlowQueueTest, OneTenantNeverGoesPastTheLimit) {
  Make(0, 2, {.below_share_skips_limit = true});
  for (uint64_t k = 1; k <= 4; ++k) ASSERT_OK(Enter(k, ""));
  EXPECT_THAT(dispatched_, ElementsAre(1, 2));
  EXPECT_EQ(queue_->stats().waiting, 2);
}

TEST_F(FlowQueueTest, IdleTenantOfALowerBandWaitsForTheHigherBand) {
  Make(0, 1, {.below_share_skips_limit = true});
  ASSERT_OK(Enter(1, "a", /*priority=*/1));
  ASSERT_OK(Enter(2, "a", /*priority=*/1));  // the highest band waits
  ASSERT_OK(Enter(3, "b", /*priority=*/0));  // b is idle, but band 1 waits
  EXPECT_THAT(dispatched_, ElementsAre(1));
  queue_->Done(1);
  EXPECT_THAT(dispatched_, ElementsAre(1, 2, 3));  // band 0 is now the highest waiting
}

TEST_F(FlowQueueTest, BackloggedTenantsShareByWeightAndCost) {
  FlowQueue::Options options;
  options.tenant_weights = {{"gold", 3}};
  Make(0, 1, std::move(options));
  ASSERT_OK(Enter(999, "x"));  // occupies the slot while both backlogs build
  for (uint64_t k = 1; k <= 40; ++k) {
    ASSERT_OK(Enter(k, "gold"));
    ASSERT_OK(Enter(1000 + k, "plain"));
  }
  for (int i = 0; i < 40; ++i) queue_->Done(dispatched_.back());
  int gold = 0;
  for (uint64_t k : dispatched_) gold += k <= 40 ? 1 : 0;
  EXPECT_EQ(gold, 30);  // 3 of every 4 dispatches
  // Cost counts too: a tenant sending prompts twice as long gets half the
  // requests through.
  Make(0, 1);
  dispatched_.clear();
  ASSERT_OK(Enter(999, "x"));
  for (uint64_t k = 1; k <= 40; ++k) {
    ASSERT_OK(Enter(k, "long", 0, /*cost=*/200));
    ASSERT_OK(Enter(1000 + k, "short", 0, /*cost=*/100));
  }
  for (int i = 0; i < 30; ++i) queue_->Done(dispatched_.back());
  int long_ones = 0;
  for (uint64_t k : dispatched_) long_ones += k <= 40 ? 1 : 0;
  EXPECT_EQ(long_ones, 10);
}

TEST_F(FlowQueueTest, FullQueueShedsTheNewestOfTheLowestBandOrRefuses) {
  Make(/*max_admitted=*/4, /*max_running=*/1);
  ASSERT_OK(Enter(1, "a", 0));  // runs
  ASSERT_OK(Enter(2, "a", -1));
  ASSERT_OK(Enter(3, "a", -1));
  ASSERT_OK(Enter(4, "a", 0));
  // Same priority as the lowest waiting would need to be lower: refused.
  EXPECT_THAT(Enter(5, "a", -1), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queue_full:")));
  EXPECT_EQ(ShedReasonOf(Enter(5, "a", -1)), kShedQueueFull);
  // Higher: sheds 3 (the newest of band -1), not 2 and not running 1.
  ASSERT_OK(Enter(6, "b", 2));
  ASSERT_EQ(dropped_.size(), 1u);
  EXPECT_EQ(dropped_[0].first, 3u);
  EXPECT_EQ(ShedReasonOf(dropped_[0].second), kShedLowerPriority);
  EXPECT_THAT(shed_, ElementsAre("queue_full", "queue_full", "lower_priority"));
  // A running request is never shed: with only it and band 2 left, priority 1 is refused.
  queue_->Remove(2);
  queue_->Remove(4);
  ASSERT_OK(Enter(7, "c", 2));
  ASSERT_OK(Enter(8, "c", 2));
  EXPECT_THAT(Enter(9, "c", 1), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(dispatched_, ElementsAre(1));
}

TEST_F(FlowQueueTest, FullQueueMakesRoomForATenantBelowItsShare) {
  Make(/*max_admitted=*/5, /*max_running=*/1);
  ASSERT_OK(Enter(999, "x"));  // runs while heavy's backlog builds
  for (uint64_t k = 1; k <= 4; ++k) ASSERT_OK(Enter(k, "heavy"));
  queue_->Done(999);  // heavy's 1 runs
  ASSERT_OK(Enter(5, "heavy"));
  // The heavy tenant cannot make room for itself...
  EXPECT_EQ(ShedReasonOf(Enter(6, "heavy")), kShedQueueFull);
  // ...but the light one takes the place of heavy's newest.
  ASSERT_OK(Enter(7, "light"));
  ASSERT_EQ(dropped_.size(), 1u);
  EXPECT_EQ(dropped_[0].first, 5u);
  EXPECT_EQ(ShedReasonOf(dropped_[0].second), kShedOverShare);
  // A light arrival that would be served after heavy's waiting ones (a
  // prompt 100x as long) is refused rather than shed for.
  EXPECT_EQ(ShedReasonOf(Enter(8, "light", 0, /*cost=*/10000)), kShedQueueFull);
  queue_->Done(1);
  EXPECT_THAT(dispatched_, ElementsAre(999, 1, 7));
}

TEST_F(FlowQueueTest, QueueTtlAndDeadlinesBoundTheWait) {
  FlowQueue::Options options;
  options.queue_ttl = absl::Seconds(5);
  Make(0, 1, std::move(options));
  ASSERT_OK(Enter(1, "a"));
  ASSERT_OK(Enter(2, "a"));
  ASSERT_OK(Enter(3, "a", 0, 100, clock_.Now() + absl::Seconds(2)));
  clock_.Advance(absl::Seconds(2));
  queue_->Expire();
  ASSERT_EQ(dropped_.size(), 1u);
  EXPECT_EQ(dropped_[0].first, 3u);
  EXPECT_THAT(dropped_[0].second, StatusIs(absl::StatusCode::kDeadlineExceeded));
  clock_.Advance(absl::Seconds(3));
  // Met again at dispatch, before the sweeper's Expire: 2 expired.
  queue_->Done(1);
  ASSERT_EQ(dropped_.size(), 2u);
  EXPECT_EQ(dropped_[1].first, 2u);
  EXPECT_EQ(ShedReasonOf(dropped_[1].second), kShedQueueTtl);
  EXPECT_THAT(dispatched_, ElementsAre(1));
  EXPECT_THAT(shed_, ElementsAre("queue_ttl"));
  EXPECT_EQ(queue_->stats().waiting, 0);
}

TEST_F(FlowQueueTest, RemovedOrDoneWhileWaitingRunsNoCallback) {
  Make(0, 1);
  ASSERT_OK(Enter(1, "a"));
  ASSERT_OK(Enter(2, "a"));
  ASSERT_OK(Enter(3, "a"));
  EXPECT_TRUE(queue_->Remove(2));
  EXPECT_FALSE(queue_->Remove(2));
  EXPECT_FALSE(queue_->Remove(1));  // running
  queue_->Done(3);                  // waiting: just leaves
  queue_->Done(1);
  EXPECT_THAT(dispatched_, ElementsAre(1));
  EXPECT_TRUE(dropped_.empty());
  EXPECT_EQ(queue_->stats().waiting, 0);
  EXPECT_EQ(queue_->stats().running, 0);
}

TEST_F(FlowQueueTest, CallbacksThatFinishAtOnceDoNotRecurse) {
  Make(0, 1);
  // Each dispatch finishes at once (Done inside its callback), as a request
  // whose placement fails does; the depth of nested dispatches stays 1.
  int depth = 0, max_depth = 0, ran = 0;
  for (uint64_t k = 1; k <= 200; ++k) {
    ASSERT_OK(queue_->Enter({.key = k, .dispatch = [&, k] {
                               max_depth = std::max(max_depth, ++depth);
                               ++ran;
                               if (k > 1) queue_->Done(k);
                               --depth;
                             }}));
  }
  queue_->Done(1);
  EXPECT_EQ(ran, 200);
  EXPECT_EQ(max_depth, 1);
}

TEST_F(FlowQueueTest, TenantStateIsForgottenOnceIdle) {
  Make(0, 1);
  for (uint64_t k = 1; k <= 50; ++k) {
    ASSERT_OK(Enter(k, "tenant-" + std::to_string(k)));
    queue_->Done(k);
  }
  queue_->Expire();
  EXPECT_LE(queue_->stats().tenants, 1);
}

TEST(ShedReasonTest, ReadsOnlyKnownReasonsOfResourceExhausted) {
  EXPECT_EQ(ShedReasonOf(ShedStatus(kShedSlo, "predicted TTFT 90 ms > 50 ms")), kShedSlo);
  EXPECT_EQ(ShedReasonOf(absl::ResourceExhaustedError("queue_fullness: x")), "");
  EXPECT_EQ(ShedReasonOf(absl::UnavailableError("queue_full: x")), "");
  EXPECT_EQ(ShedReasonOf(absl::OkStatus()), "");
}

}  // namespace
}  // namespace tandem::router
