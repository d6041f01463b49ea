#include "router/placement_policies.h"

#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

TEST(PlacementPoliciesTest, ParsesPolicyNames) {
  for (const char* name : {"kv", "round_robin", "least_loaded", "random"}) {
    ASSERT_OK_AND_ASSIGN(Policy p, ParsePolicy(name));
    EXPECT_STREQ(PolicyName(p), name);
  }
  EXPECT_THAT(ParsePolicy("fastest").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fastest")));
}

// --- Decode choosers.

TEST(PlacementPoliciesTest, KvDecodeWantsRoomThenFewestRunningThenMostFree) {
  ChooserState state(1);
  // Needs 10 blocks: "full" has fewer free; the rest are ranked by running.
  const std::vector<DecodeCandidate> c = {
      {.running = 0, .free_blocks = 5, .total_blocks = 100},   // lacks room
      {.running = 3, .free_blocks = 50, .total_blocks = 100},  //
      {.running = 2, .free_blocks = 20, .total_blocks = 100},  // fewest running with room
      {.running = 2, .free_blocks = 10, .total_blocks = 100},  // same running, fewer free
  };
  EXPECT_EQ(ChooseDecodeKv(c, /*needed_blocks=*/10, &state), 2u);
  // With room everywhere the idle worker wins.
  EXPECT_EQ(ChooseDecodeKv(c, /*needed_blocks=*/5, &state), 0u);
  // A worker that reports no pool size never counts as lacking room.
  const std::vector<DecodeCandidate> unknown = {{.running = 1, .free_blocks = 50, .total_blocks = 100},
                                                {.running = 0, .free_blocks = 0, .total_blocks = 0}};
  EXPECT_EQ(ChooseDecodeKv(unknown, 10, &state), 1u);
  // Ties go to the earlier candidate.
  const std::vector<DecodeCandidate> same(3, {.running = 1, .free_blocks = 9, .total_blocks = 10});
  EXPECT_EQ(ChooseDecodeKv(same, 1, &state), 0u);
}

TEST(PlacementPoliciesTest, LeastLoadedDecodeIgnoresRoom) {
  ChooserState state(1);
  const std::vector<DecodeCandidate> c = {{.running = 2, .free_blocks = 90, .total_blocks = 100},
                                          {.running = 1, .free_blocks = 1, .total_blocks = 100},
                                          {.running = 1, .free_blocks = 3, .total_blocks = 100}};
  EXPECT_EQ(ChooseDecodeLeastLoaded(c, /*needed_blocks=*/50, &state), 2u);
}

TEST(PlacementPoliciesTest, RoundRobinTakesTurnsPerState) {
  ChooserState decode(1), prefill(1);
  const std::vector<DecodeCandidate> d(3);
  const std::vector<PrefillCandidate> p(2);
  std::vector<size_t> picks;
  for (int i = 0; i < 4; ++i) picks.push_back(ChooseDecodeRoundRobin(d, 1, &decode));
  EXPECT_EQ(picks, (std::vector<size_t>{0, 1, 2, 0}));
  picks.clear();
  for (int i = 0; i < 3; ++i) picks.push_back(ChoosePrefillRoundRobin(p, &prefill));
  EXPECT_EQ(picks, (std::vector<size_t>{0, 1, 0}));
}

TEST(PlacementPoliciesTest, RandomReachesEveryCandidateAndIsSeeded) {
  ChooserState a(7), b(7);
  const std::vector<DecodeCandidate> d(4);
  const std::vector<PrefillCandidate> p(4);
  std::set<size_t> seen_d, seen_p;
  for (int i = 0; i < 200; ++i) {
    const size_t x = ChooseDecodeRandom(d, 1, &a);
    EXPECT_EQ(x, ChooseDecodeRandom(d, 1, &b));  // same seed, same sequence
    seen_d.insert(x);
    seen_p.insert(ChoosePrefillRandom(p, &a));
    ChoosePrefillRandom(p, &b);
  }
  EXPECT_EQ(seen_d.size(), 4u);
  EXPECT_EQ(seen_p.size(), 4u);
}

// --- Prefill choosers.

TEST(PlacementPoliciesTest, KvPrefillTakesTheLowestPredictedTtft) {
  ChooserState state(1);
  const std::vector<PrefillCandidate> c = {{.queued_tokens = 0, .predicted_ttft_ms = 9},
                                           {.queued_tokens = 500, .predicted_ttft_ms = 3},
                                           {.queued_tokens = 0, .predicted_ttft_ms = 3}};
  EXPECT_EQ(ChoosePrefillKv(c, &state), 1u);  // the earlier of the tie
}

TEST(PlacementPoliciesTest, LeastLoadedPrefillTakesTheShortestQueue) {
  ChooserState state(1);
  const std::vector<PrefillCandidate> c = {{.queued_tokens = 500, .predicted_ttft_ms = 1},
                                           {.queued_tokens = 10, .predicted_ttft_ms = 99}};
  EXPECT_EQ(ChoosePrefillLeastLoaded(c, &state), 1u);
}

TEST(PlacementPoliciesTest, ChoosersForPairsEachPolicysChoosers) {
  EXPECT_EQ(ChoosersFor(Policy::kKv).decode, &ChooseDecodeKv);
  EXPECT_EQ(ChoosersFor(Policy::kKv).prefill, &ChoosePrefillKv);
  EXPECT_EQ(ChoosersFor(Policy::kRoundRobin).decode, &ChooseDecodeRoundRobin);
  EXPECT_EQ(ChoosersFor(Policy::kRoundRobin).prefill, &ChoosePrefillRoundRobin);
  EXPECT_EQ(ChoosersFor(Policy::kLeastLoaded).decode, &ChooseDecodeLeastLoaded);
  EXPECT_EQ(ChoosersFor(Policy::kLeastLoaded).prefill, &ChoosePrefillLeastLoaded);
  EXPECT_EQ(ChoosersFor(Policy::kRandom).decode, &ChooseDecodeRandom);
  EXPECT_EQ(ChoosersFor(Policy::kRandom).prefill, &ChoosePrefillRandom);
}

// --- Predictions.

TEST(PlacementPoliciesTest, CachedTokensLeaveTheLastTokenToCompute) {
  KvIndex::PrefixMatch m;
  m.blocks = 4;
  EXPECT_EQ(CachedTokens(nullptr, 16, 100), 0);
  EXPECT_EQ(CachedTokens(&m, 16, 100), 64);
  EXPECT_EQ(CachedTokens(&m, 16, 64), 63);  // the whole prompt is cached: one token still computes
}

TEST(PlacementPoliciesTest, TpotScalesWithTheBatchTheRequestJoins) {
  EXPECT_EQ(PredictTpotMs(0, 4, 3), 0);           // no step time reported
  EXPECT_DOUBLE_EQ(PredictTpotMs(10, 4, 3), 10);  // joins a batch of 4: (3 + 1) / 4
  EXPECT_DOUBLE_EQ(PredictTpotMs(10, 4, 7), 20);  // (7 + 1) / 4
  EXPECT_DOUBLE_EQ(PredictTpotMs(10, 8, 1), 10);  // never below the mean
  EXPECT_DOUBLE_EQ(PredictTpotMs(10, 0, 1), 20);  // no batch reported: counts as 1
}

TEST(DecodeRoomTest, RequestsUntilThePredictedTpotPassesTheLimit) {
  EXPECT_EQ(DecodeRoom(0, 4, 3, 50), -1);  // no step time reported: no bound
  // 10 ms steps of 4: up to 20 running keep the prediction <= 50 ms.
  EXPECT_EQ(DecodeRoom(10, 4, 3, 50), 17);
  EXPECT_DOUBLE_EQ(PredictTpotMs(10, 4, 3 + 16), 50);
  EXPECT_GT(PredictTpotMs(10, 4, 3 + 17), 50);
  EXPECT_EQ(DecodeRoom(10, 4, 20, 50), 0);
  EXPECT_EQ(DecodeRoom(10, 4, 25, 50), 0);  // over: none, never negative
  // Steps slower than the limit: still up to 8 running.
  EXPECT_EQ(DecodeRoom(80, 1, 0, 50), 8);
  EXPECT_EQ(DecodeRoom(80, 1, 5, 50), 3);
  EXPECT_EQ(DecodeRoom(80, 1, 8, 50), 0);
}

TEST(PlacementPoliciesTest, PrefillCostModelAddsQueueComputeLoadsAndTransfer) {
  PlacementOptions o{.dram_load_ms_per_block = 2, .ssd_load_ms_per_block = 5};
  KvIndex::PrefixMatch own;
  own.blocks = 3;  // 1 in HBM, 1 in DRAM, 1 in SSD
  own.tier_blocks[tandem::v1::KV_TIER_HBM] = 1;
  own.tier_blocks[tandem::v1::KV_TIER_DRAM] = 1;
  own.tier_blocks[tandem::v1::KV_TIER_SSD] = 1;
  const PrefillPrediction p = PredictPrefill(o, {.prompt_tokens = 70,
                                                 .block_size = 16,
                                                 .own = &own,
                                                 .queued_tokens = 100,
                                                 .ms_per_token = 0.5,
                                                 .transfer_ms = 3});
  EXPECT_EQ(p.cached_tokens, 48);
  EXPECT_EQ(p.blocks_to_load, 2);
  EXPECT_EQ(p.store_blocks, 0);
  EXPECT_DOUBLE_EQ(p.queue_ms, 50);
  EXPECT_DOUBLE_EQ(p.ttft_ms, 50 + (70 - 48) * 0.5 + 2 + 5 + 3);
}

TEST(PlacementPoliciesTest, ALongerStorePrefixExtendsTheCandidatesAtItsLoadCost) {
  PlacementOptions o{.store_load_ms_per_block = 4};
  KvIndex::PrefixMatch own, store, shorter;
  own.blocks = 1;
  own.tier_blocks[tandem::v1::KV_TIER_HBM] = 1;
  store.blocks = 4;
  shorter.blocks = 1;
  const PrefillCostInputs in{
      .prompt_tokens = 100, .block_size = 16, .own = &own, .store = &store, .ms_per_token = 1};
  const PrefillPrediction p = PredictPrefill(o, in);
  EXPECT_EQ(p.cached_tokens, 64);
  EXPECT_EQ(p.store_blocks, 3);
  EXPECT_DOUBLE_EQ(p.ttft_ms, (100 - 64) * 1.0 + 3 * 4);
  PrefillCostInputs no_gain = in;
  no_gain.store = &shorter;  // not longer than the own prefix: unused
  EXPECT_EQ(PredictPrefill(o, no_gain).store_blocks, 0);
  EXPECT_EQ(PredictPrefill(o, no_gain).cached_tokens, 16);
}

// --- Aggregation.

TEST(PlacementPoliciesTest, WithoutAPrefillWorkerTheDecodeWorkerPrefills) {
  for (Policy p : {Policy::kKv, Policy::kRoundRobin, Policy::kLeastLoaded, Policy::kRandom}) {
    EXPECT_TRUE(DecideAggregation({.policy = p}, {.has_prefill = false})) << PolicyName(p);
  }
}

TEST(PlacementPoliciesTest, KvAggregatesASmallUncachedRemainder) {
  const PlacementOptions kv{.policy = Policy::kKv, .aggregate_max_uncached_tokens = 16};
  EXPECT_TRUE(DecideAggregation(kv, {.has_prefill = true, .decode_uncached_tokens = 16}));
  EXPECT_FALSE(DecideAggregation(kv, {.has_prefill = true, .decode_uncached_tokens = 17}));
  PlacementOptions off = kv;
  off.aggregate_max_uncached_tokens = -1;
  EXPECT_FALSE(DecideAggregation(off, {.has_prefill = true, .decode_uncached_tokens = 0}));
  // The baselines always disaggregate when they can.
  PlacementOptions rr = kv;
  rr.policy = Policy::kRoundRobin;
  EXPECT_FALSE(DecideAggregation(rr, {.has_prefill = true, .decode_uncached_tokens = 0}));
}

TEST(PlacementPoliciesTest, KvAggregatesPastAQueueWhenThatIsFaster) {
  const PlacementOptions o{
      .policy = Policy::kKv, .aggregate_max_uncached_tokens = -1, .aggregate_when_queue_ms = 100};
  const AggregationInputs busy{.has_prefill = true,
                               .decode_uncached_tokens = 500,
                               .aggregated_ttft_ms = 150,
                               .prefill_queue_ms = 120,
                               .prefill_ttft_ms = 200};
  EXPECT_TRUE(DecideAggregation(o, busy));
  AggregationInputs slower = busy;
  slower.aggregated_ttft_ms = 250;  // the decode worker would be slower still
  EXPECT_FALSE(DecideAggregation(o, slower));
  AggregationInputs short_queue = busy;
  short_queue.prefill_queue_ms = 100;  // not past the threshold
  EXPECT_FALSE(DecideAggregation(o, short_queue));
  PlacementOptions off = o;
  off.aggregate_when_queue_ms = 0;
  EXPECT_FALSE(DecideAggregation(off, busy));
}

// --- Admission.

TEST(PlacementPoliciesTest, AdmitRejectsAPredictionPastTheTarget) {
  const PlacementOptions o;
  AdmissionInputs in{.ttft_slo_ms = 500,
                     .predicted_ttft_ms = 1040,
                     .predicted_tpot_ms = 30,
                     .prefill_worker = "p1",
                     .decode_worker = "d1"};
  EXPECT_THAT(Admit(o, in), StatusIs(absl::StatusCode::kResourceExhausted,
                                     HasSubstr("predicted TTFT 1040.0 ms exceeds the target 500.0 ms")));
  EXPECT_THAT(Admit(o, in), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("p1")));
  in.ttft_slo_ms = 5000;
  EXPECT_OK(Admit(o, in));
  in.tpot_slo_ms = 20;
  EXPECT_THAT(Admit(o, in), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("TPOT 30.00 ms")));
  EXPECT_THAT(Admit(o, in), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("d1")));
}

TEST(PlacementPoliciesTest, AdmitFallsBackToTheDefaultTargets) {
  const AdmissionInputs in{.predicted_ttft_ms = 50, .predicted_tpot_ms = 5};
  EXPECT_OK(Admit({}, in));  // no targets anywhere: admit
  EXPECT_THAT(Admit({.default_ttft_slo_ms = 10}, in), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Admit({.default_tpot_slo_ms = 1}, in), StatusIs(absl::StatusCode::kResourceExhausted));
  AdmissionInputs looser = in;
  looser.ttft_slo_ms = 100;  // the request's target replaces the default
  EXPECT_OK(Admit({.default_ttft_slo_ms = 10}, looser));
}

}  // namespace
}  // namespace tandem::router
