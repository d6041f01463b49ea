#include "router/kv_index.h"

#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace tandem::router {
namespace {

using tandem::v1::KvEvent;
using tandem::v1::KvEventBatch;
using tandem::v1::KvTier;

KvEventBatch Batch(const std::string& worker, uint64_t seq) {
  KvEventBatch b;
  b.set_worker_id(worker);
  b.set_sequence_number(seq);
  return b;
}

void Add(KvEventBatch* b, KvEvent::Kind kind, KvTier tier, std::vector<uint64_t> hashes) {
  KvEvent* e = b->add_events();
  e->set_kind(kind);
  e->set_tier(tier);
  for (uint64_t h : hashes) e->add_block_hashes(h);
}

KvEventBatch Stored(const std::string& worker, uint64_t seq, std::vector<uint64_t> hashes,
                    KvTier tier = tandem::v1::KV_TIER_HBM) {
  KvEventBatch b = Batch(worker, seq);
  Add(&b, KvEvent::KIND_STORED, tier, std::move(hashes));
  return b;
}

// worker -> matched blocks.
std::map<std::string, int32_t> Prefixes(const KvIndex& index, std::vector<BlockHash> hashes) {
  std::map<std::string, int32_t> out;
  for (const KvIndex::PrefixMatch& m : index.Match(hashes)) out[m.worker_id] = m.blocks;
  return out;
}

TEST(KvIndexTest, LongestLeadingRunPerWorker) {
  KvIndex index;
  EXPECT_EQ(index.Apply(Stored("a", 1, {1, 2, 3})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.Apply(Stored("b", 1, {1, 2, 9, 4})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.Apply(Stored("c", 1, {2, 3})), KvIndex::Outcome::kApplied);  // no block 1: unusable
  EXPECT_EQ(Prefixes(index, {1, 2, 3, 4}), (std::map<std::string, int32_t>{{"a", 3}, {"b", 2}}));
  EXPECT_EQ(Prefixes(index, {1}), (std::map<std::string, int32_t>{{"a", 1}, {"b", 1}}));
  EXPECT_TRUE(Prefixes(index, {7, 1}).empty());
  EXPECT_TRUE(Prefixes(index, {}).empty());
}

TEST(KvIndexTest, CountsEachBlockInItsBestTier) {
  KvIndex index;
  KvEventBatch b = Stored("w", 1, {1, 2}, tandem::v1::KV_TIER_HBM);
  Add(&b, KvEvent::KIND_STORED, tandem::v1::KV_TIER_DRAM, {2, 3});
  Add(&b, KvEvent::KIND_STORED, tandem::v1::KV_TIER_SSD, {3, 4});
  ASSERT_EQ(index.Apply(b), KvIndex::Outcome::kApplied);
  std::vector<KvIndex::PrefixMatch> m = index.Match({1, 2, 3, 4, 5});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].blocks, 4);
  EXPECT_EQ(m[0].tier_blocks[tandem::v1::KV_TIER_HBM], 2);
  EXPECT_EQ(m[0].tier_blocks[tandem::v1::KV_TIER_DRAM], 1);
  EXPECT_EQ(m[0].tier_blocks[tandem::v1::KV_TIER_SSD], 1);
  EXPECT_EQ(m[0].first_lower_block, 2);
  EXPECT_EQ(index.Match({1, 2})[0].first_lower_block, 2);  // all in HBM: the prefix's end
  // Removing the HBM copy of block 2 leaves its DRAM copy.
  KvEventBatch r = Batch("w", 2);
  Add(&r, KvEvent::KIND_REMOVED, tandem::v1::KV_TIER_HBM, {2});
  ASSERT_EQ(index.Apply(r), KvIndex::Outcome::kApplied);
  m = index.Match({1, 2, 3, 4});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].tier_blocks[tandem::v1::KV_TIER_DRAM], 2);
  EXPECT_EQ(m[0].first_lower_block, 1);
  EXPECT_EQ(index.stats().entries, 4u);
}

TEST(KvIndexTest, RemovedBlockEndsThePrefix) {
  KvIndex index;
  ASSERT_EQ(index.Apply(Stored("w", 1, {1, 2, 3})), KvIndex::Outcome::kApplied);
  KvEventBatch r = Batch("w", 2);
  Add(&r, KvEvent::KIND_REMOVED, tandem::v1::KV_TIER_HBM, {2});
  ASSERT_EQ(index.Apply(r), KvIndex::Outcome::kApplied);
  EXPECT_EQ(Prefixes(index, {1, 2, 3}), (std::map<std::string, int32_t>{{"w", 1}}));
  EXPECT_EQ(index.stats().blocks, 2u);
}

TEST(KvIndexTest, GapAsksForSnapshotAndBuffersUntilThen) {
  KvIndex index;
  ASSERT_EQ(index.Apply(Stored("w", 1, {1})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.Apply(Stored("w", 1, {1})), KvIndex::Outcome::kStale);
  // Batch 2 (which stored block 2) is lost; 3 arrives.
  EXPECT_EQ(index.Apply(Stored("w", 3, {3})), KvIndex::Outcome::kNeedSnapshot);
  EXPECT_TRUE(index.AwaitingSnapshot("w"));
  EXPECT_EQ(index.Apply(Stored("w", 4, {4})), KvIndex::Outcome::kBuffered);
  EXPECT_EQ(index.Apply(Stored("w", 5, {5})), KvIndex::Outcome::kBuffered);
  // The worker's snapshot after batch 4: blocks 1..4 (2 included).
  index.ApplySnapshot(Stored("w", 4, {1, 2, 3, 4}));
  EXPECT_FALSE(index.AwaitingSnapshot("w"));
  // Buffered 3 and 4 are covered by the snapshot; 5 is applied after it.
  EXPECT_EQ(Prefixes(index, {1, 2, 3, 4, 5}), (std::map<std::string, int32_t>{{"w", 5}}));
  EXPECT_EQ(index.Apply(Stored("w", 6, {6})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.stats().gaps, 1);
  EXPECT_EQ(index.stats().snapshots, 1);
}

TEST(KvIndexTest, SnapshotReplacesWhatTheWorkerHeld) {
  KvIndex index;
  ASSERT_EQ(index.Apply(Stored("w", 1, {1, 2, 3})), KvIndex::Outcome::kApplied);
  index.ApplySnapshot(Stored("w", 7, {1, 9}));
  EXPECT_EQ(Prefixes(index, {1, 2, 3}), (std::map<std::string, int32_t>{{"w", 1}}));
  EXPECT_EQ(Prefixes(index, {1, 9}), (std::map<std::string, int32_t>{{"w", 2}}));
  EXPECT_EQ(index.Apply(Stored("w", 7, {5})), KvIndex::Outcome::kStale);
  EXPECT_EQ(index.Apply(Stored("w", 8, {5})), KvIndex::Outcome::kApplied);
}

TEST(KvIndexTest, RouterRestartRebuildsFromSnapshots) {
  // A running router's index...
  KvIndex before;
  ASSERT_EQ(before.Apply(Stored("a", 1, {1, 2})), KvIndex::Outcome::kApplied);
  ASSERT_EQ(before.Apply(Stored("a", 2, {3})), KvIndex::Outcome::kApplied);
  ASSERT_EQ(before.Apply(Stored("b", 1, {1, 5})), KvIndex::Outcome::kApplied);
  // ...is lost; the restarted router hears batch 3 of "a" first: a worker it
  // has never seen, mid-stream, so it asks for a snapshot.
  KvIndex after;
  EXPECT_EQ(after.Apply(Stored("a", 3, {4})), KvIndex::Outcome::kNeedSnapshot);
  after.ApplySnapshot(Stored("a", 3, {1, 2, 3, 4}));
  after.ApplySnapshot(Stored("b", 1, {1, 5}));
  EXPECT_EQ(Prefixes(after, {1, 2, 3, 4}), (std::map<std::string, int32_t>{{"a", 4}, {"b", 1}}));
  EXPECT_EQ(Prefixes(after, {1, 5}), (std::map<std::string, int32_t>{{"a", 1}, {"b", 2}}));
}

TEST(KvIndexTest, RemoveWorkerDropsItsEntriesAndItStartsOverOnReturn) {
  KvIndex index;
  ASSERT_EQ(index.Apply(Stored("a", 1, {1, 2})), KvIndex::Outcome::kApplied);
  ASSERT_EQ(index.Apply(Stored("b", 1, {1})), KvIndex::Outcome::kApplied);
  index.RemoveWorker("a");
  EXPECT_EQ(Prefixes(index, {1, 2}), (std::map<std::string, int32_t>{{"b", 1}}));
  EXPECT_EQ(index.stats().entries, 1u);
  EXPECT_EQ(index.stats().workers, 1u);
  // A restarted worker numbers from 1 again.
  EXPECT_EQ(index.Apply(Stored("a", 1, {1})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(Prefixes(index, {1, 2}), (std::map<std::string, int32_t>{{"a", 1}, {"b", 1}}));
}

// Blocks assigned to a worker but not yet announced count as held there, so
// a burst of same-prefix requests sees them before the worker computes them.
TEST(KvIndexTest, InflightBlocksCountAsHeldUntilAnnounced) {
  KvIndex index;
  index.AddInflight("a", std::vector<BlockHash>{1, 2, 3});
  std::vector<KvIndex::PrefixMatch> m = index.Match(std::vector<BlockHash>{1, 2, 3, 4});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].worker_id, "a");
  EXPECT_EQ(m[0].blocks, 3);
  EXPECT_EQ(m[0].inflight_blocks, 3);
  EXPECT_EQ(m[0].tier_blocks[tandem::v1::KV_TIER_HBM], 3);
  EXPECT_EQ(m[0].first_lower_block, 3);  // nothing to load from a lower tier
  EXPECT_FALSE(index.Known("a"));        // no KV event from it yet
  EXPECT_EQ(index.stats().workers, 0u);
  EXPECT_EQ(index.stats().inflight_entries, 3u);

  // Its first batch is a new worker's; announced blocks stop being in flight.
  ASSERT_EQ(index.Apply(Stored("a", 1, {1, 2})), KvIndex::Outcome::kApplied);
  EXPECT_TRUE(index.Known("a"));
  m = index.Match(std::vector<BlockHash>{1, 2, 3, 4});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].blocks, 3);
  EXPECT_EQ(m[0].inflight_blocks, 1);
  EXPECT_EQ(index.stats().inflight_entries, 1u);

  // In flight on one worker, held by another: each its own prefix.
  ASSERT_EQ(index.Apply(Stored("b", 1, {1})), KvIndex::Outcome::kApplied);
  index.AddInflight("b", std::vector<BlockHash>{2});
  EXPECT_EQ(Prefixes(index, {1, 2, 3, 4}), (std::map<std::string, int32_t>{{"a", 3}, {"b", 2}}));
  // In flight only from the second block on: no usable prefix.
  index.AddInflight("c", std::vector<BlockHash>{2, 3});
  EXPECT_EQ(Prefixes(index, {1, 2, 3}), (std::map<std::string, int32_t>{{"a", 3}, {"b", 2}}));
  EXPECT_EQ(Prefixes(index, {2, 3}), (std::map<std::string, int32_t>{{"a", 2}, {"b", 1}, {"c", 2}}));
}

TEST(KvIndexTest, InflightEntriesEndWithTheirTtlRemovalOrTheWorker) {
  absl::Time now = absl::FromUnixSeconds(1000);
  KvIndex index({.inflight_ttl = absl::Seconds(10), .clock = [&now] { return now; }});
  index.AddInflight("a", std::vector<BlockHash>{1, 2});
  now += absl::Seconds(5);
  index.AddInflight("b", std::vector<BlockHash>{1});
  EXPECT_EQ(Prefixes(index, {1, 2}), (std::map<std::string, int32_t>{{"a", 2}, {"b", 1}}));
  now += absl::Seconds(6);  // a's expired, b's not
  EXPECT_EQ(Prefixes(index, {1, 2}), (std::map<std::string, int32_t>{{"b", 1}}));
  // A writer sweeps what expired.
  index.AddInflight("c", std::vector<BlockHash>{7});
  EXPECT_EQ(index.stats().inflight_entries, 2u);
  // Renewed by a later assignment: lives past the first one's expiry.
  index.AddInflight("b", std::vector<BlockHash>{1});
  now += absl::Seconds(6);
  index.AddInflight("c", std::vector<BlockHash>{8});
  EXPECT_EQ(Prefixes(index, {1}), (std::map<std::string, int32_t>{{"b", 1}}));

  index.RemoveInflight("b", std::vector<BlockHash>{1});
  EXPECT_TRUE(Prefixes(index, {1}).empty());
  index.RemoveWorker("c");
  EXPECT_TRUE(Prefixes(index, {7}).empty());
  EXPECT_EQ(index.stats().inflight_entries, 0u);

  // Off: nothing recorded.
  KvIndex off({.inflight_ttl = absl::ZeroDuration()});
  off.AddInflight("a", std::vector<BlockHash>{1});
  EXPECT_TRUE(Prefixes(off, {1}).empty());
}

// Random events against a naive model: per worker a set of (hash, tier).
TEST(KvIndexTest, AgreesWithANaiveModelUnderRandomEvents) {
  std::mt19937_64 rng(7);
  KvIndex index;
  constexpr int kWorkers = 12;
  std::vector<std::set<std::pair<uint64_t, int>>> model(kWorkers);
  std::vector<uint64_t> seq(kWorkers, 0);
  for (int step = 0; step < 4000; ++step) {
    const int w = static_cast<int>(rng() % kWorkers);
    const std::string id = "w" + std::to_string(w);
    if (rng() % 200 == 0) {
      index.RemoveWorker(id);
      model[w].clear();
      seq[w] = 0;
      continue;
    }
    KvEventBatch b = Batch(id, ++seq[w]);
    const int events = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < events; ++e) {
      const bool stored = rng() % 3 != 0;
      const int tier = 1 + static_cast<int>(rng() % 3);
      std::vector<uint64_t> hashes;
      for (int k = static_cast<int>(rng() % 5); k >= 0; --k) hashes.push_back(rng() % 40);
      Add(&b, stored ? KvEvent::KIND_STORED : KvEvent::KIND_REMOVED, static_cast<KvTier>(tier), hashes);
      for (uint64_t h : hashes) {
        if (stored)
          model[w].insert({h, tier});
        else
          model[w].erase({h, tier});
      }
    }
    ASSERT_EQ(index.Apply(b), KvIndex::Outcome::kApplied);
    // Per-tier entries (the router's tandem_router_kv_index_entries{tier}).
    int64_t per_tier[4] = {0, 0, 0, 0};
    for (const auto& held : model) {
      for (const auto& [h, t] : held) ++per_tier[t];
    }
    const KvIndex::Stats stats = index.stats();
    for (int t = 1; t <= 3; ++t)
      ASSERT_EQ(stats.tier_entries[t], per_tier[t]) << "step " << step << " tier " << t;
    // Holder sets: one per distinct (worker -> tiers) content, none left over.
    std::map<uint64_t, std::map<int, int>> content;  // hash -> worker -> tier bits
    for (int v = 0; v < kWorkers; ++v) {
      for (const auto& [h, t] : model[v]) content[h][v] |= 1 << t;
    }
    std::set<std::map<int, int>> distinct;
    for (const auto& [h, holders] : content) distinct.insert(holders);
    ASSERT_EQ(stats.blocks, content.size()) << "step " << step;
    ASSERT_EQ(stats.holder_sets, distinct.size()) << "step " << step;
    // Query a random chain.
    std::vector<BlockHash> query;
    for (int k = 1 + static_cast<int>(rng() % 8); k > 0; --k) query.push_back(rng() % 40);
    std::map<std::string, KvIndex::PrefixMatch> got;
    for (KvIndex::PrefixMatch& m : index.Match(query)) got[m.worker_id] = m;
    for (int v = 0; v < kWorkers; ++v) {
      int32_t blocks = 0;
      int32_t first_lower = -1;
      int32_t tiers[4] = {0, 0, 0, 0};
      for (BlockHash h : query) {
        int best = 0;
        for (int t = 3; t >= 1; --t) {
          if (model[v].count({h, t})) best = t;
        }
        if (best == 0) break;
        if (best != 1 && first_lower < 0) first_lower = blocks;
        ++blocks;
        ++tiers[best];
      }
      const std::string vid = "w" + std::to_string(v);
      if (blocks == 0) {
        EXPECT_FALSE(got.contains(vid)) << "step " << step;
        continue;
      }
      ASSERT_TRUE(got.contains(vid)) << "step " << step << " worker " << v;
      EXPECT_EQ(got[vid].blocks, blocks);
      for (int t = 1; t <= 3; ++t) EXPECT_EQ(got[vid].tier_blocks[t], tiers[t]);
      EXPECT_EQ(got[vid].first_lower_block, first_lower < 0 ? blocks : first_lower);
    }
  }
}

// MatchSlots answers what Match does, naming workers by the slots SlotOf
// gives; the slot epoch grows exactly when a worker is given a slot.
TEST(KvIndexTest, SlotsNameTheSameWorkersWhileTheEpochHolds) {
  KvIndex index;
  ASSERT_EQ(index.Apply(Stored("a", 1, {1, 2, 3})), KvIndex::Outcome::kApplied);
  ASSERT_EQ(index.Apply(Stored("b", 1, {1, 2})), KvIndex::Outcome::kApplied);
  uint64_t epoch = 0;
  const uint32_t a = index.SlotOf("a", &epoch);
  uint64_t e = 0;
  const uint32_t b = index.SlotOf("b", &e);
  EXPECT_EQ(e, epoch);
  EXPECT_NE(a, b);
  EXPECT_EQ(index.SlotOf("nobody", &e), KvIndex::kNoSlot);
  KvIndex::SlotMatches m;
  index.MatchSlots(std::vector<BlockHash>{1, 2, 3}, &m);
  EXPECT_EQ(m.slot_epoch, epoch);
  std::map<uint32_t, int32_t> by_slot;
  for (const KvIndex::SlotMatch& s : m.matches) by_slot[s.slot] = s.blocks;
  EXPECT_EQ(by_slot, (std::map<uint32_t, int32_t>{{a, 3}, {b, 2}}));
  index.MatchSlots(std::vector<BlockHash>{9}, &m);  // reused: overwritten
  EXPECT_TRUE(m.matches.empty());

  // More events from known workers: same epoch.
  ASSERT_EQ(index.Apply(Stored("a", 2, {4})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.SlotOf("a", &e), a);
  EXPECT_EQ(e, epoch);
  // b leaves: its slot holds nothing, the epoch stays (a cached b -> slot
  // pairing still answers "no match").
  index.RemoveWorker("b");
  index.MatchSlots(std::vector<BlockHash>{1}, &m);
  EXPECT_EQ(m.slot_epoch, epoch);
  ASSERT_EQ(m.matches.size(), 1u);
  EXPECT_EQ(m.matches[0].slot, a);
  // c takes b's slot: a new pairing, a new epoch.
  ASSERT_EQ(index.Apply(Stored("c", 1, {1})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.SlotOf("c", &e), b);
  EXPECT_GT(e, epoch);
  EXPECT_EQ(index.SlotOf("b", &e), KvIndex::kNoSlot);
  // In flight to a worker the index did not know: a slot too.
  const uint64_t before = e;
  index.AddInflight("d", std::vector<BlockHash>{1});
  EXPECT_NE(index.SlotOf("d", &e), KvIndex::kNoSlot);
  EXPECT_GT(e, before);
}

// A prefix held by many workers block after block (a system prompt), with
// some holding parts in lower tiers, some leaving it early, and in-flight
// entries in and past it: the walk that counts runs of identical holder
// lists once agrees with a block-by-block model.
TEST(KvIndexTest, SharedPrefixRunsAgreeWithABlockByBlockModel) {
  std::mt19937_64 rng(11);
  for (int round = 0; round < 40; ++round) {
    absl::Time now = absl::FromUnixSeconds(1000);
    KvIndex index({.clock = [&now] { return now; }});
    constexpr int kWorkers = 24;
    const int shared = 1 + static_cast<int>(rng() % 12);
    // model[w][h]: best tier of block h on worker w (0: none), 4: in flight only.
    std::vector<std::map<BlockHash, int>> model(kWorkers);
    for (int w = 0; w < kWorkers; ++w) {
      const std::string id = "w" + std::to_string(w);
      // Most hold the whole shared prefix in HBM, in the same order; a few
      // stop early or hold a stretch in DRAM.
      const int held = rng() % 5 == 0 ? static_cast<int>(rng() % (shared + 1)) : shared;
      KvEventBatch b = Batch(id, 1);
      std::vector<uint64_t> hbm;
      for (int h = 1; h <= held; ++h) hbm.push_back(static_cast<uint64_t>(h));
      Add(&b, KvEvent::KIND_STORED, tandem::v1::KV_TIER_HBM, hbm);
      for (uint64_t h : hbm) model[w][h] = 1;
      if (rng() % 6 == 0 && held > 0) {
        const uint64_t h = 1 + rng() % static_cast<uint64_t>(held);
        Add(&b, KvEvent::KIND_REMOVED, tandem::v1::KV_TIER_HBM, {h});
        Add(&b, KvEvent::KIND_STORED, tandem::v1::KV_TIER_DRAM, {h});
        model[w][h] = 2;
      }
      // A private continuation on some.
      if (rng() % 3 == 0) {
        std::vector<uint64_t> tail;
        for (int h = shared + 1; h <= shared + 4; ++h) tail.push_back(static_cast<uint64_t>(h));
        Add(&b, KvEvent::KIND_STORED, tandem::v1::KV_TIER_SSD, tail);
        for (uint64_t h : tail) model[w][h] = 3;
      }
      ASSERT_EQ(index.Apply(b), KvIndex::Outcome::kApplied);
      // In flight: some of the prefix and past it.
      if (rng() % 4 == 0) {
        std::vector<BlockHash> flying;
        const int from = 1 + static_cast<int>(rng() % static_cast<uint64_t>(shared + 4));
        for (int h = from; h <= shared + 4; ++h) flying.push_back(static_cast<BlockHash>(h));
        index.AddInflight(id, flying);
        for (BlockHash h : flying) {
          if (!model[w].contains(h)) model[w][h] = 4;
        }
      }
    }
    std::vector<BlockHash> query;
    for (int h = 1; h <= shared + 4; ++h) query.push_back(static_cast<BlockHash>(h));
    std::map<std::string, KvIndex::PrefixMatch> got;
    for (KvIndex::PrefixMatch& m : index.Match(query)) got[m.worker_id] = m;
    for (int w = 0; w < kWorkers; ++w) {
      int32_t blocks = 0, first_lower = -1, inflight = 0;
      int32_t tiers[4] = {0, 0, 0, 0};
      for (BlockHash h : query) {
        auto it = model[w].find(h);
        if (it == model[w].end()) break;
        const int tier = it->second == 4 ? 1 : it->second;
        if (it->second == 4) ++inflight;
        if (tier != 1 && first_lower < 0) first_lower = blocks;
        ++tiers[tier];
        ++blocks;
      }
      const std::string id = "w" + std::to_string(w);
      if (blocks == 0) {
        EXPECT_FALSE(got.contains(id)) << "round " << round;
        continue;
      }
      ASSERT_TRUE(got.contains(id)) << "round " << round << " worker " << w;
      EXPECT_EQ(got[id].blocks, blocks) << "round " << round << " worker " << w;
      for (int t = 1; t <= 3; ++t) EXPECT_EQ(got[id].tier_blocks[t], tiers[t]) << "round " << round;
      EXPECT_EQ(got[id].first_lower_block, first_lower < 0 ? blocks : first_lower) << "round " << round;
      EXPECT_EQ(got[id].inflight_blocks, inflight) << "round " << round << " worker " << w;
    }
  }
}

// Blocks held by the same workers in the same tiers share one holder set,
// through stores, removals, tier changes, in-flight entries, snapshots and
// a worker's removal; Match reads the same through the shared sets.
TEST(KvIndexTest, BlocksWithTheSameHoldersShareOneSet) {
  KvIndex index;
  const std::vector<uint64_t> chain = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(index.Apply(Stored("a", 1, chain)), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.stats().holder_sets, 1u);  // {a}
  ASSERT_EQ(index.Apply(Stored("b", 1, chain)), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.stats().holder_sets, 1u);  // {a, b}; {a} released
  EXPECT_EQ(index.stats().entries, 16u);
  // b keeps block 5 only in DRAM: a set of its own.
  KvEventBatch b2 = Batch("b", 2);
  Add(&b2, KvEvent::KIND_STORED, tandem::v1::KV_TIER_DRAM, {5});
  Add(&b2, KvEvent::KIND_REMOVED, tandem::v1::KV_TIER_HBM, {5});
  ASSERT_EQ(index.Apply(b2), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.stats().holder_sets, 2u);
  // a drops block 7: {b} for it.
  KvEventBatch a2 = Batch("a", 2);
  Add(&a2, KvEvent::KIND_REMOVED, tandem::v1::KV_TIER_HBM, {7});
  ASSERT_EQ(index.Apply(a2), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.stats().holder_sets, 3u);
  std::map<std::string, KvIndex::PrefixMatch> got;
  for (KvIndex::PrefixMatch& m : index.Match(chain)) got[m.worker_id] = m;
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got["a"].blocks, 6);
  EXPECT_EQ(got["a"].tier_blocks[tandem::v1::KV_TIER_HBM], 6);
  EXPECT_EQ(got["b"].blocks, 8);
  EXPECT_EQ(got["b"].tier_blocks[tandem::v1::KV_TIER_DRAM], 1);
  EXPECT_EQ(got["b"].first_lower_block, 4);
  // In flight to c over the shared blocks: counted, no set changes.
  index.AddInflight("c", std::vector<BlockHash>{1, 2, 3});
  EXPECT_EQ(index.stats().holder_sets, 3u);
  EXPECT_EQ(Prefixes(index, chain), (std::map<std::string, int32_t>{{"a", 6}, {"b", 8}, {"c", 3}}));
  // a's snapshot says it holds 1..4 now: blocks 5..8 lose it.
  KvEventBatch snap = Stored("a", 10, {1, 2, 3, 4});
  index.ApplySnapshot(snap);
  EXPECT_EQ(Prefixes(index, chain), (std::map<std::string, int32_t>{{"a", 4}, {"b", 8}, {"c", 3}}));
  EXPECT_EQ(index.stats().holder_sets, 3u);  // {a, b} for 1..4, {b} for 6..8, {b DRAM} for 5
  // b leaves: a alone on 1..4.
  index.RemoveWorker("b");
  EXPECT_EQ(index.stats().holder_sets, 1u);
  EXPECT_EQ(index.stats().blocks, 4u);
  EXPECT_EQ(Prefixes(index, chain), (std::map<std::string, int32_t>{{"a", 4}, {"c", 3}}));
  index.RemoveWorker("a");
  EXPECT_EQ(index.stats().holder_sets, 0u);
  EXPECT_EQ(index.stats().blocks, 0u);
  EXPECT_EQ(index.stats().entries, 0u);
}

// Batches that number their events (first_sequence_number .. sequence_number),
// as a worker reporting to several routers sends them: the next batch must
// start right after the last applied event; a snapshot numbered N is followed
// by any batch ending after N, even one that starts before it.
TEST(KvIndexTest, EventNumberedBatchesFindGapsAndResumeAfterASnapshot) {
  auto run = [](uint64_t first, uint64_t last, std::vector<uint64_t> hashes) {
    KvEventBatch b = Stored("w", last, std::move(hashes));
    b.set_first_sequence_number(first);
    return b;
  };
  KvIndex index;
  EXPECT_EQ(index.Apply(run(1, 3, {1, 2, 3})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.Apply(run(4, 5, {4, 5})), KvIndex::Outcome::kApplied);
  EXPECT_EQ(index.Apply(run(2, 3, {2, 3})), KvIndex::Outcome::kStale);
  // Events 6 and 7 never arrived.
  EXPECT_EQ(index.Apply(run(8, 9, {8, 9})), KvIndex::Outcome::kNeedSnapshot);
  EXPECT_TRUE(index.AwaitingSnapshot("w"));
  // The snapshot holds events up to 8; the buffered batch 8..9 ends after it.
  index.ApplySnapshot(Stored("w", 8, {1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_FALSE(index.AwaitingSnapshot("w"));
  EXPECT_EQ(Prefixes(index, {1, 2, 3, 4, 5, 6, 7, 8, 9}), (std::map<std::string, int32_t>{{"w", 9}}));
  EXPECT_EQ(index.Apply(run(10, 10, {10})), KvIndex::Outcome::kApplied);
  // A worker new to this router whose batch does not start at event 1 (it
  // reported to another router first) needs a snapshot.
  EXPECT_EQ(index.Apply([] {
    KvEventBatch b = Stored("late", 12, {7});
    b.set_first_sequence_number(11);
    return b;
  }()),
            KvIndex::Outcome::kNeedSnapshot);
}

}  // namespace
}  // namespace tandem::router
