// The CPU GEMM paths (gemm.h): each against a double-precision reference
// within a stated bound, the AVX2 path against the scalar one, and bit-exact
// batch and thread invariance for every weight type.
#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/elementwise.h"
#include "tests/testing/weight_encoding.h"

namespace tandem::kernels::cpu {
namespace {

using ::tandem::testing::Encode;

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<GemmPath> Paths() { return SupportedGemmPaths(); }

// Every path on `w` as it is, and each path that packs `w` (gemm.h
// PackedWeight) on its packed copy too.
std::vector<std::pair<GemmPath, std::shared_ptr<PackedWeight>>> Variants(const Weight& w) {
  std::vector<std::pair<GemmPath, std::shared_ptr<PackedWeight>>> v;
  for (GemmPath path : Paths()) {
    v.emplace_back(path, nullptr);
    std::shared_ptr<PackedWeight> packed = PackWeight(path, nullptr, w);
    if (packed != nullptr) v.emplace_back(path, std::move(packed));
  }
  return v;
}

std::string Name(GemmPath path, const PackedWeight* packed) {
  return std::string(GemmPathName(path)) + (packed != nullptr ? " packed" : "");
}

// A row length for `type`: `blocked` (a multiple of 32) rounded up to Q4_K's
// 256 for Q4_K, `plain` for unquantized types.
int64_t Cols(DType type, int64_t blocked, int64_t plain) {
  if (!IsBlockQuantized(type)) return plain;
  const int64_t b = BlockElements(type);
  return (blocked + b - 1) / b * b;
}

struct Problem {
  int64_t rows, out, in;
  std::vector<float> x, wr;  // wr: the weight values the encoding represents
  std::vector<uint8_t> wb;
  Weight w;
};

Problem MakeProblem(DType type, int64_t rows, int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p{rows, out, in, Random(rows * in, rng), {}, {}, {}};
  p.wb = Encode(Random(out * in, rng), out, in, type, &p.wr);
  p.w = Weight{p.wb.data(), type, out, in};
  return p;
}

// Bound on |dot(x, w) - dot(int8(x), w)| for activations quantized per
// 32-block: each int8 value is within d_x / 2 of the real one (d_x = max|x| /
// 127 over its block), so the error is at most sum_i |w_i| d_x(i) / 2.
double Int8ActivationBound(const float* x, const float* w, int64_t n) {
  double bound = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int k = 0; k < 32; ++k) {
      amax = std::max(amax, double{std::abs(x[b * 32 + k])});
      wsum += std::abs(w[b * 32 + k]);
    }
    bound += wsum * amax / 127 / 2 * 1.001;
  }
  return bound;
}

// Bound on |dot(x, w) - dot(bf16(x), w)| for BF16 weights on the AVX-512
// path, which rounds activations to BF16 where the CPU has AVX512_BF16
// (gemm.h): each is within 2^-9 of itself relatively, so 2^-9 sum|x w|, and
// twice that for the accumulation's float rounding.
double Bf16ActivationBound(GemmPath path, DType type, const float* x, const float* w, int64_t n) {
  if (type != DType::kBF16 || path != GemmPath::kAvx512) return 0;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::abs(double{x[i]} * w[i]);
  return sum * 0x1p-8;
}

class GemmTest : public ::testing::TestWithParam<DType> {};

// Both paths within 1e-4 of the double reference on the weights the encoding
// represents, i.e. dequantize-then-F32 (K <= 200 terms of magnitude <= 1:
// float rounding stays far below that), plus, for Q8_0 and Q4_0 on the vector
// paths, the int8 activations' bound.
TEST_P(GemmTest, MatchesDoubleReferenceOnEveryPath) {
  const DType type = GetParam();
  // Sizes that are not multiples of the tile (4 x 3, 2 x 4), the 8-lane width
  // or the 16/64-row chunks.
  Problem p = MakeProblem(type, 7, 37, Cols(type, 160, 77), 1);
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  for (auto [path, packed] : Variants(p.w)) {
    SCOPED_TRACE(Name(path, packed.get()));
    std::vector<float> y(p.rows * p.out, NAN);
    MatMul(path, &pool, p.x.data(), p.rows, p.w, y.data(), packed.get());
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* xr = &p.x[r * p.in];
      for (int64_t o = 0; o < p.out; ++o) {
        double ref = 0, bound = 1e-4;
        for (int64_t i = 0; i < p.in; ++i) ref += double{xr[i]} * p.wr[o * p.in + i];
        if (IsBlockQuantized(type) && path != GemmPath::kScalar) {
          bound += Int8ActivationBound(xr, &p.wr[o * p.in], p.in);
        }
        bound += Bf16ActivationBound(path, type, xr, &p.wr[o * p.in], p.in);
        EXPECT_NEAR(y[r * p.out + o], ref, bound) << "row " << r << " out " << o;
      }
    }
  }
}

// Each vector path against the scalar (pre-AVX2) one: float weights agree to
// float rounding of a 131-term sum (FMA vs multiply-then-add, other lane
// orders); Q8_0 within the int8 activations' bound.
TEST_P(GemmTest, VectorPathsAgreeWithScalar) {
  if (Paths().size() == 1) GTEST_SKIP() << "no AVX2+FMA+F16C on this CPU";
  const DType type = GetParam();
  Problem p = MakeProblem(type, 9, 50, Cols(type, 256, 131), 5);
  std::vector<float> scalar(p.rows * p.out), vec(p.rows * p.out);
  MatMul(GemmPath::kScalar, nullptr, p.x.data(), p.rows, p.w, scalar.data());
  for (GemmPath path : Paths()) {
    if (path == GemmPath::kScalar) continue;
    SCOPED_TRACE(GemmPathName(path));
    MatMul(path, nullptr, p.x.data(), p.rows, p.w, vec.data());
    int differ = 0;
    for (int64_t r = 0; r < p.rows; ++r) {
      for (int64_t o = 0; o < p.out; ++o) {
        const int64_t i = r * p.out + o;
        const double tol =
            (IsBlockQuantized(type) ? Int8ActivationBound(&p.x[r * p.in], &p.wr[o * p.in], p.in) + 1e-4
                                    : 2e-5) +
            Bf16ActivationBound(path, type, &p.x[r * p.in], &p.wr[o * p.in], p.in);
        EXPECT_NEAR(vec[i], scalar[i], tol) << i;
        differ += vec[i] != scalar[i];
      }
    }
    // Guards against the test comparing a path with itself (Q4_K on AVX2
    // is the scalar loops: equal).
    if (type == DType::kQ4_K && path == GemmPath::kAvx2) {
      EXPECT_EQ(differ, 0);
    } else {
      EXPECT_GT(differ, 0);
    }
  }
}

// Bit-identical results for a token alone (1 thread) and at every position
// of batches of 2, 3, 5, 13 and 64 (2 threads): the contract of backend.h.
TEST_P(GemmTest, BatchAndThreadInvariantOnEveryPath) {
  const DType type = GetParam();
  Problem p = MakeProblem(type, 64, 300, Cols(type, 256, 131), 2);
  ThreadPool one(ThreadPool::Options{.num_threads = 1});
  ThreadPool two(ThreadPool::Options{.num_threads = 2});
  for (auto [path, packed] : Variants(p.w)) {
    SCOPED_TRACE(Name(path, packed.get()));
    std::vector<std::vector<float>> alone(p.rows, std::vector<float>(p.out));
    for (int64_t r = 0; r < p.rows; ++r) {
      MatMul(path, &one, &p.x[r * p.in], 1, p.w, alone[r].data(), packed.get());
    }
    for (int64_t batch : {2, 3, 5, 13, 64}) {
      std::vector<float> y(batch * p.out);
      for (int64_t start = 0; start + batch <= p.rows; start += batch) {
        MatMul(path, &two, &p.x[start * p.in], batch, p.w, y.data(), packed.get());
        for (int64_t r = 0; r < batch; ++r) {
          ASSERT_EQ(std::memcmp(alone[start + r].data(), &y[r * p.out], p.out * sizeof(float)), 0)
              << "batch " << batch << " row " << start + r;
        }
      }
    }
  }
}

// Long rows (K = 8192): the AVX-512 float tiles then pass over fewer tokens
// at a time (12 F32, 30 BF16) so their activations stay in L2; a batch of 40
// spans several passes and must still equal each token alone.
TEST(GemmLongRowsTest, BatchInvariantAcrossTokenPasses) {
  for (DType type : {DType::kF16, DType::kBF16, DType::kF32}) {
    Problem p = MakeProblem(type, 40, 40, 8192, 31);
    ThreadPool two(ThreadPool::Options{.num_threads = 2});
    for (auto [path, packed] : Variants(p.w)) {
      std::vector<float> batched(p.rows * p.out), alone(p.out);
      MatMul(path, &two, p.x.data(), p.rows, p.w, batched.data(), packed.get());
      for (int64_t r = 0; r < p.rows; ++r) {
        MatMul(path, nullptr, &p.x[r * p.in], 1, p.w, alone.data(), packed.get());
        ASSERT_EQ(0, std::memcmp(alone.data(), &batched[r * p.out], p.out * sizeof(float)))
            << DTypeName(type) << " " << Name(path, packed.get()) << " row " << r;
      }
    }
  }
}

// The same through the CPU backend's MatMul (what the model calls): a token
// alone on 1 thread equals it inside a batch of 64 on 2 threads, bit for bit.
TEST_P(GemmTest, BackendMatMulBatchAndThreadInvariant) {
  Problem p = MakeProblem(GetParam(), 64, 200, Cols(GetParam(), 320, 136), 11);
  auto one = CreateCpuBackend({.num_threads = 1});
  auto two = CreateCpuBackend({.num_threads = 2});
  // Prepared as the model prepares its weights (Q4_0 is packed there).
  absl::StatusOr<Weight> w1 = one->PrepareWeight(p.w), w2 = two->PrepareWeight(p.w);
  ASSERT_TRUE(w1.ok() && w2.ok());
  std::vector<float> batched(p.rows * p.out), alone(p.out);
  two->MatMul(p.x.data(), p.rows, *w2, batched.data());
  for (int64_t r = 0; r < p.rows; r += 7) {
    one->MatMul(&p.x[r * p.in], 1, *w1, alone.data());
    EXPECT_EQ(std::memcmp(alone.data(), &batched[r * p.out], p.out * sizeof(float)), 0) << r;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GemmTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                                           DType::kQ4_K),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// DequantizeRow (common/dtype.h, the reference every backend shares) gives
// exactly the values the Q4_0 encoder meant, nibble order included.
TEST(GemmQ4Test, DequantizeRowMatchesEncoding) {
  std::mt19937 rng(9);
  std::vector<float> represented, row(96);
  const std::vector<uint8_t> bytes = Encode(Random(2 * 96, rng), 2, 96, DType::kQ4_0, &represented);
  for (int r = 0; r < 2; ++r) {
    DequantizeRow(DType::kQ4_0, bytes.data() + r * DTypeBytes(DType::kQ4_0, 96), 96, row.data());
    for (int i = 0; i < 96; ++i) ASSERT_EQ(row[i], represented[r * 96 + i]) << r << " " << i;
  }
  // GGML's rule puts the block's largest magnitude at q = 0 exactly: -8 d.
  EXPECT_NE(
      std::count(represented.begin(), represented.begin() + 32, -8 * HalfToFloat(bytes[0] | bytes[1] << 8)),
      0);
}

// The same for Q4_K: DequantizeRow reads every scale and min (6 bits, both
// packings: sub-blocks 0-3 and 4-7) and nibble where the encoder put them.
TEST(GemmQ4KTest, DequantizeRowMatchesEncoding) {
  std::mt19937 rng(10);
  std::vector<float> f = Random(2 * 512, rng), represented, row(512);
  for (int i = 0; i < 64; ++i) f[300 + i] *= 0.05f;  // small sub-blocks: scales and mins < 16 too
  const std::vector<uint8_t> bytes = Encode(f, 2, 512, DType::kQ4_K, &represented);
  for (int r = 0; r < 2; ++r) {
    DequantizeRow(DType::kQ4_K, bytes.data() + r * DTypeBytes(DType::kQ4_K, 512), 512, row.data());
    for (int i = 0; i < 512; ++i) ASSERT_EQ(row[i], represented[r * 512 + i]) << r << " " << i;
  }
  // The encoding is close to what it encodes (a bad packing would not be).
  for (size_t i = 0; i < f.size(); ++i) ASSERT_NEAR(represented[i], f[i], 0.1) << i;
}

// Q4_0 weights compute exactly as Q8_0 weights holding the same values (the
// same scales, q - 8 as int8) on every path, bit for bit: Q4_0's integer
// products are the Q8_0 tiles' (AVX-512 reaches them through unsigned nibbles
// minus 8 x the activation sums).
TEST(GemmQ4Test, BitIdenticalToQ8_0WithTheSameValues) {
  Problem p = MakeProblem(DType::kQ4_0, 13, 70, 320, 21);  // 10 blocks: pairs; 9 would leave one alone
  Problem odd = MakeProblem(DType::kQ4_0, 5, 9, 288, 22);  // 9 blocks
  for (Problem* pr : {&p, &odd}) {
    std::vector<uint8_t> q8(DTypeBytes(DType::kQ8_0, pr->out * pr->in));
    for (int64_t b = 0; b < pr->out * pr->in / 32; ++b) {
      const uint8_t* src = &pr->wb[b * 18];
      uint8_t* dst = &q8[b * 34];
      std::memcpy(dst, src, 2);
      for (int k = 0; k < 16; ++k) {
        dst[2 + k] = static_cast<uint8_t>(static_cast<int8_t>((src[2 + k] & 0x0F) - 8));
        dst[18 + k] = static_cast<uint8_t>(static_cast<int8_t>((src[2 + k] >> 4) - 8));
      }
    }
    const Weight w8{q8.data(), DType::kQ8_0, pr->out, pr->in};
    for (GemmPath path : Paths()) {
      std::vector<float> y4(pr->rows * pr->out), y8(pr->rows * pr->out);
      MatMul(path, nullptr, pr->x.data(), pr->rows, pr->w, y4.data());
      MatMul(path, nullptr, pr->x.data(), pr->rows, w8, y8.data());
      EXPECT_EQ(0, std::memcmp(y4.data(), y8.data(), y4.size() * sizeof(float))) << GemmPathName(path);
    }
  }
}

// The backend packs Q4_0 where its path has a packed layout and MatMul then
// runs the packed kernels: a prepared weight gives the packed bits, which
// are not the unpacked kernels' (one lane per output, no horizontal combine).
TEST(GemmQ4Test, BackendRunsThePackedCopy) {
  const GemmPath path = DefaultGemmPath();
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  Problem p = MakeProblem(DType::kQ4_0, 5, 40, 320, 23);
  const std::unique_ptr<PackedWeight> packed = PackWeight(path, &pool, p.w);
  if (packed == nullptr) GTEST_SKIP() << GemmPathName(path) << " does not pack Q4_0";
  std::vector<float> want(p.rows * p.out), plain(p.rows * p.out), got(p.rows * p.out);
  MatMul(path, &pool, p.x.data(), p.rows, p.w, want.data(), packed.get());
  MatMul(path, &pool, p.x.data(), p.rows, p.w, plain.data());
  EXPECT_NE(0, std::memcmp(want.data(), plain.data(), want.size() * sizeof(float)));
  auto backend = CreateCpuBackend({.num_threads = 2});
  absl::StatusOr<Weight> w = backend->PrepareWeight(p.w);
  ASSERT_TRUE(w.ok()) << w.status();
  backend->MatMul(p.x.data(), p.rows, *w, got.data());
  EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));
  // A view of the same data as another shape is not the packed weight.
  backend->MatMul(p.x.data(), p.rows, Weight{p.w.data, DType::kQ4_0, 16, p.in}, got.data());
  EXPECT_EQ(0, std::memcmp(plain.data(), got.data(), 16 * sizeof(float)));
}

// Q8_0 weights holding -128 (not produced by GGML's quantizer but legal in a
// file): the unsigned absolute value keeps the integer product exact.
TEST(GemmQ8Test, WeightOfMinus128) {
  std::vector<uint8_t> w(34, 0);
  const uint16_t one = FloatToHalf(1.0f);
  std::memcpy(w.data(), &one, 2);
  w[2] = 0x80;  // -128
  w[3] = 0x7f;  // 127
  std::vector<float> x(32, 0.0f);
  x[0] = -1.0f;
  x[1] = 1.0f;
  float y = 0;
  const Weight weight{w.data(), DType::kQ8_0, 1, 32};
  for (auto [path, packed] : Variants(weight)) {  // packed: -128 is the unsigned 0
    MatMul(path, nullptr, x.data(), 1, weight, &y, packed.get());
    EXPECT_FLOAT_EQ(y, 128.0f + 127.0f) << Name(path, packed.get());
  }
}

// SwiGlu's vector path: within 4 ulp-ish (1e-6 relative) of the scalar
// std::exp one over a wide range, and each element bit-identical whether it
// falls in the vector body or the padded tail (n = 1 vs n = 13).
TEST(ElementwiseTest, SwiGluVectorPathMatchesScalarAndIgnoresPosition) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> d(-30.0f, 30.0f);
  const int64_t n = 1013;
  std::vector<float> g(n), u(n);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = d(rng);
    u[i] = d(rng);
  }
  g[0] = 0.0f;
  g[1] = -100.0f;  // exp(100): inf in the denominator, silu -> -0
  g[2] = 100.0f;
  std::vector<float> scalar(n), vec(n);
  SwiGlu(GemmPath::kScalar, g.data(), u.data(), n, scalar.data());
  for (GemmPath path : Paths()) {
    if (path == GemmPath::kScalar) continue;
    SwiGlu(path, g.data(), u.data(), n, vec.data());
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(vec[i], scalar[i], 1e-6 * std::abs(scalar[i]) + 1e-30) << i << " g " << g[i];
    }
    for (int64_t start : {0, 5, 1000}) {
      for (int64_t len : {1, 13}) {
        std::vector<float> part(len);
        SwiGlu(path, &g[start], &u[start], len, part.data());
        EXPECT_EQ(std::memcmp(part.data(), &vec[start], len * sizeof(float)), 0) << start << " " << len;
      }
    }
  }
}

// The KV cache's conversions: every path gives FloatToHalf's and
// FloatToBF16's bits, for a sweep of all 2^32 bit patterns (stride 97:
// normals, subnormals, ties, overflow, infinities, NaNs) and every length
// (the scalar tail).
TEST(ElementwiseTest, FloatsToHalfAndBf16MatchScalarRounding) {
  std::vector<float> x;
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 97) {
    const uint32_t bits = static_cast<uint32_t>(b);
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  for (uint32_t bits : {0x477ff000u, 0x477fefffu, 0x33000000u, 0x33000001u, 0x38800000u, 0x387fffffu,
                        0x3f808000u, 0x3f818000u, 0x7f800001u, 0xffc00000u, 0x7f7fffffu}) {
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);  // ties, the boundaries FloatToHalf names, NaNs
  }
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> half(n), bf16(n);
  for (GemmPath path : Paths()) {
    FloatsToHalf(path, x.data(), n, half.data());
    FloatsToBf16(path, x.data(), n, bf16.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(half[i], FloatToHalf(x[i])) << GemmPathName(path) << " " << x[i];
      ASSERT_EQ(bf16[i], FloatToBF16(x[i])) << GemmPathName(path) << " " << x[i];
    }
    for (int64_t len = 1; len <= 17; ++len) {
      FloatsToHalf(path, x.data() + 3, len, half.data());
      for (int64_t i = 0; i < len; ++i) ASSERT_EQ(half[i], FloatToHalf(x[3 + i])) << len;
    }
  }
}

// Not a check: GFLOP/s of each path on a Llama-110M-shaped projection, for
// tuning (--gtest_also_run_disabled_tests --gtest_filter=*Throughput*).
TEST(GemmBench, DISABLED_Throughput) {
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    for (int64_t rows : {1, 512}) {
      // Decode: 8192 x 4096 weights (32-64 MiB) stream from DRAM, as a model's do.
      Problem p = rows == 1 ? MakeProblem(type, 1, 8192, 4096, 3) : MakeProblem(type, rows, 2048, 768, 3);
      std::vector<float> y(rows * p.out);
      for (GemmPath path : Paths()) {
        double best = 1e30;
        for (int rep = 0; rep < 5; ++rep) {
          const auto t0 = std::chrono::steady_clock::now();
          const int iters = rows == 1 ? 20 : 2;
          for (int it = 0; it < iters; ++it) MatMul(path, &pool, p.x.data(), rows, p.w, y.data());
          best = std::min(
              best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters);
        }
        std::printf("type %d rows %3lld %-14s %8.2f GFLOP/s %8.2f GB/s weights\n", static_cast<int>(type),
                    static_cast<long long>(rows), GemmPathName(path), 2.0 * rows * p.out * p.in / best / 1e9,
                    p.wb.size() / best / 1e9);
      }
    }
  }
}

// TANDEM_GEMM_BENCH_SHAPE=1b: the benchmarks below take the llama-1b
// shape's matrices (bench/make_peer_gguf.py) instead of 110m's.
// TANDEM_GEMM_BENCH_TYPE=F16 (a DTypeName): only that weight type.
bool Bench1b() {
  const char* v = std::getenv("TANDEM_GEMM_BENCH_SHAPE");
  return v != nullptr && std::string(v) == "1b";
}

// TANDEM_GEMM_BENCH_TOKENS=16: DecodeModelShapes decodes a batch of 16.
int64_t BenchTokens() {
  const char* v = std::getenv("TANDEM_GEMM_BENCH_TOKENS");
  return v == nullptr ? 1 : std::max<int64_t>(1, std::atoll(v));
}

bool BenchSkips(DType type) {
  const char* v = std::getenv("TANDEM_GEMM_BENCH_TYPE");
  return v != nullptr && std::string(v) != DTypeName(type);
}

std::vector<std::pair<int64_t, int64_t>> PrefillShapes() {
  if (Bench1b()) return {{2048, 2048}, {512, 2048}, {8192, 2048}, {2048, 8192}};
  return {{768, 768}, {2048, 768}, {768, 2048}};
}

// One decode step's matmuls, out x in, in the model's order (110m: 12
// layers of 768 x 768 x 4, 2048 x 768 x 2, 768 x 2048; 1b: 16 layers of
// q, k, v, o, gate, up, down with 8 KV heads).
std::vector<std::pair<int64_t, int64_t>> DecodeShapes() {
  std::vector<std::pair<int64_t, int64_t>> layer = {{768, 768},  {768, 768},  {768, 768}, {768, 768},
                                                    {2048, 768}, {2048, 768}, {768, 2048}};
  int layers = 12;
  if (Bench1b()) {
    layer = {{2048, 2048}, {512, 2048}, {512, 2048}, {2048, 2048}, {8192, 2048}, {8192, 2048}, {2048, 8192}};
    layers = 16;
  }
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int l = 0; l < layers; ++l) shapes.insert(shapes.end(), layer.begin(), layer.end());
  return shapes;
}

// The 110m model's prefill shapes (out x in, 512 tokens): where a prefill's
// time goes, per weight type, on the fastest path.
TEST(GemmBench, DISABLED_ModelShapes) {
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  const GemmPath path = DefaultGemmPath();
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K}) {
    if (BenchSkips(type)) continue;
    for (auto [out, in] : PrefillShapes()) {
      const int64_t rows = 512;
      Problem p = MakeProblem(type, rows, out, in, 3);
      const std::unique_ptr<PackedWeight> packed = PackWeight(path, &pool, p.w);
      std::vector<float> y(rows * p.out);
      double best = 1e30;
      for (int rep = 0; rep < 5; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        MatMul(path, &pool, p.x.data(), rows, p.w, y.data(), packed.get());
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-5s %5lld x %5lld %-12s %8.2f GFLOP/s %8.3f ms\n", std::string(DTypeName(type)).c_str(),
                  static_cast<long long>(out), static_cast<long long>(in), GemmPathName(path),
                  2.0 * rows * out * in / best / 1e9, best * 1e3);
    }
  }
}

// One decode step's matmuls of the 110m model (12 layers of 768 x 768 x 4,
// 2048 x 768 x 2, 768 x 2048; 170 MB of F16, so from DRAM), one token, as
// the model issues them: GB/s of weights.
TEST(GemmBench, DISABLED_DecodeModelShapes) {
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  const GemmPath path = DefaultGemmPath();
  for (DType type : {DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K}) {
    if (BenchSkips(type)) continue;
    const std::vector<std::pair<int64_t, int64_t>> shapes = DecodeShapes();
    std::mt19937 rng(4);
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<Weight> ws;
    std::vector<std::unique_ptr<PackedWeight>> packed;
    size_t total = 0;
    for (auto [out, in] : shapes) {
      std::vector<float> unused;
      bytes.push_back(Encode(Random(out * in, rng), out, in, type, &unused));
      ws.push_back(Weight{bytes.back().data(), type, out, in});
      packed.push_back(PackWeight(path, &pool, ws.back()));
      total += bytes.back().size();
    }
    const int64_t tokens = BenchTokens();
    std::vector<float> x = Random(8192 * tokens, rng), y(8192 * tokens);
    double best = 1e30;
    for (int rep = 0; rep < 10; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < ws.size(); ++i)
        MatMul(path, &pool, x.data(), tokens, ws[i], y.data(), packed[i].get());
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("%-5s decode step %-12s %8.3f ms %8.2f GB/s\n", std::string(DTypeName(type)).c_str(),
                GemmPathName(path), best * 1e3, total / best / 1e9);
  }
}

}  // namespace
}  // namespace tandem::kernels::cpu
