#include "engine/kv_manager.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/block_hash.h"
#include "engine/block_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::_;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

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
constexpr char kModel[] = "test-model";

std::vector<int32_t> Iota(int32_t n, int32_t start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

class KvManagerTest : public ::testing::Test {
 protected:
  void MakePool(int32_t num_blocks) {
    kv_.reset();
    BlockPool::Options options;
    options.num_blocks = num_blocks;
    options.block_size = kBlockSize;
    options.on_evict = [this](const EvictedBlock& e) { evicted_.push_back(e.hash); };
    ASSERT_OK_AND_ASSIGN(pool_, BlockPool::Create(options));
    ASSERT_OK_AND_ASSIGN(kv_, KvManager::Create({.model_id = kModel}, pool_.get()));
  }

  // Starts `seq`, gives it room for its prompt, "computes" it and commits its
  // full blocks, as an engine would after a prefill. Returns the cached tokens.
  int32_t Prefill(int64_t seq, const std::vector<int32_t>& prompt) {
    absl::StatusOr<int32_t> cached = kv_->StartSequence(seq, prompt);
    EXPECT_THAT(cached, IsOk());
    EXPECT_THAT(kv_->EnsureCapacity(seq, static_cast<int32_t>(prompt.size())), IsOk());
    kv_->CommitFullBlocks(seq, prompt, static_cast<int32_t>(prompt.size()));
    EXPECT_THAT(kv_->CheckInvariants(), IsOk());
    return cached.value_or(-1);
  }

  std::vector<int32_t> Table(int64_t seq) {
    absl::Span<const int32_t> t = kv_->BlockTable(seq);
    return std::vector<int32_t>(t.begin(), t.end());
  }

  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<KvManager> kv_;
  std::vector<BlockHash> evicted_;
};

TEST_F(KvManagerTest, CreateValidatesOptions) {
  BlockPool::Options pool_options;
  pool_options.num_blocks = 4;
  pool_options.block_size = kBlockSize;
  ASSERT_OK_AND_ASSIGN(auto pool, BlockPool::Create(pool_options));
  EXPECT_THAT(KvManager::Create({}, pool.get()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model_id")));
  EXPECT_THAT(KvManager::Create({.model_id = kModel, .block_size = 16}, pool.get()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_size")));
  EXPECT_THAT(KvManager::Create({.model_id = kModel}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, _));
  ASSERT_OK_AND_ASSIGN(auto kv,
                       KvManager::Create({.model_id = kModel, .block_size = kBlockSize}, pool.get()));
  EXPECT_EQ(kv->block_size(), kBlockSize);
}

TEST_F(KvManagerTest, TableGrowsAndSlotsAddressIt) {
  MakePool(8);
  ASSERT_OK_AND_ASSIGN(int32_t cached, kv_->StartSequence(1, Iota(6)));
  EXPECT_EQ(cached, 0);
  EXPECT_TRUE(kv_->HasSequence(1));
  EXPECT_THAT(kv_->BlockTable(1), IsEmpty());
  EXPECT_EQ(kv_->BlocksNeeded(1, 6), 2);
  ASSERT_THAT(kv_->EnsureCapacity(1, 6), IsOk());
  const std::vector<int32_t> table = Table(1);
  ASSERT_THAT(table, SizeIs(2));
  EXPECT_EQ(kv_->BlocksNeeded(1, 8), 0);
  EXPECT_EQ(kv_->BlocksNeeded(1, 9), 1);
  for (int32_t p = 0; p < 8; ++p) {
    EXPECT_EQ(kv_->Slot(1, p), table[p / kBlockSize] * kBlockSize + p % kBlockSize);
  }
  ASSERT_THAT(kv_->EnsureCapacity(1, 8), IsOk());  // already covered
  EXPECT_THAT(kv_->BlockTable(1), SizeIs(2));
  ASSERT_THAT(kv_->EnsureCapacity(1, 9), IsOk());
  EXPECT_THAT(kv_->BlockTable(1), SizeIs(3));
  ASSERT_THAT(kv_->EnsureCapacity(1, 0), IsOk());  // never shrinks
  EXPECT_THAT(kv_->BlockTable(1), SizeIs(3));
  EXPECT_EQ(pool_->num_free_blocks(), 5);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
  kv_->FreeSequence(1);
  EXPECT_FALSE(kv_->HasSequence(1));
  EXPECT_THAT(kv_->BlockTable(1), IsEmpty());
  EXPECT_EQ(pool_->num_free_blocks(), 8);
  kv_->FreeSequence(1);  // unknown: no-op
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, ArgumentErrors) {
  MakePool(4);
  EXPECT_THAT(kv_->StartSequence(1, {}), StatusIs(absl::StatusCode::kInvalidArgument, _));
  EXPECT_FALSE(kv_->HasSequence(1));
  ASSERT_THAT(kv_->StartSequence(1, Iota(3)).status(), IsOk());
  EXPECT_THAT(kv_->StartSequence(1, Iota(3)), StatusIs(absl::StatusCode::kAlreadyExists, _));
  EXPECT_THAT(kv_->EnsureCapacity(2, 4), StatusIs(absl::StatusCode::kNotFound, _));
  EXPECT_THAT(kv_->EnsureCapacity(1, -1), StatusIs(absl::StatusCode::kInvalidArgument, _));
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, SecondPromptReusesExactlyTheSharedFullBlocks) {
  MakePool(64);
  // A: 10 full blocks + 2 tokens. B: the same first 9 blocks (90%), then a
  // different 10th block and tail.
  std::vector<int32_t> a = Iota(10 * kBlockSize + 2, 1000);
  std::vector<int32_t> b = a;
  b[9 * kBlockSize + 1] = 7;
  b.back() = 8;
  EXPECT_EQ(Prefill(1, a), 0);
  const std::vector<int32_t> table_a = Table(1);
  EXPECT_EQ(pool_->num_cached_blocks(), 10);

  EXPECT_EQ(kv_->MatchPrefix(b).cached_tokens, 9 * kBlockSize);
  EXPECT_EQ(kv_->MatchPrefix(b).evictable_blocks, 0);  // A still holds them
  EXPECT_EQ(Prefill(2, b), 9 * kBlockSize);
  const std::vector<int32_t> table_b = Table(2);
  ASSERT_THAT(table_b, SizeIs(11));
  EXPECT_THAT(absl::MakeConstSpan(table_b).first(9), ElementsAreArray(absl::MakeConstSpan(table_a).first(9)));
  EXPECT_NE(table_b[9], table_a[9]);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(pool_->RefCount(table_a[i]), 2);
  EXPECT_EQ(pool_->num_cached_blocks(), 11);
  EXPECT_EQ(kv_->stats().cached_prompt_tokens, 9 * kBlockSize);
  EXPECT_EQ(kv_->stats().prompt_tokens, static_cast<int64_t>(a.size() + b.size()));

  // After both finish the blocks stay cached and a third request reuses them.
  kv_->FreeSequence(1);
  kv_->FreeSequence(2);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
  EXPECT_EQ(pool_->num_free_blocks(), 64);
  EXPECT_EQ(pool_->num_evictable_blocks(), 11);
  EXPECT_EQ(kv_->MatchPrefix(a).evictable_blocks, 10);
  EXPECT_EQ(Prefill(3, a), 10 * kBlockSize);
  EXPECT_THAT(absl::MakeConstSpan(Table(3)).first(10),
              ElementsAreArray(absl::MakeConstSpan(table_a).first(10)));
}

TEST_F(KvManagerTest, NeverReusesTheWholePrompt) {
  MakePool(16);
  const std::vector<int32_t> prompt = Iota(3 * kBlockSize);  // exactly 3 full blocks
  EXPECT_EQ(Prefill(1, prompt), 0);
  kv_->FreeSequence(1);
  // All 3 blocks are cached, but the last token must be computed for logits.
  EXPECT_EQ(kv_->MatchPrefix(prompt).cached_tokens, 2 * kBlockSize);
  EXPECT_EQ(Prefill(2, prompt), 2 * kBlockSize);
  kv_->FreeSequence(2);
  // One more token: now all 3 blocks can be reused.
  std::vector<int32_t> longer = prompt;
  longer.push_back(99);
  EXPECT_EQ(Prefill(3, longer), 3 * kBlockSize);
  kv_->FreeSequence(3);
  // A prompt shorter than a block reuses nothing.
  EXPECT_EQ(Prefill(4, Iota(kBlockSize)), 0);
  EXPECT_EQ(Prefill(5, Iota(1)), 0);
}

TEST_F(KvManagerTest, DecodeCommitsBlocksAsTheyFill) {
  MakePool(8);
  std::vector<int32_t> tokens = Iota(kBlockSize + 2, 50);
  EXPECT_EQ(Prefill(1, tokens), 0);
  EXPECT_EQ(pool_->num_cached_blocks(), 1);
  const std::vector<BlockHash> expected = HashFullBlocks(kModel, Iota(3 * kBlockSize, 50), kBlockSize);
  while (tokens.size() < 3 * kBlockSize) {
    tokens.push_back(static_cast<int32_t>(50 + tokens.size()));
    ASSERT_THAT(kv_->EnsureCapacity(1, static_cast<int32_t>(tokens.size())), IsOk());
    kv_->CommitFullBlocks(1, tokens, static_cast<int32_t>(tokens.size()));
    ASSERT_THAT(kv_->CheckInvariants(), IsOk());
    EXPECT_EQ(pool_->num_cached_blocks(), static_cast<int32_t>(tokens.size()) / kBlockSize);
  }
  // Committing only what is computed: the 3rd block is full of tokens but
  // only computed up to one short of its end until the last call above.
  const std::vector<int32_t> table = Table(1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pool_->HashOf(table[i]), expected[i]) << i;
}

TEST_F(KvManagerTest, CommitsOnlyComputedBlocks) {
  MakePool(8);
  const std::vector<int32_t> prompt = Iota(3 * kBlockSize + 1);
  ASSERT_THAT(kv_->StartSequence(1, prompt).status(), IsOk());
  ASSERT_THAT(kv_->EnsureCapacity(1, static_cast<int32_t>(prompt.size())), IsOk());
  kv_->CommitFullBlocks(1, prompt, kBlockSize + 3);  // chunked prefill, chunk 1
  EXPECT_EQ(pool_->num_cached_blocks(), 1);
  kv_->CommitFullBlocks(1, prompt, kBlockSize + 3);  // idempotent
  EXPECT_EQ(pool_->num_cached_blocks(), 1);
  kv_->CommitFullBlocks(1, prompt, 3 * kBlockSize + 1);  // chunk 2
  EXPECT_EQ(pool_->num_cached_blocks(), 3);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, ConcurrentIdenticalPromptsKeepPrivateDuplicates) {
  MakePool(16);
  const std::vector<int32_t> prompt = Iota(2 * kBlockSize + 1);
  // Both start before either has committed, so neither reuses anything.
  ASSERT_OK_AND_ASSIGN(int32_t c1, kv_->StartSequence(1, prompt));
  ASSERT_OK_AND_ASSIGN(int32_t c2, kv_->StartSequence(2, prompt));
  EXPECT_EQ(c1, 0);
  EXPECT_EQ(c2, 0);
  ASSERT_THAT(kv_->EnsureCapacity(1, static_cast<int32_t>(prompt.size())), IsOk());
  ASSERT_THAT(kv_->EnsureCapacity(2, static_cast<int32_t>(prompt.size())), IsOk());
  kv_->CommitFullBlocks(1, prompt, static_cast<int32_t>(prompt.size()));
  kv_->CommitFullBlocks(2, prompt, static_cast<int32_t>(prompt.size()));
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
  EXPECT_EQ(pool_->num_cached_blocks(), 2);  // the first sequence's blocks
  const std::vector<int32_t> t1 = Table(1);
  const std::vector<int32_t> t2 = Table(2);
  EXPECT_TRUE(pool_->HashOf(t1[0]).has_value());
  EXPECT_FALSE(pool_->HashOf(t2[0]).has_value());
  kv_->FreeSequence(2);  // its duplicates go straight back to the free list
  EXPECT_EQ(pool_->num_evictable_blocks(), 0);
  EXPECT_EQ(pool_->num_free_blocks(), 16 - 3);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, ExhaustionLeaksAndEvictsNothing) {
  MakePool(6);
  // Three evictable cached blocks.
  EXPECT_EQ(Prefill(1, Iota(3 * kBlockSize + 1)), 0);
  kv_->FreeSequence(1);
  EXPECT_EQ(pool_->num_evictable_blocks(), 3);
  EXPECT_EQ(pool_->num_free_blocks(), 6);

  ASSERT_THAT(kv_->StartSequence(2, Iota(1, 500)).status(), IsOk());
  EXPECT_THAT(kv_->EnsureCapacity(2, 7 * kBlockSize),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("7 more")));
  EXPECT_THAT(kv_->BlockTable(2), IsEmpty());
  EXPECT_EQ(pool_->stats().evictions, 0);
  EXPECT_EQ(pool_->num_evictable_blocks(), 3);
  EXPECT_EQ(pool_->num_free_blocks(), 6);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());

  // Exactly the pool fits, evicting the cached blocks (tail block first).
  ASSERT_THAT(kv_->EnsureCapacity(2, 6 * kBlockSize), IsOk());
  EXPECT_EQ(pool_->num_free_blocks(), 0);
  const std::vector<BlockHash> h = HashFullBlocks(kModel, Iota(3 * kBlockSize + 1), kBlockSize);
  EXPECT_THAT(evicted_, ElementsAreArray({h[2], h[1], h[0]}));
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
  kv_->FreeSequence(2);
  EXPECT_EQ(pool_->num_free_blocks(), 6);
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, BlocksToAdmitPredictsTheDropInFreeBlocks) {
  MakePool(32);
  const std::vector<int32_t> base = Iota(5 * kBlockSize + 1);
  EXPECT_EQ(Prefill(1, base), 0);  // 5 cached, referenced by seq 1
  EXPECT_EQ(Prefill(2, Iota(3 * kBlockSize + 1, 900)), 0);
  kv_->FreeSequence(2);  // 3 cached, evictable

  std::vector<int32_t> p3 = Iota(3 * kBlockSize, 900);
  p3.push_back(1);
  p3.push_back(2);
  std::vector<int32_t> p4 = base;
  p4.resize(4 * kBlockSize + 3);
  for (const auto& [seq, prompt] :
       std::vector<std::pair<int64_t, std::vector<int32_t>>>{{3, p3}, {4, p4}, {5, Iota(9, 7)}}) {
    for (int32_t extra : {0, 5}) {
      const int32_t total = static_cast<int32_t>(prompt.size()) + extra;
      const int32_t predicted = kv_->BlocksToAdmit(prompt, total);
      const int32_t before = pool_->num_free_blocks();
      ASSERT_THAT(kv_->StartSequence(seq, prompt).status(), IsOk());
      ASSERT_THAT(kv_->EnsureCapacity(seq, total), IsOk());
      EXPECT_EQ(before - pool_->num_free_blocks(), predicted) << "seq " << seq << " +" << extra;
      kv_->FreeSequence(seq);
    }
  }
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, PreemptedSequenceRestartsFromItsCachedBlocks) {
  MakePool(16);
  std::vector<int32_t> tokens = Iota(2 * kBlockSize + 1);
  EXPECT_EQ(Prefill(1, tokens), 0);
  for (int i = 0; i < kBlockSize; ++i) {
    tokens.push_back(100 + i);
    ASSERT_THAT(kv_->EnsureCapacity(1, static_cast<int32_t>(tokens.size())), IsOk());
    kv_->CommitFullBlocks(1, tokens, static_cast<int32_t>(tokens.size()));
  }
  kv_->FreeSequence(1);  // preempted (recompute)
  // Restarting with prompt + generated tokens reuses every full block but
  // keeps the last token to compute.
  EXPECT_EQ(Prefill(1, tokens), 3 * kBlockSize);
}

TEST_F(KvManagerTest, DestructorReleasesLiveSequences) {
  MakePool(8);
  Prefill(1, Iota(9));
  Prefill(2, Iota(9));
  EXPECT_LT(pool_->num_free_blocks(), 8);
  kv_.reset();
  EXPECT_EQ(pool_->num_free_blocks(), 8);
  EXPECT_THAT(pool_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, CollidingHashInPoolIsNotReused) {
  MakePool(8);
  const std::vector<int32_t> prompt = Iota(2 * kBlockSize + 1);
  const std::vector<BlockHash> h = HashFullBlocks(kModel, prompt, kBlockSize);
  // Some other content registered under block 0's hash (a fabricated collision).
  ASSERT_OK_AND_ASSIGN(int32_t other, pool_->Allocate());
  ASSERT_TRUE(pool_->Commit(other, h[0], Iota(kBlockSize, 777)));
  pool_->Release(other);
  EXPECT_EQ(Prefill(1, prompt), 0);
  EXPECT_EQ(pool_->stats().collisions, 1);
  // Seq 1's own block 0 could not be registered (the hash is taken) ...
  EXPECT_FALSE(pool_->HashOf(Table(1)[0]).has_value());
  EXPECT_THAT(kv_->CheckInvariants(), IsOk());
}

TEST_F(KvManagerTest, SlotOutsideTableAborts) {
  MakePool(2);
  ASSERT_THAT(kv_->StartSequence(1, Iota(3)).status(), IsOk());
  ASSERT_THAT(kv_->EnsureCapacity(1, 3), IsOk());
  EXPECT_DEATH(kv_->Slot(1, kBlockSize), "outside");
  EXPECT_DEATH(kv_->Slot(2, 0), "unknown");
}

// ---------------------------------------------------------------------------
// Randomized property test.
//
// Sequences arrive with prompts drawn from a few shared prefixes (and from
// earlier conversations, as returning chats do), grow by chunked prefill and
// decode, and are cancelled, preempted or completed at random, in a pool small
// enough that eviction and ResourceExhausted are both common. The test keeps
// a simulated KV memory in which each slot holds a fingerprint of the token
// prefix that produced it, so reused blocks are checked to hold the right
// content and shared blocks are checked never to be written.
//
// Reproduce a failure with TANDEM_KV_PROPERTY_SEED=<seed printed>.

struct PropertyParams {
  uint64_t seed;
  int32_t num_blocks;
  // Whether the reachability check also Looks up (and re-Releases) evictable
  // cached blocks, which reorders the LRU, or only Peeks at them.
  bool lookup_evictable;
  int max_active;
};

void PrintTo(const PropertyParams& p, std::ostream* os) {
  *os << "{seed " << p.seed << ", " << p.num_blocks << " blocks, " << (p.lookup_evictable ? "lookup" : "peek")
      << ", " << p.max_active << " active}";
}

class KvManagerPropertyTest : public ::testing::TestWithParam<PropertyParams> {};

struct SimSequence {
  int64_t id = 0;
  std::vector<int32_t> tokens;
  std::vector<uint64_t> fingerprint;  // fingerprint[p] names tokens[0..p]
  int32_t num_computed = 0;
  int32_t prompt_len = 0;
  int32_t max_len = 0;
};

uint64_t Mix(uint64_t prev, int32_t token) {
  uint64_t x = prev ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x9e3779b97f4a7c15ULL);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x | 1;  // never 0, the "unwritten" marker
}

void AppendToken(SimSequence& s, int32_t token) {
  s.fingerprint.push_back(Mix(s.fingerprint.empty() ? 0 : s.fingerprint.back(), token));
  s.tokens.push_back(token);
}

TEST_P(KvManagerPropertyTest, RandomWorkloadKeepsEveryInvariant) {
  const PropertyParams params = GetParam();
  uint64_t seed = params.seed;
  if (const char* env = std::getenv("TANDEM_KV_PROPERTY_SEED")) seed = std::strtoull(env, nullptr, 10);
  SCOPED_TRACE(::testing::Message() << "seed=" << seed << " num_blocks=" << params.num_blocks
                                    << " lookup_evictable=" << params.lookup_evictable
                                    << " max_active=" << params.max_active
                                    << " (rerun with TANDEM_KV_PROPERTY_SEED=" << seed << ")");
  std::mt19937_64 rng(seed);
  auto uniform = [&rng](int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  auto chance = [&rng](double p) { return std::bernoulli_distribution(p)(rng); };
  constexpr int32_t kVocab = 6;  // small: identical blocks under different prefixes
  constexpr int kOps = 12000;

  int64_t evictions_seen = 0;
  BlockPool::Options options;
  options.num_blocks = params.num_blocks;
  options.block_size = kBlockSize;
  options.on_evict = [&](const EvictedBlock& e) {
    ++evictions_seen;
    ASSERT_EQ(e.tokens.size(), static_cast<size_t>(kBlockSize));
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<BlockPool> pool, BlockPool::Create(options));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<KvManager> kv, KvManager::Create({.model_id = kModel}, pool.get()));

  std::vector<uint64_t> kv_memory(static_cast<size_t>(params.num_blocks) * kBlockSize, 0);
  // Every (hash -> tokens) the workload has ever committed; hashes name whole
  // prefixes, so an entry never changes.
  absl::flat_hash_map<BlockHash, std::vector<int32_t>> committed;

  std::vector<std::vector<int32_t>> prefixes;
  for (int32_t len : {0, 5, 2 * kBlockSize, 3 * kBlockSize + 1, 6 * kBlockSize + 2}) {
    std::vector<int32_t> p;
    for (int32_t i = 0; i < len; ++i) p.push_back(static_cast<int32_t>(uniform(0, kVocab - 1)));
    prefixes.push_back(p);
  }
  std::vector<std::vector<int32_t>> history;  // finished conversations
  std::vector<SimSequence> active;
  int64_t next_id = 1;
  int64_t exhausted_admissions = 0, exhausted_decodes = 0, completed = 0, cancelled = 0;
  int64_t reused_tokens = 0;

  // Writes the KV of positions [s.num_computed, upto) and commits full blocks.
  auto compute = [&](SimSequence& s, int32_t upto) {
    for (int32_t p = s.num_computed; p < upto; ++p) {
      const int32_t slot = kv->Slot(s.id, p);
      const int32_t block = slot / kBlockSize;
      ASSERT_EQ(pool->RefCount(block), 1) << "writing a shared block " << block;
      ASSERT_FALSE(pool->HashOf(block).has_value()) << "writing a cached block " << block;
      kv_memory[slot] = s.fingerprint[p];
    }
    s.num_computed = upto;
    kv->CommitFullBlocks(s.id, s.tokens, s.num_computed);
    const std::vector<BlockHash> hashes =
        HashFullBlocks(kModel, absl::MakeConstSpan(s.tokens).first(s.num_computed), kBlockSize);
    const absl::Span<const int32_t> table = kv->BlockTable(s.id);
    for (size_t i = 0; i < hashes.size(); ++i) {
      const std::vector<int32_t> block_tokens(s.tokens.begin() + i * kBlockSize,
                                              s.tokens.begin() + (i + 1) * kBlockSize);
      const auto [it, inserted] = committed.try_emplace(hashes[i], block_tokens);
      ASSERT_EQ(it->second, block_tokens) << "a real XXH3 collision?";
      // Either this block is the cached one, or another block held the hash
      // when it was committed and (being referenced or not) may since be gone.
      if (const std::optional<BlockHash> h = pool->HashOf(table[i])) {
        ASSERT_EQ(*h, hashes[i]);
      }
    }
  };
  auto free_seq = [&](size_t index) {
    kv->FreeSequence(active[index].id);
    active.erase(active.begin() + static_cast<ptrdiff_t>(index));
  };

  for (int op = 0; op < kOps; ++op) {
    SCOPED_TRACE(::testing::Message() << "op " << op);
    const int64_t roll = uniform(0, 99);
    if (roll < 20 && static_cast<int>(active.size()) < params.max_active) {
      // Arrival.
      SimSequence s;
      s.id = next_id++;
      std::vector<int32_t> prompt;
      if (!history.empty() && chance(0.3)) {
        prompt = history[uniform(0, static_cast<int64_t>(history.size()) - 1)];
      } else {
        prompt = prefixes[uniform(0, static_cast<int64_t>(prefixes.size()) - 1)];
      }
      const int64_t suffix = uniform(1, 2 * kBlockSize + 3);
      for (int64_t i = 0; i < suffix; ++i) prompt.push_back(static_cast<int32_t>(uniform(0, kVocab - 1)));
      if (prompt.size() > 12 * kBlockSize) prompt.resize(12 * kBlockSize);
      for (int32_t t : prompt) AppendToken(s, t);
      s.prompt_len = static_cast<int32_t>(prompt.size());
      s.max_len = s.prompt_len + static_cast<int32_t>(uniform(1, 3 * kBlockSize));

      const KvManager::PrefixMatch match = kv->MatchPrefix(prompt);
      const int32_t predicted = kv->BlocksToAdmit(prompt, s.prompt_len);
      const int32_t free_before = pool->num_free_blocks();
      ASSERT_OK_AND_ASSIGN(const int32_t cached, kv->StartSequence(s.id, prompt));
      ASSERT_EQ(cached, match.cached_tokens);
      ASSERT_EQ(cached % kBlockSize, 0);
      ASSERT_LT(cached, s.prompt_len);
      // The reused prefix is the longest one the cache holds (capped).
      const std::vector<BlockHash> hashes = HashFullBlocks(kModel, prompt, kBlockSize);
      size_t longest = 0;
      while (longest < hashes.size() && pool->Contains(hashes[longest]) &&
             pool->Peek(hashes[longest],
                        absl::MakeConstSpan(prompt).subspan(longest * kBlockSize, kBlockSize))) {
        ++longest;
      }
      ASSERT_EQ(static_cast<size_t>(cached / kBlockSize),
                std::min(longest, static_cast<size_t>((s.prompt_len - 1) / kBlockSize)));
      // Reused blocks hold exactly the KV of this prefix.
      for (int32_t p = 0; p < cached; ++p) {
        ASSERT_EQ(kv_memory[kv->Slot(s.id, p)], s.fingerprint[p]) << "position " << p;
      }
      s.num_computed = cached;
      reused_tokens += cached;
      const absl::Status st = kv->EnsureCapacity(s.id, s.prompt_len);
      if (st.ok()) {
        ASSERT_LE(predicted, free_before);
        ASSERT_EQ(free_before - pool->num_free_blocks(), predicted);
        kv->CommitFullBlocks(s.id, s.tokens, s.num_computed);  // no-op: already hashed
        active.push_back(std::move(s));
      } else {
        ASSERT_THAT(st, StatusIs(absl::StatusCode::kResourceExhausted, _));
        ASSERT_GT(predicted, free_before);
        ++exhausted_admissions;
        kv->FreeSequence(s.id);
      }
    } else if (roll < 95 && !active.empty()) {
      // One engine step for one sequence: a prefill chunk or a decode token.
      const size_t index = uniform(0, static_cast<int64_t>(active.size()) - 1);
      SimSequence& s = active[index];
      if (s.num_computed < s.prompt_len) {
        const int32_t chunk = static_cast<int32_t>(uniform(1, 3 * kBlockSize));
        compute(s, std::min(s.prompt_len, s.num_computed + chunk));
        if (::testing::Test::HasFatalFailure()) return;
      } else if (static_cast<int32_t>(s.tokens.size()) >= s.max_len) {
        ++completed;
        history.push_back(s.tokens);
        if (history.size() > 16) history.erase(history.begin());
        free_seq(index);
      } else {
        AppendToken(s, static_cast<int32_t>(uniform(0, kVocab - 1)));
        const int32_t total = static_cast<int32_t>(s.tokens.size());
        const int32_t needed = kv->BlocksNeeded(s.id, total);
        const int32_t free_before = pool->num_free_blocks();
        const absl::Status st = kv->EnsureCapacity(s.id, total);
        if (st.ok()) {
          ASSERT_LE(needed, free_before);
          ASSERT_EQ(free_before - pool->num_free_blocks(), needed);
          compute(s, total);
          if (::testing::Test::HasFatalFailure()) return;
        } else {
          // Preempt by recompute: a later arrival may resume it from cache.
          ASSERT_THAT(st, StatusIs(absl::StatusCode::kResourceExhausted, _));
          ASSERT_GT(needed, free_before);
          ++exhausted_decodes;
          s.tokens.pop_back();
          history.push_back(s.tokens);
          free_seq(index);
        }
      }
    } else if (!active.empty()) {
      ++cancelled;
      free_seq(uniform(0, static_cast<int64_t>(active.size()) - 1));
    }

    // --- Invariants after every operation. ---
    ASSERT_THAT(kv->CheckInvariants(), IsOk());
    ASSERT_EQ(kv->num_sequences(), static_cast<int32_t>(active.size()));
    if (active.empty()) {
      ASSERT_EQ(pool->num_free_blocks(), pool->num_blocks());
    }
    // Every cached block is reachable by its hash with its tokens.
    for (int32_t b = 0; b < pool->num_blocks(); ++b) {
      const std::optional<BlockHash> h = pool->HashOf(b);
      if (!h.has_value()) continue;
      const auto it = committed.find(*h);
      ASSERT_NE(it, committed.end()) << "block " << b << " cached under an unknown hash";
      if (pool->RefCount(b) == 0 && !params.lookup_evictable) {
        ASSERT_EQ(pool->Peek(*h, it->second), b);
        continue;
      }
      const std::optional<int32_t> found = pool->Lookup(*h, it->second);
      ASSERT_EQ(found, b);
      pool->Release(b);
    }
    ASSERT_THAT(kv->CheckInvariants(), IsOk());
  }

  while (!active.empty()) free_seq(active.size() - 1);
  ASSERT_THAT(kv->CheckInvariants(), IsOk());
  EXPECT_EQ(pool->num_free_blocks(), pool->num_blocks());
  EXPECT_EQ(pool->stats().collisions, 0);
  EXPECT_EQ(pool->stats().evictions, evictions_seen);
  // The workload must actually have exercised the interesting paths.
  EXPECT_GT(evictions_seen, 0);
  EXPECT_GT(exhausted_admissions + exhausted_decodes, 0);
  EXPECT_GT(reused_tokens, 0);
  EXPECT_GT(completed, 0);
  EXPECT_GT(cancelled, 0);
  std::printf(
      "seed %llu: %lld completed, %lld cancelled, %lld admissions and %lld decodes "
      "refused, %lld evictions, %lld prompt tokens reused\n",
      static_cast<unsigned long long>(seed), static_cast<long long>(completed),
      static_cast<long long>(cancelled), static_cast<long long>(exhausted_admissions),
      static_cast<long long>(exhausted_decodes), static_cast<long long>(evictions_seen),
      static_cast<long long>(reused_tokens));
}

INSTANTIATE_TEST_SUITE_P(Seeds, KvManagerPropertyTest,
                         ::testing::Values(PropertyParams{1, 24, true, 6},
                                           PropertyParams{20240607, 24, false, 6},
                                           PropertyParams{77, 12, true, 4},
                                           PropertyParams{4242, 48, false, 12}),
                         [](const ::testing::TestParamInfo<PropertyParams>& info) {
                           return "seed" + std::to_string(info.param.seed) + "_blocks" +
                                  std::to_string(info.param.num_blocks) +
                                  (info.param.lookup_evictable ? "_lookup" : "_peek");
                         });

}  // namespace
}  // namespace tandem::engine
