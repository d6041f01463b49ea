// KV caches stored as BF16 or F16 (kv_layout.h): WriteKv rounds to the
// storage type, PagedAttention reads it back widened, and attention over a
// BF16/F16 cache stays within the storage type's precision of the F32 one.
#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace tandem::kernels {
namespace {

struct Case {
  DType dtype;
  uint16_t (*round)(float);
  float (*widen)(uint16_t);
  double tolerance;  // |attention(dtype) - attention(F32)|, outputs in [-1, 1]
};

class KvDTypeTest : public ::testing::TestWithParam<Case> {};

TEST_P(KvDTypeTest, AttentionOverARoundedCacheStaysClose) {
  const Case c = GetParam();
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1, 1);
  auto cpu = CreateCpuBackend({.num_threads = 2});
  const int32_t layers = 2, kv_heads = 2, head_dim = 32, block = 4, heads = 4, ctx = 13, layer = 1;
  const KvLayout f32{layers, kv_heads, head_dim, block, DType::kF32};
  KvLayout narrow = f32;
  narrow.dtype = c.dtype;
  EXPECT_EQ(narrow.BlockBytes() * 2, f32.BlockBytes());
  const std::vector<int32_t> table = {6, 0, 3, 5};
  std::vector<int32_t> slots(ctx);
  for (int32_t p = 0; p < ctx; ++p) slots[p] = table[p / block] * block + p % block;
  std::vector<float> k(ctx * f32.TokenStride()), v(k.size()), q(3 * heads * head_dim);
  for (auto* vec : {&k, &v, &q}) {
    for (float& x : *vec) x = dist(rng);
  }
  std::vector<uint8_t> pool32(8 * f32.BlockBytes()), pool16(8 * narrow.BlockBytes());
  const KvCacheView kv32{pool32.data(), f32, 8}, kv16{pool16.data(), narrow, 8};
  cpu->WriteKv(kv32, layer, k.data(), v.data(), slots);
  cpu->WriteKv(kv16, layer, k.data(), v.data(), slots);
  // Stored values are the round-to-nearest-even conversions.
  for (int32_t p = 0; p < ctx; ++p) {
    const auto* stored =
        reinterpret_cast<const uint16_t*>(kv16.Block(table[p / block])) + narrow.Offset(layer, 1, p % block);
    for (int64_t i = 0; i < f32.TokenStride(); ++i) {
      ASSERT_EQ(stored[i], c.round(v[p * f32.TokenStride() + i])) << "position " << p << " element " << i;
    }
  }
  const AttentionSequence seq{0, 3, ctx, table};
  std::vector<float> want(q.size()), got(q.size());
  cpu->PagedAttention(q.data(), kv32, layer, heads, {&seq, 1}, 0.18f, want.data());
  cpu->PagedAttention(q.data(), kv16, layer, heads, {&seq, 1}, 0.18f, got.data());
  double max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) max_err = std::max(max_err, std::abs(double{got[i]} - want[i]));
  EXPECT_LE(max_err, c.tolerance);
  EXPECT_GT(max_err, 0) << "the narrow cache should not be exact";
}

INSTANTIATE_TEST_SUITE_P(DTypes, KvDTypeTest,
                         ::testing::Values(Case{DType::kBF16, FloatToBF16, BF16ToFloat, 2e-2},
                                           Case{DType::kF16, FloatToHalf, HalfToFloat, 2e-3}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(DTypeName(info.param.dtype));
                         });

}  // namespace
}  // namespace tandem::kernels
