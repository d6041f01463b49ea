#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace tandem::kernels {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Encodes `f` (rows x cols) as `type`; returns the bytes and the values the
// encoding actually represents (for the exact reference).
std::vector<uint8_t> Encode(const std::vector<float>& f, int64_t rows, int64_t cols, DType type,
                            std::vector<float>* represented) {
  std::vector<uint8_t> bytes(DTypeBytes(type, rows * cols));
  represented->resize(f.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      if (type == DType::kF32) {
        std::memcpy(&bytes[i * 4], &f[i], 4);
        (*represented)[i] = f[i];
      } else if (type == DType::kF16 || type == DType::kBF16) {
        const uint16_t h = type == DType::kF16 ? FloatToHalf(f[i]) : FloatToBF16(f[i]);
        std::memcpy(&bytes[i * 2], &h, 2);
        (*represented)[i] = type == DType::kF16 ? HalfToFloat(h) : BF16ToFloat(h);
      }
    }
    if (type == DType::kQ8_0) {
      for (int64_t b = 0; b < cols / 32; ++b) {
        float amax = 0;
        for (int k = 0; k < 32; ++k) amax = std::max(amax, std::abs(f[r * cols + b * 32 + k]));
        const uint16_t d = FloatToHalf(amax / 127.0f);
        uint8_t* blk = &bytes[(r * (cols / 32) + b) * 34];
        std::memcpy(blk, &d, 2);
        for (int k = 0; k < 32; ++k) {
          const float scale = HalfToFloat(d);
          const int8_t q =
              static_cast<int8_t>(std::lround(scale == 0 ? 0 : f[r * cols + b * 32 + k] / scale));
          blk[2 + k] = static_cast<uint8_t>(q);
          (*represented)[r * cols + b * 32 + k] = scale * q;
        }
      }
    }
  }
  return bytes;
}

class MatMulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatMulTest, MatchesDoubleReference) {
  std::mt19937 rng(1);
  auto backend = CreateCpuBackend({.num_threads = 2});
  // Sizes that are not multiples of the 8-lane width or the 16-row chunk.
  const int64_t rows = 5, out = 37, in = GetParam() == DType::kQ8_0 ? 96 : 77;
  std::vector<float> x = Random(rows * in, rng);
  std::vector<float> wf = Random(out * in, rng), wr;
  std::vector<uint8_t> wb = Encode(wf, out, in, GetParam(), &wr);
  Weight w{wb.data(), GetParam(), out, in};
  std::vector<float> y(rows * out, NAN);
  backend->MatMul(x.data(), rows, w, y.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0, tol = 1e-4;
      for (int64_t i = 0; i < in; ++i) ref += double{x[r * in + i]} * wr[o * in + i];
      // Q8_0 multiplies int8 activations (cpu/gemm.h), each within d_x / 2 of
      // x (d_x = max|x| / 127 per 32-block): error <= sum |w| d_x / 2.
      for (int64_t b = 0; GetParam() == DType::kQ8_0 && b < in / 32; ++b) {
        double amax = 0, wsum = 0;
        for (int k = 0; k < 32; ++k) amax = std::max(amax, double{std::abs(x[r * in + b * 32 + k])});
        for (int k = 0; k < 32; ++k) wsum += std::abs(wr[o * in + b * 32 + k]);
        tol += wsum * amax / 127 / 2 * 1.001;
      }
      // BF16 weights may meet activations rounded to BF16 (cpu/gemm.h, CPUs
      // with AVX512_BF16): each within 2^-9 relatively.
      for (int64_t i = 0; GetParam() == DType::kBF16 && i < in; ++i) {
        tol += std::abs(double{x[r * in + i]} * wr[o * in + i]) * 0x1p-8;
      }
      EXPECT_NEAR(y[r * out + o], ref, tol) << "row " << r << " out " << o;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0));

TEST(CpuBackendTest, MatMulIsBatchAndThreadInvariant) {
  std::mt19937 rng(2);
  const int64_t in = 131, out = 300;
  std::vector<float> w = Random(out * in, rng);
  Weight weight{w.data(), DType::kF32, out, in};
  std::vector<float> x = Random(64 * in, rng);
  auto one = CreateCpuBackend({.num_threads = 1});
  auto many = CreateCpuBackend({.num_threads = 4});
  std::vector<float> alone(out), batched(64 * out);
  many->MatMul(x.data(), 64, weight, batched.data());
  for (int64_t r = 0; r < 64; r += 9) {
    one->MatMul(x.data() + r * in, 1, weight, alone.data());
    // Bit-identical, not merely close.
    EXPECT_EQ(std::memcmp(alone.data(), batched.data() + r * out, out * sizeof(float)), 0) << r;
  }
}

TEST(CpuBackendTest, RmsNorm) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  std::vector<float> x = {1, 2, 3, 4, -1, -2, -3, -4};
  std::vector<float> g = {1, 1, 2, 2};
  std::vector<float> y(8);
  backend->RmsNorm(x.data(), 2, Weight{g.data(), DType::kF32, 1, 4}, 1e-5f, y.data());
  const double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5);
  EXPECT_NEAR(y[0], 1 / rms, 1e-6);
  EXPECT_NEAR(y[3], 2 * 4 / rms, 1e-6);
  EXPECT_NEAR(y[6], 2 * -3 / rms, 1e-6);
}

TEST(CpuBackendTest, RopeRotatesPairsByPosition) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  // One head of dim 4, positions 0 and 3.
  std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};
  std::vector<int32_t> pos = {0, 3};
  std::vector<float> normal = x, neox = x;
  backend->Rope(normal.data(), 2, 1, 4, 4, pos, 10000.0f, RopeStyle::kNormal);
  backend->Rope(neox.data(), 2, 1, 4, 4, pos, 10000.0f, RopeStyle::kNeox);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(normal[i], x[i]);  // position 0: identity
  const double t0 = 3.0, t1 = 3.0 / 100.0;                       // theta_i = pos * 10000^(-2i/4)
  EXPECT_NEAR(normal[4], 1 * std::cos(t0) - 2 * std::sin(t0), 1e-5);
  EXPECT_NEAR(normal[5], 1 * std::sin(t0) + 2 * std::cos(t0), 1e-5);
  EXPECT_NEAR(normal[6], 3 * std::cos(t1) - 4 * std::sin(t1), 1e-5);
  EXPECT_NEAR(neox[4], 1 * std::cos(t0) - 3 * std::sin(t0), 1e-5);
  EXPECT_NEAR(neox[6], 1 * std::sin(t0) + 3 * std::cos(t0), 1e-5);
  EXPECT_NEAR(neox[5], 2 * std::cos(t1) - 4 * std::sin(t1), 1e-5);
}

TEST(CpuBackendTest, RopeWithUnitFreqFactorsEqualsRopeBitForBit) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1, 1);
  // 3 rows of 2 heads of head_dim 16 (rope over the first 12), far positions.
  constexpr int32_t kRows = 3, kHeads = 2, kHeadDim = 16, kRopeDims = 12;
  std::vector<float> x(kRows * kHeads * kHeadDim);
  for (float& v : x) v = dist(rng);
  const std::vector<int32_t> pos = {0, 17, 100003};
  const std::vector<float> ones(kRopeDims / 2, 1.0f);
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    std::vector<float> want = x, got = x;
    backend->Rope(want.data(), kRows, kHeads, kHeadDim, kRopeDims, pos, 500000.0f, style);
    ASSERT_TRUE(backend->RopeWithFreqFactors(got.data(), kRows, kHeads, kHeadDim, kRopeDims, pos, 500000.0f,
                                             ones, style));
    ASSERT_NE(want, x);
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));
  }
}

// The backend keeps each position's angles between calls: a second rotation
// after calls with another base, other factors and other dims gives what a
// fresh backend gives, bit for bit.
TEST(CpuBackendTest, RopeAnglesKeptAcrossCallsChangeNothing) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<float> x(4 * 2 * 16);
  for (float& v : x) v = dist(rng);
  const std::vector<int32_t> pos = {5, 0, 4097, 5};
  const std::vector<float> factors(6, 3.0f);
  std::vector<float> first = x, again = x, fresh = x, other = x;
  backend->Rope(first.data(), 4, 2, 16, 12, pos, 10000.0f, RopeStyle::kNormal);
  backend->Rope(other.data(), 4, 2, 16, 12, pos, 500000.0f, RopeStyle::kNormal);
  ASSERT_TRUE(
      backend->RopeWithFreqFactors(other.data(), 4, 2, 16, 12, pos, 10000.0f, factors, RopeStyle::kNeox));
  backend->Rope(other.data(), 4, 2, 16, 16, pos, 10000.0f, RopeStyle::kNormal);
  backend->Rope(again.data(), 4, 2, 16, 12, pos, 10000.0f, RopeStyle::kNormal);
  CreateCpuBackend({.num_threads = 1})->Rope(fresh.data(), 4, 2, 16, 12, pos, 10000.0f, RopeStyle::kNormal);
  ASSERT_NE(first, x);
  EXPECT_NE(first, other);
  EXPECT_EQ(0, std::memcmp(first.data(), again.data(), x.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(first.data(), fresh.data(), x.size() * sizeof(float)));
}

TEST(CpuBackendTest, RopeWithFreqFactorsDividesEachPairsAngle) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  // One head of dim 8; pair i's angle is pos * 100^(-2i/8) / factors[i].
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> pos = {5};
  const std::vector<float> factors = {1.0f, 8.0f, 2.5f, 0.5f};
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    std::vector<float> got = x;
    ASSERT_TRUE(backend->RopeWithFreqFactors(got.data(), 1, 1, 8, 8, pos, 100.0f, factors, style));
    for (int i = 0; i < 4; ++i) {
      const double theta = 5.0 * std::pow(100.0, -2.0 * i / 8) / factors[i];
      const int a = style == RopeStyle::kNormal ? 2 * i : i;
      const int b = style == RopeStyle::kNormal ? 2 * i + 1 : i + 4;
      EXPECT_NEAR(got[a], x[a] * std::cos(theta) - x[b] * std::sin(theta), 1e-5) << i;
      EXPECT_NEAR(got[b], x[a] * std::sin(theta) + x[b] * std::cos(theta), 1e-5) << i;
    }
  }
}

TEST(CpuBackendTest, PagedAttentionMatchesContiguousReference) {
  std::mt19937 rng(3);
  auto backend = CreateCpuBackend({.num_threads = 2});
  KvLayout layout{2, 2, 8, 4};  // 2 layers, 2 KV heads, head_dim 8, 4 tokens/block
  const int32_t num_heads = 4, layer = 1, ctx = 11, queries = 3;
  KvCacheView kv{nullptr, layout, 8};
  std::vector<float> pool(kv.num_blocks * layout.BlockElements(), NAN);
  kv.base = pool.data();
  std::vector<int32_t> table = {5, 2, 7};  // scattered blocks
  const int64_t kv_dim = layout.TokenStride();
  std::vector<float> k = Random(ctx * kv_dim, rng), v = Random(ctx * kv_dim, rng);
  std::vector<int32_t> slots(ctx);
  for (int32_t p = 0; p < ctx; ++p) slots[p] = table[p / 4] * 4 + p % 4;
  // Layer 0 is never written; NaN there would poison a wrong read.
  backend->WriteKv(kv, layer, k.data(), v.data(), slots);
  std::vector<float> q = Random(queries * num_heads * 8, rng);
  AttentionSequence seq{0, queries, ctx, table};
  std::vector<float> out(queries * num_heads * 8);
  const float scale = 1 / std::sqrt(8.0f);
  backend->PagedAttention(q.data(), kv, layer, num_heads, {&seq, 1}, scale, out.data());
  for (int32_t j = 0; j < queries; ++j) {
    const int32_t pos = ctx - queries + j;
    for (int32_t h = 0; h < num_heads; ++h) {
      const int32_t kh = h / 2;
      std::vector<double> s(pos + 1);
      double mx = -1e300, sum = 0;
      for (int32_t p = 0; p <= pos; ++p) {
        double d = 0;
        for (int i = 0; i < 8; ++i) d += double{q[(j * num_heads + h) * 8 + i]} * k[p * kv_dim + kh * 8 + i];
        s[p] = d * scale;
        mx = std::max(mx, s[p]);
      }
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int i = 0; i < 8; ++i) {
        double ref = 0;
        for (int32_t p = 0; p <= pos; ++p) ref += s[p] / sum * v[p * kv_dim + kh * 8 + i];
        EXPECT_NEAR(out[(j * num_heads + h) * 8 + i], ref, 1e-5);
      }
    }
  }
}

TEST(CpuBackendTest, EmbedDequantizesRows) {
  std::mt19937 rng(4);
  auto backend = CreateCpuBackend({.num_threads = 1});
  std::vector<float> table = Random(10 * 64, rng), represented;
  std::vector<uint8_t> q8 = Encode(table, 10, 64, DType::kQ8_0, &represented);
  std::vector<int32_t> ids = {7, 0, 7};
  std::vector<float> out(3 * 64);
  backend->Embed(Weight{q8.data(), DType::kQ8_0, 10, 64}, ids, out.data());
  for (int i = 0; i < 64; ++i) {
    EXPECT_FLOAT_EQ(out[i], represented[7 * 64 + i]);
    EXPECT_FLOAT_EQ(out[64 + i], represented[i]);
  }
}

TEST(CpuBackendTest, SwiGluAndAdd) {
  auto backend = CreateCpuBackend({.num_threads = 1});
  std::vector<float> g = {0, 1, -2}, u = {3, 4, 5}, o(3);
  backend->SwiGlu(g.data(), u.data(), 3, o.data());
  EXPECT_FLOAT_EQ(o[0], 0);
  EXPECT_NEAR(o[1], 1 / (1 + std::exp(-1.0)) * 4, 1e-6);
  EXPECT_NEAR(o[2], -2 / (1 + std::exp(2.0)) * 5, 1e-6);
  backend->Add(o.data(), u.data(), 3);
  EXPECT_NEAR(o[1], 1 / (1 + std::exp(-1.0)) * 4 + 4, 1e-6);
}

}  // namespace
}  // namespace tandem::kernels
