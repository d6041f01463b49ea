#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gtest/gtest.h"

namespace tandem::kernels::cpu {
namespace {

// A KV pool of random elements of `dtype`, and random queries.
struct Fixture {
  Fixture(DType dtype, int32_t num_kv_heads, int32_t head_dim, int32_t num_blocks, uint32_t seed)
      : rng(seed) {
    kv.layout = KvLayout{2, num_kv_heads, head_dim, 16, dtype};
    kv.num_blocks = num_blocks;
    pool.resize(kv.layout.BlockBytes() * num_blocks);
    kv.base = pool.data();
    std::uniform_real_distribution<float> u(-1, 1);
    const int64_t n = kv.layout.BlockElements() * num_blocks;
    for (int64_t i = 0; i < n; ++i) {
      const float x = u(rng);
      if (dtype == DType::kF32) {
        std::memcpy(&pool[i * 4], &x, 4);
      } else {
        const uint16_t h = dtype == DType::kF16 ? FloatToHalf(x) : FloatToBF16(x);
        std::memcpy(&pool[i * 2], &h, 2);
      }
    }
  }
  std::vector<float> Queries(int64_t n) {
    std::uniform_real_distribution<float> u(-2, 2);
    std::vector<float> q(n);
    for (float& x : q) x = u(rng);
    return q;
  }
  std::mt19937 rng;
  std::vector<uint8_t> pool;
  KvCacheView kv;
};

// Block tables of `n` sequences, each `blocks` scattered (interleaved) ids.
std::vector<std::vector<int32_t>> Tables(int n, int blocks) {
  std::vector<std::vector<int32_t>> t(n);
  for (int s = 0; s < n; ++s) {
    for (int b = 0; b < blocks; ++b) t[s].push_back((b * n + s) * 7 % (n * blocks));
  }
  return t;
}

struct Shape {
  DType dtype;
  int32_t num_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
};

class AttentionTest : public ::testing::TestWithParam<Shape> {};

std::vector<GemmPath> VectorPaths() {
  std::vector<GemmPath> paths;
  for (GemmPath p : SupportedGemmPaths()) {
    if (p != GemmPath::kScalar) paths.push_back(p);
  }
  return paths;
}

// The vector path against the scalar loops: they differ only by rounding
// (FMA, the vector exp), within 1e-5 of outputs of magnitude <= 1.
TEST_P(AttentionTest, VectorPathMatchesScalarReference) {
  const Shape sh = GetParam();
  Fixture f(sh.dtype, sh.num_kv_heads, sh.head_dim, 16, 1);
  const auto tables = Tables(2, 8);
  // A prefill of 37 queries at context 90 and a decode at context 128.
  const AttentionSequence seqs[] = {{0, 37, 90, tables[0]}, {37, 1, 128, tables[1]}};
  const int64_t width = int64_t{sh.num_heads} * sh.head_dim;
  const std::vector<float> q = f.Queries(38 * width);
  std::vector<float> want(q.size()), got(q.size());
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  const float scale = 1 / std::sqrt(static_cast<float>(sh.head_dim));
  PagedAttention(GemmPath::kScalar, &pool, q.data(), f.kv, 1, sh.num_heads, seqs, scale, want.data());
  for (GemmPath path : VectorPaths()) {
    PagedAttention(path, &pool, q.data(), f.kv, 1, sh.num_heads, seqs, scale, got.data());
    double max_err = 0;
    for (size_t i = 0; i < q.size(); ++i) max_err = std::max(max_err, double{std::abs(got[i] - want[i])});
    EXPECT_LE(max_err, 1e-5) << GemmPathName(path);
    EXPECT_NE(got, std::vector<float>(q.size(), 0.0f));
  }
}

// The AVX-512 tiles hold two 8-lane accumulators per vector and combine
// them in Hsum's tree, so they give the AVX2 path's bits exactly (prefill
// rows of odd and even counts, a ragged key tile, decode).
TEST_P(AttentionTest, Avx512GivesTheAvx2Bits) {
  const std::vector<GemmPath> paths = SupportedGemmPaths();
  if (std::find(paths.begin(), paths.end(), GemmPath::kAvx512) == paths.end()) GTEST_SKIP() << "no AVX-512";
  const Shape sh = GetParam();
  Fixture f(sh.dtype, sh.num_kv_heads, sh.head_dim, 24, 3);
  const auto tables = Tables(3, 8);
  const AttentionSequence seqs[] = {{0, 37, 90, tables[0]}, {37, 1, 128, tables[1]}, {38, 6, 23, tables[2]}};
  const int64_t width = int64_t{sh.num_heads} * sh.head_dim;
  const std::vector<float> q = f.Queries(44 * width);
  std::vector<float> avx2(q.size()), avx512(q.size());
  ThreadPool pool(ThreadPool::Options{.num_threads = 2});
  const float scale = 1 / std::sqrt(static_cast<float>(sh.head_dim));
  PagedAttention(GemmPath::kAvx2, &pool, q.data(), f.kv, 1, sh.num_heads, seqs, scale, avx2.data());
  PagedAttention(GemmPath::kAvx512, &pool, q.data(), f.kv, 1, sh.num_heads, seqs, scale, avx512.data());
  EXPECT_EQ(0, std::memcmp(avx2.data(), avx512.data(), q.size() * sizeof(float)));
  for (size_t i = 0; i < q.size(); ++i) {
    if (avx2[i] != avx512[i]) {
      ADD_FAILURE() << "first difference at row " << i / width << " col " << i % width << ": " << avx2[i]
                    << " " << avx512[i];
      break;
    }
  }
  EXPECT_NE(avx2, std::vector<float>(q.size(), 0.0f));
}

// Every query computes bit-identically whether it runs alone on one thread,
// inside a whole prefill, in prefill chunks of 3 or 5 rows, or beside other
// sequences in one call on two threads.
TEST_P(AttentionTest, BitExactAcrossBatchChunksAndThreads) {
  const Shape sh = GetParam();
  Fixture f(sh.dtype, sh.num_kv_heads, sh.head_dim, 24, 2);
  const auto tables = Tables(3, 8);
  const int64_t width = int64_t{sh.num_heads} * sh.head_dim;
  const int32_t prompt = 41, ctx[] = {prompt, 77, 128};
  const std::vector<float> q = f.Queries((prompt + 2) * width);
  const float scale = 1 / std::sqrt(static_cast<float>(sh.head_dim));
  ThreadPool two(ThreadPool::Options{.num_threads = 2});
  for (GemmPath path : SupportedGemmPaths()) {
    SCOPED_TRACE(GemmPathName(path));
    // Alone, one thread: row j of sequence 0 at position j; then the decode
    // rows of sequences 1 and 2.
    std::vector<float> alone(q.size());
    for (int32_t j = 0; j < prompt + 2; ++j) {
      const int s = j < prompt ? 0 : j - prompt + 1;
      const AttentionSequence seq{j, 1, j < prompt ? j + 1 : ctx[s], tables[s]};
      PagedAttention(path, nullptr, q.data(), f.kv, 1, sh.num_heads, {&seq, 1}, scale, alone.data());
    }
    // All three sequences in one call, two threads.
    std::vector<float> batch(q.size());
    const AttentionSequence all[] = {
        {0, prompt, prompt, tables[0]}, {prompt, 1, ctx[1], tables[1]}, {prompt + 1, 1, ctx[2], tables[2]}};
    PagedAttention(path, &two, q.data(), f.kv, 1, sh.num_heads, all, scale, batch.data());
    EXPECT_EQ(0, std::memcmp(alone.data(), batch.data(), q.size() * sizeof(float)));
    // The prompt in chunks.
    for (int32_t chunk : {3, 5}) {
      std::vector<float> chunked(q.size());
      std::memcpy(chunked.data() + prompt * width, batch.data() + prompt * width, 2 * width * sizeof(float));
      for (int32_t j = 0; j < prompt; j += chunk) {
        const int32_t n = std::min(chunk, prompt - j);
        const AttentionSequence seq{j, n, j + n, tables[0]};
        PagedAttention(path, &two, q.data(), f.kv, 1, sh.num_heads, {&seq, 1}, scale, chunked.data());
      }
      EXPECT_EQ(0, std::memcmp(alone.data(), chunked.data(), q.size() * sizeof(float))) << chunk;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape{DType::kF32, 12, 12, 64}, Shape{DType::kF32, 8, 2, 64},
                                           Shape{DType::kBF16, 8, 2, 64}, Shape{DType::kF16, 4, 4, 64},
                                           Shape{DType::kF32, 8, 4, 8}, Shape{DType::kF32, 4, 2, 12},
                                           Shape{DType::kF16, 6, 2, 40}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           return std::string(DTypeName(s.dtype)) + "_" + std::to_string(s.num_heads) + "q" +
                                  std::to_string(s.num_kv_heads) + "kv_" + std::to_string(s.head_dim);
                         });

}  // namespace
}  // namespace tandem::kernels::cpu
