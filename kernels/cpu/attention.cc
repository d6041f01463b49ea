// See attention.h. The vector kernels are compiled per function with target
// attributes (the tree builds for generic x86-64); every FMA is an explicit
// intrinsic, so -ffp-contract=off changes nothing here.
#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/dtype.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/scalar_dot.h"

namespace tandem::kernels::cpu {
namespace {

// Below this many multiply-adds attention runs on the calling thread: waking
// workers costs more than it saves.
constexpr int64_t kParallelThreshold = 1 << 15;
// Query rows of one sequence per work item: enough to reuse each K/V vector
// over a few queries, few enough that items balance over threads.
constexpr int32_t kRowBlock = 4;

// ---------------------------------------------------------------------------
// Scalar path: the backend's loops before the vector kernels, one (query row,
// head) at a time.

inline float DotKvScalar(const float* q, const uint8_t* block, int64_t at, DType dtype, int32_t n) {
  const uint16_t* half = reinterpret_cast<const uint16_t*>(block) + at;
  switch (dtype) {
    case DType::kBF16:
      return DotScalar(q, half, n, [](uint16_t x) { return BF16ToFloat(x); });
    case DType::kF16:
      return DotScalar(q, half, n, [](uint16_t x) { return HalfToFloat(x); });
    default:
      return DotF32Scalar(q, reinterpret_cast<const float*>(block) + at, n);
  }
}

// o[d] += w * V[at + d] for d < n, V's elements widened to F32.
inline void AccumulateKvScalar(float w, const uint8_t* block, int64_t at, DType dtype, int32_t n, float* o) {
  if (dtype == DType::kF32) {
    const float* vp = reinterpret_cast<const float*>(block) + at;
    for (int32_t d = 0; d < n; ++d) o[d] += w * vp[d];
    return;
  }
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(block) + at;
  if (dtype == DType::kBF16) {
    for (int32_t d = 0; d < n; ++d) o[d] += w * BF16ToFloat(vp[d]);
  } else {
    for (int32_t d = 0; d < n; ++d) o[d] += w * HalfToFloat(vp[d]);
  }
}

// The inputs every work item reads.
struct Job {
  const float* q;
  const KvCacheView* kv;
  int32_t layer;
  int32_t num_heads;
  int32_t group;  // query heads per KV head
  absl::Span<const AttentionSequence> seqs;
  float scale;
  float* out;
};

// One query row `j` of sequence `s`, head `h`.
void QueryScalar(const Job& job, int32_t s, int32_t j, int32_t h) {
  const KvLayout& l = job.kv->layout;
  const int32_t head_dim = l.head_dim;
  const AttentionSequence& seq = job.seqs[s];
  const int32_t n_ctx = seq.context_len - seq.num_queries + j + 1;
  const int32_t kv_head = h / job.group;
  const int64_t row = seq.query_start + j;
  const float* qv = job.q + (row * job.num_heads + h) * head_dim;
  thread_local std::vector<float> scores;
  scores.resize(n_ctx);
  float max_score = -INFINITY;
  for (int32_t p = 0; p < n_ctx; ++p) {
    const uint8_t* block = job.kv->Block(seq.block_table[p / l.block_size]);
    const int64_t at = l.Offset(job.layer, 0, p % l.block_size) + kv_head * head_dim;
    scores[p] = DotKvScalar(qv, block, at, l.dtype, head_dim) * job.scale;
    max_score = std::max(max_score, scores[p]);
  }
  const float inv = static_cast<float>(1.0 / ExpShiftSum(GemmPath::kScalar, scores.data(), n_ctx, max_score));
  float* o = job.out + (row * job.num_heads + h) * head_dim;
  std::fill(o, o + head_dim, 0.0f);
  for (int32_t p = 0; p < n_ctx; ++p) {
    const uint8_t* block = job.kv->Block(seq.block_table[p / l.block_size]);
    const int64_t at = l.Offset(job.layer, 1, p % l.block_size) + kv_head * head_dim;
    AccumulateKvScalar(scores[p] * inv, block, at, l.dtype, head_dim, o);
  }
}

// ---------------------------------------------------------------------------
// Vector path (AVX2 + FMA + F16C).

#define TANDEM_AVX2 __attribute__((target("avx2,fma,f16c")))

// The 8 lanes combined in gemm.cc's fixed order.
TANDEM_AVX2 inline float Hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// 8 KV elements as floats; the conversions are exact.
struct LoadF32 {
  using T = float;
  TANDEM_AVX2 static __m256 Load(const float* p) { return _mm256_loadu_ps(p); }
};
struct LoadF16 {
  using T = uint16_t;
  TANDEM_AVX2 static __m256 Load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
struct LoadBF16 {
  using T = uint16_t;
  TANDEM_AVX2 static __m256 Load(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};

// An item's queries: where each reads q and writes out, its position and its
// row of scores (softmax weights once normalised).
struct Query {
  const float* q;
  float* out;
  int32_t pos;
  float* w;
};

// Scores of NQ queries against NK keys k[0..NK): w[p0 + k] = (q . K_k) * scale.
// Each (query, key) pair owns one accumulator, whatever NQ and NK are.
template <typename L, int NQ, int NK>
TANDEM_AVX2 void ScoreTile(const Query* qs, const typename L::T* const* k, int32_t p0, int32_t head_dim,
                           float scale) {
  __m256 acc[NQ][NK];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  for (int32_t d = 0; d < head_dim; d += 8) {
    __m256 kv[NK];
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) kv[j] = L::Load(k[j] + d);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const __m256 qv = _mm256_loadu_ps(qs[i].q + d);
#pragma GCC unroll 8
      for (int j = 0; j < NK; ++j) acc[i][j] = _mm256_fmadd_ps(qv, kv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) qs[i].w[p0 + j] = Hsum(acc[i][j]) * scale;
  }
}

// Scores of NQ queries against keys [0, n_keys), 4 keys per tile.
template <typename L, int NQ>
TANDEM_AVX2 void Scores(const Query* qs, const typename L::T* const* keys, int32_t n_keys, int32_t head_dim,
                        float scale) {
  int32_t p = 0;
  for (; p + 4 <= n_keys; p += 4) ScoreTile<L, NQ, 4>(qs, keys + p, p, head_dim, scale);
  for (; p < n_keys; ++p) ScoreTile<L, NQ, 1>(qs, keys + p, p, head_dim, scale);
}

// out[d0 .. d0 + 8 NV) of NQ queries += sum over p in [p_begin, p_end) of
// w[p] * V_p, p ascending, one FMA per (p, 8 lanes); accumulators start from
// and end in `out`, so a query's sum may be split into consecutive ranges.
template <typename L, int NQ, int NV>
TANDEM_AVX2 void ValueTile(const Query* qs, const typename L::T* const* v, int32_t p_begin, int32_t p_end,
                           int32_t d0) {
  __m256 acc[NQ][NV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) acc[i][c] = _mm256_loadu_ps(qs[i].out + d0 + 8 * c);
  }
  for (int32_t p = p_begin; p < p_end; ++p) {
    __m256 vv[NV];
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) vv[c] = L::Load(v[p] + d0 + 8 * c);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const __m256 wb = _mm256_set1_ps(qs[i].w[p]);
#pragma GCC unroll 8
      for (int c = 0; c < NV; ++c) acc[i][c] = _mm256_fmadd_ps(wb, vv[c], acc[i][c]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) _mm256_storeu_ps(qs[i].out + d0 + 8 * c, acc[i][c]);
  }
}

template <typename L, int NQ>
TANDEM_AVX2 void Values(const Query* qs, const typename L::T* const* v, int32_t p_begin, int32_t p_end,
                        int32_t head_dim) {
  int32_t d = 0;
  for (; d + 32 <= head_dim; d += 32) ValueTile<L, NQ, 4>(qs, v, p_begin, p_end, d);
  for (; d < head_dim; d += 8) ValueTile<L, NQ, 1>(qs, v, p_begin, p_end, d);
}

// Softmax weights of one query over its keys [0, pos], in place.
TANDEM_AVX2 void Normalize(const Query& qr) {
  const int32_t n = qr.pos + 1;
  const float max_score = *std::max_element(qr.w, qr.w + n);
  const float inv = static_cast<float>(1.0 / ExpShiftSum(GemmPath::kAvx2, qr.w, n, max_score));
  for (int32_t p = 0; p < n; ++p) qr.w[p] *= inv;
}

// One work item: `rows` query rows from `row0` of sequence `s`, the query
// heads of KV head `kv_head`.
template <typename L>
TANDEM_AVX2 void ItemVector(const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  using T = typename L::T;
  const KvLayout& l = job.kv->layout;
  const int32_t head_dim = l.head_dim;
  const AttentionSequence& seq = job.seqs[s];
  const int32_t first_pos = seq.context_len - seq.num_queries + row0;
  const int32_t n_keys = first_pos + rows;  // keys [0, last row's position]
  thread_local std::vector<const T*> keys, values;
  thread_local std::vector<float> weights;
  thread_local std::vector<Query> qs;
  keys.resize(n_keys);
  values.resize(n_keys);
  for (int32_t p = 0; p < n_keys; ++p) {
    const T* block = reinterpret_cast<const T*>(job.kv->Block(seq.block_table[p / l.block_size]));
    keys[p] = block + l.Offset(job.layer, 0, p % l.block_size) + kv_head * head_dim;
    values[p] = block + l.Offset(job.layer, 1, p % l.block_size) + kv_head * head_dim;
  }
  const int32_t nq = rows * job.group;
  weights.resize(static_cast<size_t>(nq) * n_keys);
  qs.resize(nq);
  for (int32_t i = 0; i < nq; ++i) {
    const int64_t row = seq.query_start + row0 + i / job.group;
    const int64_t at = (row * job.num_heads + kv_head * job.group + i % job.group) * head_dim;
    qs[i] = Query{job.q + at, job.out + at, first_pos + i / job.group, weights.data() + int64_t{i} * n_keys};
  }
  // Scores against every key of the item (a query ignores those past its
  // position), then each query's softmax over its own keys.
  int32_t i = 0;
  for (; i + 2 <= nq; i += 2) Scores<L, 2>(&qs[i], keys.data(), n_keys, head_dim, job.scale);
  if (i < nq) Scores<L, 1>(&qs[i], keys.data(), n_keys, head_dim, job.scale);
  for (const Query& qr : qs) {
    Normalize(qr);
    std::fill(qr.out, qr.out + head_dim, 0.0f);
  }
  // Values: a pair of queries shares keys up to the nearer position; each
  // continues alone from there to its own.
  for (i = 0; i + 2 <= nq; i += 2) {
    const int32_t common = std::min(qs[i].pos, qs[i + 1].pos) + 1;
    Values<L, 2>(&qs[i], values.data(), 0, common, head_dim);
    for (int k = i; k < i + 2; ++k) Values<L, 1>(&qs[k], values.data(), common, qs[k].pos + 1, head_dim);
  }
  if (i < nq) Values<L, 1>(&qs[i], values.data(), 0, qs[i].pos + 1, head_dim);
}

void ItemVectorAnyType(const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  switch (job.kv->layout.dtype) {
    case DType::kBF16:
      return ItemVector<LoadBF16>(job, s, kv_head, row0, rows);
    case DType::kF16:
      return ItemVector<LoadF16>(job, s, kv_head, row0, rows);
    default:
      return ItemVector<LoadF32>(job, s, kv_head, row0, rows);
  }
}

void RunItems(ThreadPool* pool, int64_t cost, int64_t items, absl::FunctionRef<void(int64_t)> run) {
  if (pool == nullptr || cost < kParallelThreshold) {
    for (int64_t i = 0; i < items; ++i) run(i);
  } else {
    pool->ParallelFor(items, run);
  }
}

}  // namespace

void PagedAttention(GemmPath path, ThreadPool* pool, const float* q, const KvCacheView& kv, int32_t layer,
                    int32_t num_heads, absl::Span<const AttentionSequence> seqs, float scale, float* out) {
  const KvLayout& l = kv.layout;
  const Job job{q, &kv, layer, num_heads, num_heads / l.num_kv_heads, seqs, scale, out};
  // Work items: (sequence, first row of a row block), then the head (scalar)
  // or KV head (vector) within it.
  const bool vector = path != GemmPath::kScalar && l.head_dim % 8 == 0;
  const int32_t row_block = vector ? kRowBlock : 1;
  std::vector<std::pair<int32_t, int32_t>> blocks;
  int64_t cost = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int32_t j = 0; j < seqs[s].num_queries; j += row_block) blocks.emplace_back(s, j);
    cost += int64_t{seqs[s].num_queries} * seqs[s].context_len * num_heads * l.head_dim;
  }
  const int32_t per_block = vector ? l.num_kv_heads : num_heads;
  const int64_t items = static_cast<int64_t>(blocks.size()) * per_block;
  RunItems(pool, cost, items, [&](int64_t item) {
    const auto [s, j] = blocks[item / per_block];
    const int32_t h = static_cast<int32_t>(item % per_block);
    if (!vector) return QueryScalar(job, s, j, h);
    ItemVectorAnyType(job, s, h, j, std::min(row_block, seqs[s].num_queries - j));
  });
}

}  // namespace tandem::kernels::cpu
