#include "router/placement.h"

#include <set>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using tandem::v1::KvEvent;

class PlacementTest : public ::testing::Test {
 protected:
  // In-flight counting off in the shared index: most tests place one
  // prompt repeatedly to look at the cost model over what Hold put there;
  // ABurstSharingAPrefix... tests in-flight counting with its own index.
  PlacementTest()
      : registry_({.heartbeat_interval = absl::Seconds(60), .model_id = "m"}),
        index_({.inflight_ttl = absl::ZeroDuration()}) {}

  void AddWorker(const std::string& id, tandem::v1::WorkerRole role, int64_t queued = 0, int32_t running = 0,
                 int32_t free_blocks = 1000) {
    tandem::v1::RegisterRequest r;
    r.set_worker_id(id);
    r.set_role(role);
    r.set_address("127.0.0.1:1");  // never called: channels connect lazily
    r.set_model_id("m");
    r.set_block_size(kBlock);
    r.mutable_load()->set_queued_prefill_tokens(queued);
    r.mutable_load()->set_running(running);
    r.mutable_load()->set_free_blocks(free_blocks);
    r.mutable_load()->set_total_blocks(1000);
    ASSERT_OK(registry_.Register(r));
  }
  void Hold(const std::string& id, std::vector<BlockHash> hashes,
            tandem::v1::KvTier tier = tandem::v1::KV_TIER_HBM) {
    tandem::v1::KvEventBatch b;
    b.set_worker_id(id);
    b.set_sequence_number(++seq_[id]);
    KvEvent* e = b.add_events();
    e->set_kind(KvEvent::KIND_STORED);
    e->set_tier(tier);
    for (BlockHash h : hashes) e->add_block_hashes(h);
    ASSERT_EQ(index_.Apply(b), KvIndex::Outcome::kApplied);
  }
  PlacementRequest Request(const std::vector<BlockHash>& hashes, int32_t prompt_tokens) {
    hashes_ = hashes;
    PlacementRequest r;
    r.block_hashes = hashes_;
    r.prompt_tokens = prompt_tokens;
    r.max_tokens = 16;
    r.block_size = kBlock;
    return r;
  }

  static constexpr int32_t kBlock = 16;
  WorkerRegistry registry_;
  KvIndex index_;
  std::map<std::string, uint64_t> seq_;
  std::vector<BlockHash> hashes_;
};

TEST_F(PlacementTest, ParsesPolicyNames) {
  for (const char* name : {"kv", "round_robin", "least_loaded", "random"}) {
    ASSERT_OK_AND_ASSIGN(Policy p, ParsePolicy(name));
    EXPECT_STREQ(PolicyName(p), name);
  }
  EXPECT_EQ(ParsePolicy("fastest").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PlacementTest, KvPicksTheLongestCachedPrefix) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p1", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p2", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p3", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p1", {1});
  Hold("p2", {1, 2, 3});
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 70)));
  ASSERT_TRUE(d.prefill.has_value());
  EXPECT_EQ(d.prefill->id, "p2");
  EXPECT_EQ(d.predicted_cached_tokens, 48);
  EXPECT_EQ(d.decode.id, "d");
}

TEST_F(PlacementTest, KvWeighsTheQueueAgainstTheCache) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("busy", tandem::v1::WORKER_ROLE_PREFILL, /*queued=*/100000);
  AddWorker("idle", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("busy", {1, 2, 3});
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_EQ(d.prefill->id, "idle");
  EXPECT_EQ(d.predicted_cached_tokens, 0);
}

TEST_F(PlacementTest, LearnedCostsChangeThePick) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("slow", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("fast", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("slow", {1});  // saves 16 tokens
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision before, placement.Place(Request({1, 2, 3, 4}, 64)));
  EXPECT_EQ(before.prefill->id, "slow");
  placement.ObservePrefill("slow", {.prompt_tokens = 100, .cached_tokens = 0, .prefill_ms = 100});
  placement.ObservePrefill("fast", {.prompt_tokens = 100, .cached_tokens = 0, .prefill_ms = 10});
  EXPECT_DOUBLE_EQ(placement.MsPerToken("slow"), 1.0);
  EXPECT_DOUBLE_EQ(placement.MsPerToken("fast"), 0.1);
  ASSERT_OK_AND_ASSIGN(PlacementDecision after, placement.Place(Request({1, 2, 3, 4}, 64)));
  EXPECT_EQ(after.prefill->id, "fast");  // 64 x 0.1 < 48 x 1.0
  EXPECT_NEAR(after.predicted_ttft_ms, 6.4 + 4 * 0.05, 1e-9);
  // Learned again after Place looked the costs up by slot: the new cost counts.
  placement.ObservePrefill("fast", {.prompt_tokens = 100, .cached_tokens = 0, .prefill_ms = 1000});
  EXPECT_DOUBLE_EQ(placement.MsPerToken("fast"), 2.08);
  ASSERT_OK_AND_ASSIGN(PlacementDecision again, placement.Place(Request({1, 2, 3, 4}, 64)));
  EXPECT_EQ(again.prefill->id, "slow");  // 48 x 1.0 < 64 x 2.08
}

// A response that computed a few tokens after waiting (in the worker's
// queue, or for a prefix another request was computing) counts by the
// tokens it computed: it does not multiply the learned cost.
TEST_F(PlacementTest, AResponseCountsByTheTokensItComputed) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL);
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  placement.ObservePrefill("p", {.prompt_tokens = 1000, .cached_tokens = 0, .prefill_ms = 100});
  EXPECT_DOUBLE_EQ(placement.MsPerToken("p"), 0.1);
  placement.ObservePrefill("p", {.prompt_tokens = 1000, .cached_tokens = 990, .prefill_ms = 100});
  // (0.8 x 100 + 0.2 x 100) / (0.8 x 1000 + 0.2 x 10); a mean of ratios
  // would say 0.8 x 0.1 + 0.2 x 10 = 2.08.
  EXPECT_NEAR(placement.MsPerToken("p"), 100.0 / 802, 1e-9);
}

TEST_F(PlacementTest, LowerTiersCostTheirLoadTime) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p", {1}, tandem::v1::KV_TIER_HBM);
  Hold("p", {2}, tandem::v1::KV_TIER_DRAM);
  Hold("p", {3}, tandem::v1::KV_TIER_SSD);
  Placement placement({.policy = Policy::kKv,
                       .default_ms_per_token = 1,
                       .dram_load_ms_per_block = 2,
                       .ssd_load_ms_per_block = 5,
                       .default_transfer_ms_per_block = 0},
                      &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 64)));
  EXPECT_EQ(d.blocks_to_load, 2);
  EXPECT_DOUBLE_EQ(d.predicted_ttft_ms, 16 * 1.0 + 2 + 5);
}

TEST_F(PlacementTest, SharedStoreExtendsThePrefixAtItsLoadCost) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p1", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p2", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p1", {1});
  Placement placement({.policy = Policy::kKv,
                       .default_ms_per_token = 1,
                       .default_transfer_ms_per_block = 0,
                       .aggregate_max_uncached_tokens = -1,
                       .store_load_ms_per_block = 2},
                      &registry_, &index_);
  // Without a store: p1's own block only.
  ASSERT_OK_AND_ASSIGN(PlacementDecision plain, placement.Place(Request({1, 2, 3, 4}, 70)));
  ASSERT_TRUE(plain.prefill.has_value());
  EXPECT_EQ(plain.prefill->id, "p1");
  EXPECT_EQ(plain.predicted_cached_tokens, 16);
  EXPECT_EQ(plain.store_blocks, 0);
  EXPECT_EQ(plain.store_id, "");

  AddWorker("s", tandem::v1::WORKER_ROLE_STORE);
  Hold("s", {1, 2, 3}, tandem::v1::KV_TIER_DRAM);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 70)));
  ASSERT_TRUE(d.prefill.has_value());
  // p1 holds block 1 itself and fetches 2 and 3 from the store; p2 would
  // fetch all three, which costs more.
  EXPECT_EQ(d.prefill->id, "p1");
  EXPECT_EQ(d.predicted_cached_tokens, 48);
  EXPECT_EQ(d.store_blocks, 2);
  EXPECT_EQ(d.store_id, "s");
  EXPECT_DOUBLE_EQ(d.predicted_ttft_ms, (70 - 48) * 1.0 + 2 * 2.0);
  EXPECT_EQ(d.decode.id, "d");  // the store is never picked to decode
}

// The prefetch hint names the blocks the chosen worker is expected to load:
// its prefix from the first block not in HBM, then the store's blocks past it.
TEST_F(PlacementTest, PrefetchHintCarriesTheLowerTierAndStoreHashes) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p", {11, 12}, tandem::v1::KV_TIER_HBM);
  Hold("p", {13}, tandem::v1::KV_TIER_DRAM);
  Hold("p", {14}, tandem::v1::KV_TIER_SSD);
  Placement placement({.policy = Policy::kKv, .aggregate_max_uncached_tokens = -1}, &registry_, &index_);
  const std::vector<BlockHash> prompt = {11, 12, 13, 14, 15, 16, 17};
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request(prompt, 7 * kBlock + 3)));
  ASSERT_TRUE(d.prefill.has_value());
  EXPECT_EQ(d.prefill->id, "p");
  EXPECT_EQ(d.blocks_to_load, 2);
  EXPECT_EQ(d.prefetch_first_block, 2);
  EXPECT_EQ(d.prefetch_hashes, (std::vector<BlockHash>{13, 14}));
  tandem::v1::PrefetchHint hint;
  SetPrefetchHint(d, &hint);
  EXPECT_EQ(hint.first_block(), 2);
  EXPECT_EQ(std::vector<BlockHash>(hint.block_hashes().begin(), hint.block_hashes().end()),
            (std::vector<BlockHash>{13, 14}));

  // A store holding more of the prompt extends the hint through its blocks.
  AddWorker("s", tandem::v1::WORKER_ROLE_STORE);
  Hold("s", {11, 12, 13, 14, 15, 16}, tandem::v1::KV_TIER_SSD);
  ASSERT_OK_AND_ASSIGN(PlacementDecision e, placement.Place(Request(prompt, 7 * kBlock + 3)));
  EXPECT_EQ(e.prefill->id, "p");
  EXPECT_EQ(e.store_blocks, 2);
  EXPECT_EQ(e.prefetch_first_block, 2);
  EXPECT_EQ(e.prefetch_hashes, (std::vector<BlockHash>{13, 14, 15, 16}));

  // All in HBM, no store beyond: an empty hint (nothing to load).
  AddWorker("q", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("q", {21, 22, 23}, tandem::v1::KV_TIER_HBM);
  ASSERT_OK_AND_ASSIGN(PlacementDecision f, placement.Place(Request({21, 22, 23, 24}, 4 * kBlock + 1)));
  EXPECT_EQ(f.prefill->id, "q");
  EXPECT_EQ(f.prefetch_first_block, 3);
  EXPECT_TRUE(f.prefetch_hashes.empty());
  // No worker holds anything: an empty hint at block 0.
  ASSERT_OK_AND_ASSIGN(PlacementDecision g, placement.Place(Request({31, 32}, 40)));
  EXPECT_EQ(g.prefetch_first_block, 0);
  EXPECT_TRUE(g.prefetch_hashes.empty());
}

TEST_F(PlacementTest, AggregatedPrefetchHintIsTheDecodeWorkers) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  Hold("d", {1}, tandem::v1::KV_TIER_HBM);
  Hold("d", {2, 3}, tandem::v1::KV_TIER_SSD);
  AddWorker("s", tandem::v1::WORKER_ROLE_STORE);
  Hold("s", {1, 2, 3, 4}, tandem::v1::KV_TIER_DRAM);
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4, 5}, 5 * kBlock + 2)));
  EXPECT_FALSE(d.prefill.has_value());
  EXPECT_EQ(d.prefetch_first_block, 1);
  EXPECT_EQ(d.prefetch_hashes, (std::vector<BlockHash>{2, 3, 4}));
}

TEST_F(PlacementTest, AStoreIsNeverAPrefillOrDecodeWorker) {
  AddWorker("s", tandem::v1::WORKER_ROLE_STORE);
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  EXPECT_EQ(placement.Place(Request({1}, 20)).status().code(), absl::StatusCode::kUnavailable);
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1}, 20)));
  EXPECT_FALSE(d.prefill.has_value());  // aggregated: no prefill worker
  EXPECT_EQ(d.decode.id, "d");
}

TEST_F(PlacementTest, DecodeWorkerPrefillsWhenItHoldsAlmostEverything) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("d", {1, 2, 3, 4});
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_FALSE(d.prefill.has_value());  // 6 uncached tokens <= 16
  EXPECT_EQ(d.predicted_cached_tokens, 64);
  Placement never({.policy = Policy::kKv, .aggregate_max_uncached_tokens = -1}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision e, never.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_TRUE(e.prefill.has_value());
}

TEST_F(PlacementTest, AggregatesWhenThereIsNoPrefillWorker) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  for (Policy p : {Policy::kKv, Policy::kRoundRobin, Policy::kLeastLoaded, Policy::kRandom}) {
    Placement placement({.policy = p}, &registry_, &index_);
    ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1}, 20)));
    EXPECT_FALSE(d.prefill.has_value()) << PolicyName(p);
  }
}

TEST_F(PlacementTest, NoDecodeWorkerIsUnavailable) {
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL);
  Placement placement({}, &registry_, &index_);
  EXPECT_EQ(placement.Place(Request({1}, 20)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(PlacementTest, RoundRobinCyclesAndExcludesAreHonoured) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  for (const char* id : {"p1", "p2", "p3"}) AddWorker(id, tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p1", {1, 2, 3});
  Placement placement({.policy = Policy::kRoundRobin}, &registry_, &index_);
  std::vector<std::string> picks;
  for (int i = 0; i < 6; ++i) {
    ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 64)));
    picks.push_back(d.prefill->id);
  }
  EXPECT_EQ(picks, (std::vector<std::string>{"p1", "p2", "p3", "p1", "p2", "p3"}));
  PlacementRequest r = Request({1}, 20);
  r.exclude_prefill = {"p1", "p2"};
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(r));
    EXPECT_EQ(d.prefill->id, "p3");
  }
}

TEST_F(PlacementTest, LeastLoadedIgnoresTheCache) {
  AddWorker("d1", tandem::v1::WORKER_ROLE_DECODE, 0, /*running=*/5);
  AddWorker("d2", tandem::v1::WORKER_ROLE_DECODE, 0, /*running=*/1);
  AddWorker("p1", tandem::v1::WORKER_ROLE_PREFILL, /*queued=*/500);
  AddWorker("p2", tandem::v1::WORKER_ROLE_PREFILL, /*queued=*/10);
  Hold("p1", {1, 2, 3});
  Placement placement({.policy = Policy::kLeastLoaded}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 64)));
  EXPECT_EQ(d.prefill->id, "p2");
  EXPECT_EQ(d.decode.id, "d2");
}

TEST_F(PlacementTest, RandomReachesEveryWorker) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  for (const char* id : {"p1", "p2", "p3", "p4"}) AddWorker(id, tandem::v1::WORKER_ROLE_PREFILL);
  Placement placement({.policy = Policy::kRandom, .seed = 3}, &registry_, &index_);
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1}, 20)));
    seen.insert(d.prefill->id);
  }
  EXPECT_EQ(seen.size(), 4u);
}

TEST_F(PlacementTest, InflightWorkCountsBetweenHeartbeats) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p1", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p2", tandem::v1::WORKER_ROLE_PREFILL);
  Placement placement({.policy = Policy::kLeastLoaded}, &registry_, &index_);
  registry_.AddInflight("p1", 1000);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1}, 20)));
  EXPECT_EQ(d.prefill->id, "p2");
  registry_.RemoveInflight("p1", 1000);
  registry_.AddInflight("p2", 1000);
  ASSERT_OK_AND_ASSIGN(d, placement.Place(Request({1}, 20)));
  EXPECT_EQ(d.prefill->id, "p1");
}

// A burst of requests sharing a 40-block prefix on a loaded cluster: each
// placement sees the blocks in flight to the worker chosen for the first
// (before that worker announces them) and joins it, instead of spreading out
// and computing the prefix on every worker.
TEST_F(PlacementTest, ABurstSharingAPrefixGoesToTheWorkerComputingIt) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  std::map<std::string, int64_t> queued;
  for (const char* id : {"p1", "p2", "p3", "p4"}) {
    AddWorker(id, tandem::v1::WORKER_ROLE_PREFILL, /*queued=*/1000);
    queued[id] = 1000;
  }
  KvIndex index;  // in-flight counting on (the default)
  Placement placement({.policy = Policy::kKv, .aggregate_max_uncached_tokens = -1}, &registry_, &index);
  std::set<std::string> chosen;
  for (BlockHash suffix = 100; suffix < 108; ++suffix) {
    std::vector<BlockHash> hashes;
    for (BlockHash b = 1; b <= 40; ++b) hashes.push_back(b);
    hashes.push_back(suffix);
    ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request(hashes, 41 * kBlock)));
    ASSERT_TRUE(d.prefill.has_value());
    chosen.insert(d.prefill->id);
    if (suffix > 100) {
      EXPECT_EQ(d.predicted_cached_tokens, 40 * kBlock);
    }
    // The worker queues what it must compute (its next load report).
    queued[d.prefill->id] += 41 * kBlock - d.predicted_cached_tokens;
    tandem::v1::WorkerLoad load;
    load.set_queued_prefill_tokens(queued[d.prefill->id]);
    load.set_free_blocks(1000);
    load.set_total_blocks(1000);
    registry_.UpdateLoad(d.prefill->id, load);
  }
  EXPECT_EQ(chosen.size(), 1u);
  EXPECT_EQ(index.stats().inflight_entries, 40u + 8);
}

// Place keeps each worker's index slot between requests; a worker that
// appears in the index later, one that leaves it, and another taking its
// slot are all seen as they are now.
TEST_F(PlacementTest, SlotPairingsFollowTheIndex) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p1", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p2", tandem::v1::WORKER_ROLE_PREFILL);
  AddWorker("p3", tandem::v1::WORKER_ROLE_PREFILL);
  Hold("p1", {1});
  Placement placement({.policy = Policy::kKv}, &registry_, &index_);
  ASSERT_OK_AND_ASSIGN(PlacementDecision d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_EQ(d.prefill->id, "p1");
  Hold("p2", {1, 2, 3});  // p2 was cached as holding nothing
  ASSERT_OK_AND_ASSIGN(d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_EQ(d.prefill->id, "p2");
  EXPECT_EQ(d.predicted_cached_tokens, 48);
  index_.RemoveWorker("p2");  // its slot holds nothing now
  ASSERT_OK_AND_ASSIGN(d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_EQ(d.prefill->id, "p1");
  Hold("p3", {1, 2});  // takes p2's old slot
  ASSERT_OK_AND_ASSIGN(d, placement.Place(Request({1, 2, 3, 4}, 70)));
  EXPECT_EQ(d.prefill->id, "p3");
  EXPECT_EQ(d.predicted_cached_tokens, 32);
}

TEST_F(PlacementTest, RejectsWhenThePredictionMissesTheSlo) {
  AddWorker("d", tandem::v1::WORKER_ROLE_DECODE);
  AddWorker("p", tandem::v1::WORKER_ROLE_PREFILL, /*queued=*/1000);
  Placement placement({.policy = Policy::kKv, .default_ms_per_token = 1}, &registry_, &index_);
  PlacementRequest r = Request({1, 2}, 40);
  r.ttft_slo_ms = 500;  // predicted ~1040 ms
  absl::StatusOr<PlacementDecision> d = placement.Place(r);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(d.status().message().find("predicted TTFT"), std::string::npos);
  r.ttft_slo_ms = 5000;
  EXPECT_OK(placement.Place(r).status());
  Placement strict({.policy = Policy::kKv, .default_ms_per_token = 1, .default_ttft_slo_ms = 10}, &registry_,
                   &index_);
  EXPECT_EQ(strict.Place(Request({1, 2}, 40)).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace tandem::router
