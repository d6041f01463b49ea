// Randomized multi-threaded workload on each tier: budgets hold after every
// operation, values read back are never torn. Built under ThreadSanitizer in
// a separate build dir (-DTANDEM_SANITIZE=thread) to check the locking.
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/dram_tier.h"
#include "kvstore/ssd_tier.h"
#include "kvstore/test_util.h"
#include "kvstore/tiered_store.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;

constexpr int kThreads = 4;
constexpr uint64_t kKeys = 64;

// A value for key h of `size` bytes, self-describing so a torn or mixed-up
// read shows: an encoded block (its checksum covers everything).
std::string ValueOf(BlockHash h, size_t payload) {
  const std::vector<int32_t> tokens = TokensFor(h, 4);
  const std::vector<uint8_t> bytes = PayloadFor(h ^ payload, payload);
  return EncodeBlock({.model_id_hash = 7, .block_hash = h, .tokens = tokens, .payload = bytes});
}
absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

template <typename Op>
void RunThreads(int ops_per_thread, Op op) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, ops_per_thread, &op] {
      std::mt19937_64 rng(1000 + t);
      for (int i = 0; i < ops_per_thread; ++i) op(rng);
    });
  }
  for (std::thread& t : threads) t.join();
}

TEST(KvStoreStressTest, DramTierBudgetHoldsUnderRandomConcurrentOps) {
  constexpr size_t kSlot = 4096;
  ASSERT_OK_AND_ASSIGN(auto tier,
                       DramTier::Create({.slot_bytes = kSlot, .capacity_bytes = 10 * kSlot + 100}));
  std::atomic<int> bad_reads{0};
  RunThreads(2000, [&](std::mt19937_64& rng) {
    const BlockHash h = rng() % kKeys;
    switch (rng() % 3) {
      case 0: {
        const std::string v = ValueOf(h, rng() % (kSlot - 200));
        EXPECT_OK(tier->Put(h, Bytes(v), nullptr));
        break;
      }
      case 1:
        tier->Get(h, [&](absl::Span<const uint8_t> v) {
          absl::StatusOr<BlockView> view = DecodeBlock(v, /*verify_checksum=*/true);
          if (!view.ok() || view->block_hash != h) ++bad_reads;
        });
        break;
      default:
        tier->Erase(h);
    }
    EXPECT_LE(tier->used_bytes(), tier->capacity_bytes());
    EXPECT_LE(tier->slots_in_use() * tier->slot_bytes(), tier->capacity_bytes());
  });
  EXPECT_EQ(bad_reads.load(), 0);
}

TEST(KvStoreStressTest, SsdTierBudgetHoldsUnderRandomConcurrentOps) {
  TempDir dir;
  constexpr size_t kBudget = 256 * 1024;
  ASSERT_OK_AND_ASSIGN(
      auto ssd,
      SsdTier::Create(
          {.path = dir.path(), .capacity_bytes = kBudget, .model_id_hash = 7, .min_blob_size = 1024}));
  RunThreads(300, [&](std::mt19937_64& rng) {
    const BlockHash h = rng() % kKeys;
    switch (rng() % 3) {
      case 0:
        EXPECT_OK(ssd->Put(h, Bytes(ValueOf(h, 100 + rng() % 40000)), nullptr));
        break;
      case 1: {
        absl::StatusOr<std::string> v = ssd->Get(h);
        // NotFound is fine (evicted or erased meanwhile); nothing is corrupt.
        EXPECT_TRUE(v.ok() || absl::IsNotFound(v.status())) << v.status();
        break;
      }
      default:
        EXPECT_OK(ssd->Erase(h));
    }
    EXPECT_LE(ssd->used_bytes(), kBudget);
  });
}

TEST(KvStoreStressTest, TieredStoreBudgetsHoldAndReadsAreExact) {
  TempDir dir;
  constexpr int32_t kTokens = 4;
  constexpr size_t kPayload = 8000;
  TieredStore::Options o;
  o.model_id = "stress";
  o.block_tokens = kTokens;
  o.payload_bytes = kPayload;
  o.dram_bytes = 8 * EncodedBlockBytes(kTokens, kPayload);
  o.ssd_path = dir.path();
  o.ssd_bytes = 24 * EncodedBlockBytes(kTokens, kPayload);
  o.write_queue_blocks = 4;
  o.put_timeout = absl::Milliseconds(200);
  std::atomic<int64_t> events{0};
  o.on_event = [&](const TierEvent& e) { events += static_cast<int64_t>(e.hashes.size()); };
  ASSERT_OK_AND_ASSIGN(auto store, TieredStore::Create(o));
  RunThreads(300, [&](std::mt19937_64& rng) {
    const BlockHash h = rng() % kKeys;
    switch (rng() % 3) {
      case 0: {
        const absl::Status s = store->Put(h, TokensFor(h, kTokens), PayloadFor(h, kPayload));
        EXPECT_TRUE(s.ok() || absl::IsResourceExhausted(s)) << s;
        break;
      }
      case 1: {
        std::vector<uint8_t> out(kPayload);
        absl::StatusOr<Tier> got = store->Get(h, TokensFor(h, kTokens), absl::MakeSpan(out));
        if (got.ok()) {
          EXPECT_EQ(out, PayloadFor(h, kPayload));
        } else {
          EXPECT_TRUE(absl::IsNotFound(got.status())) << got.status();
        }
        break;
      }
      default:
        EXPECT_OK(store->Erase(h));
    }
    EXPECT_LE(store->dram().used_bytes(), o.dram_bytes);
    EXPECT_LE(store->ssd()->used_bytes(), o.ssd_bytes);
  });
  ASSERT_OK(store->Flush(absl::Now() + absl::Seconds(60)));
  EXPECT_GT(events.load(), 0);
}

}  // namespace
}  // namespace tandem::kvstore
