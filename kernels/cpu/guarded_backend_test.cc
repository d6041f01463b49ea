// The CPU backend's guarded mode (backend.h, CreateGuardedCpuBackend): its
// memory faults when touched from outside a backend call, its ops match the
// plain CPU backend bit for bit, and copy streams move bytes both ways.
#include <cstring>
#include <random>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kernels {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(GuardedBackendDeathTest, HostAccessOutsideABackendCallFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto guarded = CreateGuardedCpuBackend({.num_threads = 1});
  EXPECT_FALSE(guarded->host_accessible());
  ASSERT_OK_AND_ASSIGN(void* p, guarded->Allocate(4096));
  volatile float* f = static_cast<float*>(p);
  EXPECT_DEATH((void)f[0], "");             // a read
  EXPECT_DEATH(f[1] = 1.0f, "");            // a write
  EXPECT_DEATH(std::memset(p, 0, 16), "");  // a library call
  // Through the backend it works (Allocate zeroes).
  float host = -1;
  guarded->CopyToHost(p, sizeof(float), &host);
  EXPECT_EQ(host, 0.0f);
  guarded->Free(p);
}

TEST(GuardedBackendTest, OpsMatchThePlainCpuBackendBitForBit) {
  std::mt19937 rng(7);
  auto cpu = CreateCpuBackend({.num_threads = 2});
  auto guarded = CreateGuardedCpuBackend({.num_threads = 2});
  const int64_t rows = 3, cols = 64, out_cols = 32;
  const std::vector<float> x = Random(rows * cols, rng), w = Random(out_cols * cols, rng);
  const Weight weight{w.data(), DType::kF32, out_cols, cols};
  std::vector<float> want(rows * out_cols), got(rows * out_cols);
  cpu->MatMul(x.data(), rows, weight, want.data());
  ASSERT_OK_AND_ASSIGN(void* dx, guarded->Allocate(x.size() * sizeof(float)));
  ASSERT_OK_AND_ASSIGN(void* dout, guarded->Allocate(got.size() * sizeof(float)));
  guarded->CopyFromHost(x.data(), x.size() * sizeof(float), dx);
  guarded->MatMul(static_cast<float*>(dx), rows, weight, static_cast<float*>(dout));
  guarded->CopyToHost(dout, got.size() * sizeof(float), got.data());
  EXPECT_EQ(got, want);

  // Attention over a bf16 paged cache, through the guarded pool.
  const KvLayout layout{1, 2, 16, 4, DType::kBF16};
  const int32_t blocks = 4, ctx = 7, heads = 4;
  const std::vector<int32_t> table = {3, 1};
  std::vector<int32_t> slots(ctx);
  for (int32_t p = 0; p < ctx; ++p) slots[p] = table[p / 4] * 4 + p % 4;
  const std::vector<float> k = Random(ctx * layout.TokenStride(), rng),
                           v = Random(ctx * layout.TokenStride(), rng), q = Random(heads * 16, rng);
  std::vector<uint8_t> cpu_pool(blocks * layout.BlockBytes());
  const KvCacheView cpu_kv{cpu_pool.data(), layout, blocks};
  cpu->WriteKv(cpu_kv, 0, k.data(), v.data(), slots);
  const AttentionSequence seq{0, 1, ctx, table};
  std::vector<float> want_attn(heads * 16), got_attn(heads * 16);
  cpu->PagedAttention(q.data(), cpu_kv, 0, heads, {&seq, 1}, 0.25f, want_attn.data());

  ASSERT_OK_AND_ASSIGN(void* pool, guarded->Allocate(cpu_pool.size()));
  ASSERT_OK_AND_ASSIGN(void* dk, guarded->Allocate(k.size() * sizeof(float)));
  ASSERT_OK_AND_ASSIGN(void* dv, guarded->Allocate(v.size() * sizeof(float)));
  ASSERT_OK_AND_ASSIGN(void* dq, guarded->Allocate(q.size() * sizeof(float)));
  ASSERT_OK_AND_ASSIGN(void* dattn, guarded->Allocate(got_attn.size() * sizeof(float)));
  guarded->CopyFromHost(k.data(), k.size() * sizeof(float), dk);
  guarded->CopyFromHost(v.data(), v.size() * sizeof(float), dv);
  guarded->CopyFromHost(q.data(), q.size() * sizeof(float), dq);
  const KvCacheView kv{pool, layout, blocks};
  guarded->WriteKv(kv, 0, static_cast<float*>(dk), static_cast<float*>(dv), slots);
  guarded->PagedAttention(static_cast<float*>(dq), kv, 0, heads, {&seq, 1}, 0.25f,
                          static_cast<float*>(dattn));
  guarded->CopyToHost(dattn, got_attn.size() * sizeof(float), got_attn.data());
  EXPECT_EQ(got_attn, want_attn);
  std::vector<uint8_t> got_pool(cpu_pool.size());
  guarded->CopyToHost(pool, got_pool.size(), got_pool.data());
  EXPECT_EQ(got_pool, cpu_pool) << "bf16 KV bytes differ";
  for (void* p : {dx, dout, pool, dk, dv, dq, dattn}) guarded->Free(p);
}

TEST(GuardedBackendTest, CopyStreamsMoveBytesBothWays) {
  auto guarded = CreateGuardedCpuBackend({.num_threads = 1});
  ASSERT_OK_AND_ASSIGN(void* dev, guarded->Allocate(1 << 16));
  ASSERT_OK_AND_ASSIGN(void* pinned, guarded->AllocatePinnedHost(1 << 16));
  auto* host = static_cast<uint8_t*>(pinned);
  for (int i = 0; i < (1 << 16); ++i) host[i] = static_cast<uint8_t>(i * 31);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<CopyStream> stream, guarded->CreateCopyStream());
  stream->FromHost(host, 1 << 16, dev);
  ASSERT_OK(stream->Synchronize(absl::Now() + absl::Seconds(5)));
  std::vector<uint8_t> back(1 << 16);
  stream->ToHost(dev, back.size(), back.data());
  ASSERT_OK(stream->Synchronize(absl::Now() + absl::Seconds(5)));
  EXPECT_EQ(0, std::memcmp(back.data(), host, back.size()));
  guarded->FreePinnedHost(pinned);
  guarded->Free(dev);
}

}  // namespace
}  // namespace tandem::kernels
