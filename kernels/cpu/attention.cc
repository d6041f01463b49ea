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
// The AVX-512 path's: each item walks all its keys once per pair of
// queries, but builds their pointers once (4 rows: a tenth of attention).
constexpr int32_t kRowBlock512 = 16;

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

// The largest of w[0..n) (max is exact in any order).
TANDEM_AVX2 float RowMax(const float* w, int32_t n) {
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int32_t p = 0;
  for (; p + 16 <= n; p += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(w + p));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(w + p + 8));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = *std::max_element(lanes, lanes + 8);
  for (; p < n; ++p) m = std::max(m, w[p]);
  return m;
}

// Normalize for qs[0..n), the same bits: each row's exponentials as
// ExpShiftSum computes them and its sum in double in index order, but four
// rows' sums advance side by side (one row's chain of dependent additions
// took as long as the rest of its softmax).
TANDEM_AVX2 void NormalizeGroup(const Query* qs, int32_t n) {
  for (int32_t g = 0; g < n; g += 4) {
    const int32_t m = std::min(4, n - g);
    const Query* q = qs + g;
    double sum[4] = {0, 0, 0, 0};
    int32_t common = q[0].pos + 1;
    for (int32_t k = 0; k < m; ++k) {
      const int32_t len = q[k].pos + 1;
      common = std::min(common, len);
      ExpShift(GemmPath::kAvx2, q[k].w, len, RowMax(q[k].w, len));
    }
    if (m == 4) {
      for (int32_t p = 0; p < common; ++p) {
        sum[0] += q[0].w[p];
        sum[1] += q[1].w[p];
        sum[2] += q[2].w[p];
        sum[3] += q[3].w[p];
      }
    } else {
      for (int32_t k = 0; k < m; ++k) {
        for (int32_t p = 0; p < common; ++p) sum[k] += q[k].w[p];
      }
    }
    for (int32_t k = 0; k < m; ++k) {
      const int32_t len = q[k].pos + 1;
      for (int32_t p = common; p < len; ++p) sum[k] += q[k].w[p];
      const float inv = static_cast<float>(1.0 / sum[k]);
      for (int32_t p = 0; p < len; ++p) q[k].w[p] *= inv;
    }
  }
}

// One work item's keys, values and queries: `rows` query rows from `row0` of
// sequence `s`, the query heads of KV head `kv_head`. Per calling thread.
template <typename T>
struct Item {
  std::vector<const T*> keys, values;
  std::vector<float> weights;
  std::vector<Query> qs;
  int32_t n_keys = 0;  // keys [0, last row's position]
};

template <typename T>
Item<T>& PrepareItem(const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  thread_local Item<T> it;
  const KvLayout& l = job.kv->layout;
  const int32_t head_dim = l.head_dim;
  const AttentionSequence& seq = job.seqs[s];
  const int32_t first_pos = seq.context_len - seq.num_queries + row0;
  const int32_t n_keys = it.n_keys = first_pos + rows;
  it.keys.resize(n_keys);
  it.values.resize(n_keys);
  for (int32_t p = 0; p < n_keys; ++p) {
    const T* block = reinterpret_cast<const T*>(job.kv->Block(seq.block_table[p / l.block_size]));
    it.keys[p] = block + l.Offset(job.layer, 0, p % l.block_size) + kv_head * head_dim;
    it.values[p] = block + l.Offset(job.layer, 1, p % l.block_size) + kv_head * head_dim;
  }
  const int32_t nq = rows * job.group;
  it.weights.resize(static_cast<size_t>(nq) * n_keys);
  it.qs.resize(nq);
  for (int32_t i = 0; i < nq; ++i) {
    const int64_t row = seq.query_start + row0 + i / job.group;
    const int64_t at = (row * job.num_heads + kv_head * job.group + i % job.group) * head_dim;
    it.qs[i] =
        Query{job.q + at, job.out + at, first_pos + i / job.group, it.weights.data() + int64_t{i} * n_keys};
  }
  return it;
}

// One work item (PrepareItem's).
template <typename L>
TANDEM_AVX2 void ItemVector(const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  Item<typename L::T>& it = PrepareItem<typename L::T>(job, s, kv_head, row0, rows);
  const int32_t head_dim = job.kv->layout.head_dim;
  std::vector<Query>& qs = it.qs;
  const int32_t nq = static_cast<int32_t>(qs.size());
  // Scores against every key of the item (a query ignores those past its
  // position), then each query's softmax over its own keys.
  int32_t i = 0;
  for (; i + 2 <= nq; i += 2) Scores<L, 2>(&qs[i], it.keys.data(), it.n_keys, head_dim, job.scale);
  if (i < nq) Scores<L, 1>(&qs[i], it.keys.data(), it.n_keys, head_dim, job.scale);
  for (const Query& qr : qs) {
    Normalize(qr);
    std::fill(qr.out, qr.out + head_dim, 0.0f);
  }
  // Values: a pair of queries shares keys up to the nearer position; each
  // continues alone from there to its own.
  for (i = 0; i + 2 <= nq; i += 2) {
    const int32_t common = std::min(qs[i].pos, qs[i + 1].pos) + 1;
    Values<L, 2>(&qs[i], it.values.data(), 0, common, head_dim);
    for (int k = i; k < i + 2; ++k) Values<L, 1>(&qs[k], it.values.data(), common, qs[k].pos + 1, head_dim);
  }
  if (i < nq) Values<L, 1>(&qs[i], it.values.data(), 0, qs[i].pos + 1, head_dim);
}

// ---------------------------------------------------------------------------
// AVX-512 path: the AVX2 path's arithmetic, 16 lanes at a time, so the same
// bits. A score's accumulator is still 8 lanes over head_dim: one 16-lane
// vector holds two of them (lanes 0-7 and 8-15: two queries against one key,
// the key's 8 elements broadcast to both halves), and Reduce8 combines eight
// such vectors' sixteen accumulators in Hsum's tree at once (IEEE addition
// commutes, so only the tree matters). The value sum is elementwise, one FMA
// per (p, lane) in ascending p, so its width does not matter.

// GCC 12's AVX-512 headers initialise "undefined" vectors from themselves
// (_mm512_undefined_*), which -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define TANDEM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Per AVX2 loader: Half loads 8 elements into both 8-lane halves, Full 16.
template <typename L>
struct Wide;
template <>
struct Wide<LoadF32> {
  TANDEM_AVX512 static __m512 Half(const float* p) { return _mm512_broadcast_f32x8(_mm256_loadu_ps(p)); }
  TANDEM_AVX512 static __m512 Full(const float* p) { return _mm512_loadu_ps(p); }
  // a's 8 elements in lanes 0-7, b's in lanes 8-15.
  TANDEM_AVX512 static __m512 Pair(const float* a, const float* b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(a)), _mm256_loadu_ps(b), 1);
  }
};
template <>
struct Wide<LoadF16> {
  TANDEM_AVX512 static __m512 Half(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  TANDEM_AVX512 static __m512 Full(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  TANDEM_AVX512 static __m512 Pair(const uint16_t* a, const uint16_t* b) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)),
                                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a))));
  }
};
template <>
struct Wide<LoadBF16> {
  TANDEM_AVX512 static __m512 Half(const uint16_t* p) {
    const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  TANDEM_AVX512 static __m512 Full(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  TANDEM_AVX512 static __m512 Pair(const uint16_t* a, const uint16_t* b) {
    const __m256i h = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)),
                                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
};

// The 16 8-lane accumulators of x[0..8) (x[m]'s halves h = 0, 1), each
// combined as Hsum does: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
// Accumulator (m, h) ends in lane 4 (2 (m % 2) + h) + m / 2.
TANDEM_AVX512 inline __m512 Reduce8(const __m512* x) {
  __m512 s[4], t[2];
#pragma GCC unroll 4
  for (int a = 0; a < 4; ++a) {  // 128-bit chunks: [x0.h0, x0.h1, x1.h0, x1.h1], l_i + l_i+4
    s[a] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * a], x[2 * a + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * a], x[2 * a + 1], 0xDD));
  }
#pragma GCC unroll 2
  for (int b = 0; b < 2; ++b) {  // per chunk [s(2b).(0+2), s(2b).(1+3), s(2b+1).(0+2), s(2b+1).(1+3)]
    t[b] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * b], s[2 * b + 1], 0x44),
                         _mm512_shuffle_ps(s[2 * b], s[2 * b + 1], 0xEE));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], 0x88), _mm512_shuffle_ps(t[0], t[1], 0xDD));
}

// Lane of Reduce8's result holding accumulator m's half h.
constexpr int ReducedLane(int m, int h) { return 4 * (2 * (m % 2) + h) + m / 2; }

// Keys and values this many positions ahead are prefetched: a position's
// K (or V) row of one head lies a token stride (all heads' rows) after the
// previous one's, scattered over the blocks of the pool, and a decode step
// reads each once, from DRAM (the matmuls' weights evict them). 110m F16
// decode after 512 tokens (cpu_generate_bench, three alternating pairs,
// busy machine): 110-116 -> 115-121 tok/s, F32 and F16 KV alike.
constexpr int32_t kKvPrefetch = 16;

// Asks for the `bytes` of one KV row at p.
TANDEM_AVX512 inline void PrefetchRow(const void* p, int32_t bytes) {
  for (int32_t b = 0; b < bytes; b += 64) _mm_prefetch(static_cast<const char*>(p) + b, _MM_HINT_T0);
}

// Scores of query pairs pq[0..NP) against keys k[0..NK): NP * NK = 8
// vectors, one Reduce8. pq[i] points at the pair's interleaved queries
// (head_dim / 8 vectors of 16: lanes 0-7 query 2i's elements 8c.., lanes
// 8-15 query 2i+1's); w[2i + h] is that query's score row, nullptr for a
// missing second query. Keys past n_keys are not written.
template <typename L, int NP, int NK>
TANDEM_AVX512 void ScoreTile512(const float* const* pq, float* const* w, const typename L::T* const* k,
                                int32_t p0, int32_t n_keys, int32_t head_dim, float scale) {
  static_assert(NP * NK == 8);
  __m512 acc[NP * NK];
#pragma GCC unroll 8
  for (int m = 0; m < NP * NK; ++m) acc[m] = _mm512_setzero_ps();
  for (int32_t d = 0, c = 0; d < head_dim; d += 8, ++c) {
    __m512 kv[NK];
#pragma GCC unroll 8
    for (int j = 0; j < NK; ++j) kv[j] = Wide<L>::Half(k[j] + d);
#pragma GCC unroll 8
    for (int i = 0; i < NP; ++i) {
      const __m512 qv = _mm512_loadu_ps(pq[i] + 16 * c);
#pragma GCC unroll 8
      for (int j = 0; j < NK; ++j) acc[i * NK + j] = _mm512_fmadd_ps(qv, kv[j], acc[i * NK + j]);
    }
  }
  alignas(64) float r[16];
  _mm512_store_ps(r, _mm512_mul_ps(Reduce8(acc), _mm512_set1_ps(scale)));
  const int nk = std::min(NK, n_keys - p0);
#pragma GCC unroll 8
  for (int i = 0; i < NP; ++i) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      float* row = w[2 * i + h];
      if (row == nullptr) continue;
      for (int j = 0; j < nk; ++j) row[p0 + j] = r[ReducedLane(i * NK + j, h)];
    }
  }
}

// Scores of a lone query (a pair slot whose second query is missing: every
// decode row without grouped heads) against keys k[0..16): the query in
// both halves of its vector, keys 2m and 2m + 1 in the two halves of
// accumulator m. Each (query, key) accumulator gets the same 8 lanes of
// FMAs, in the same order, as in ScoreTile512 (which paired the query with
// zeros), and Reduce8 reduces each half by itself in the same tree: the same
// bits, with half the FMAs and key conversions. Keys past n_keys are not
// written.
template <typename L>
TANDEM_AVX512 void ScoreTileLone512(const float* pq, float* w, const typename L::T* const* k, int32_t p0,
                                    int32_t n_keys, int32_t head_dim, float scale) {
  __m512 acc[8];
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) acc[m] = _mm512_setzero_ps();
  for (int32_t d = 0, c = 0; d < head_dim; d += 8, ++c) {
    const __m512 pair = _mm512_loadu_ps(pq + 16 * c);
    const __m512 qv = _mm512_shuffle_f32x4(pair, pair, 0x44);  // lanes 0-7 in both halves
#pragma GCC unroll 8
    for (int m = 0; m < 8; ++m)
      acc[m] = _mm512_fmadd_ps(qv, Wide<L>::Pair(k[2 * m] + d, k[2 * m + 1] + d), acc[m]);
  }
  alignas(64) float r[16];
  _mm512_store_ps(r, _mm512_mul_ps(Reduce8(acc), _mm512_set1_ps(scale)));
  const int nk = std::min(16, n_keys - p0);
  for (int j = 0; j < nk; ++j) w[p0 + j] = r[ReducedLane(j / 2, j % 2)];
}

// Scores of query pairs [0, np) against keys [0, n_keys): tiles of 2 pairs
// x 4 keys (1 x 8 for a last odd pair, 16 keys of ScoreTileLone512 when that
// pair holds one query); a ragged last tile repeats key 0 and drops those
// results.
template <typename L>
TANDEM_AVX512 void Scores512(const float* const* pq, float* const* w, int32_t np,
                             const typename L::T* const* keys, int32_t n_keys, int32_t head_dim,
                             float scale) {
  using T = typename L::T;
  auto tail = [&](int nk_tile, int32_t p, const T** buf) {
    for (int j = 0; j < nk_tile; ++j) buf[j] = keys[p + j < n_keys ? p + j : 0];
  };
  const int32_t row_bytes = head_dim * static_cast<int32_t>(sizeof(T));
  auto prefetch = [&](int32_t p, int nk_tile) {
    for (int32_t j = p + kKvPrefetch; j < std::min(n_keys, p + kKvPrefetch + nk_tile); ++j) {
      PrefetchRow(keys[j], row_bytes);
    }
  };
  int32_t i = 0;
  for (; i + 2 <= np; i += 2) {
    int32_t p = 0;
    for (; p + 4 <= n_keys; p += 4) {
      prefetch(p, 4);
      ScoreTile512<L, 2, 4>(pq + i, w + 2 * i, keys + p, p, n_keys, head_dim, scale);
    }
    if (p < n_keys) {
      const T* buf[4];
      tail(4, p, buf);
      ScoreTile512<L, 2, 4>(pq + i, w + 2 * i, buf, p, n_keys, head_dim, scale);
    }
  }
  if (i < np && w[2 * i + 1] == nullptr) {
    int32_t p = 0;
    for (; p + 16 <= n_keys; p += 16) {
      prefetch(p, 16);
      ScoreTileLone512<L>(pq[i], w[2 * i], keys + p, p, n_keys, head_dim, scale);
    }
    if (p < n_keys) {
      const T* buf[16];
      tail(16, p, buf);
      ScoreTileLone512<L>(pq[i], w[2 * i], buf, p, n_keys, head_dim, scale);
    }
  } else if (i < np) {
    int32_t p = 0;
    for (; p + 8 <= n_keys; p += 8) {
      prefetch(p, 8);
      ScoreTile512<L, 1, 8>(pq + i, w + 2 * i, keys + p, p, n_keys, head_dim, scale);
    }
    if (p < n_keys) {
      const T* buf[8];
      tail(8, p, buf);
      ScoreTile512<L, 1, 8>(pq + i, w + 2 * i, buf, p, n_keys, head_dim, scale);
    }
  }
}

// ValueTile, 16 lanes per vector.
template <typename L, int NQ, int NV>
TANDEM_AVX512 void ValueTile512(const Query* qs, const typename L::T* const* v, int32_t p_begin,
                                int32_t p_end, int32_t d0) {
  __m512 acc[NQ][NV];
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_loadu_ps(qs[i].out + d0 + 16 * c);
  }
  for (int32_t p = p_begin; p < p_end; ++p) {
    if (p + kKvPrefetch < p_end) PrefetchRow(v[p + kKvPrefetch] + d0, NV * 16 * sizeof(typename L::T));
    __m512 vv[NV];
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) vv[c] = Wide<L>::Full(v[p] + d0 + 16 * c);
#pragma GCC unroll 8
    for (int i = 0; i < NQ; ++i) {
      const __m512 wb = _mm512_set1_ps(qs[i].w[p]);
#pragma GCC unroll 8
      for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_fmadd_ps(wb, vv[c], acc[i][c]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NQ; ++i) {
#pragma GCC unroll 8
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(qs[i].out + d0 + 16 * c, acc[i][c]);
  }
}

template <typename L, int NQ>
TANDEM_AVX512 void Values512(const Query* qs, const typename L::T* const* v, int32_t p_begin, int32_t p_end,
                             int32_t head_dim) {
  int32_t d = 0;
  for (; d + 64 <= head_dim; d += 64) ValueTile512<L, NQ, 4>(qs, v, p_begin, p_end, d);
  for (; d + 16 <= head_dim; d += 16) ValueTile512<L, NQ, 1>(qs, v, p_begin, p_end, d);
  if (d < head_dim) ValueTile<L, NQ, 1>(qs, v, p_begin, p_end, d);  // 8 lanes left
}

// ItemVector on the AVX-512 tiles: the same bits.
template <typename L>
TANDEM_AVX512 void ItemVector512(const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  Item<typename L::T>& it = PrepareItem<typename L::T>(job, s, kv_head, row0, rows);
  const int32_t head_dim = job.kv->layout.head_dim;
  std::vector<Query>& qs = it.qs;
  const int32_t nq = static_cast<int32_t>(qs.size());
  const int32_t np = (nq + 1) / 2, chunks = head_dim / 8;
  // Queries interleaved in pairs (ScoreTile512), a missing second one zero.
  thread_local std::vector<float> pairs;
  thread_local std::vector<const float*> pq;
  thread_local std::vector<float*> w;
  pairs.assign(static_cast<size_t>(np) * chunks * 16, 0.0f);
  pq.resize(np);
  w.assign(2 * np, nullptr);
  for (int32_t i = 0; i < nq; ++i) {
    float* dst = pairs.data() + static_cast<size_t>(i / 2) * chunks * 16 + 8 * (i % 2);
    for (int32_t c = 0; c < chunks; ++c) std::copy(qs[i].q + 8 * c, qs[i].q + 8 * c + 8, dst + 16 * c);
    w[i] = qs[i].w;
  }
  for (int32_t i = 0; i < np; ++i) pq[i] = pairs.data() + static_cast<size_t>(i) * chunks * 16;
  Scores512<L>(pq.data(), w.data(), np, it.keys.data(), it.n_keys, head_dim, job.scale);
  NormalizeGroup(qs.data(), nq);
  for (const Query& qr : qs) std::fill(qr.out, qr.out + head_dim, 0.0f);
  // Values: up to four queries share keys up to the nearest position; each
  // continues alone from there to its own.
  int32_t i = 0;
  for (; i < nq; i += 4) {
    const int32_t n = std::min(4, nq - i);
    int32_t common = qs[i].pos;
    for (int32_t k = i; k < i + n; ++k) common = std::min(common, qs[k].pos);
    ++common;
    switch (n) {
      case 4:
        Values512<L, 4>(&qs[i], it.values.data(), 0, common, head_dim);
        break;
      case 3:
        Values512<L, 3>(&qs[i], it.values.data(), 0, common, head_dim);
        break;
      case 2:
        Values512<L, 2>(&qs[i], it.values.data(), 0, common, head_dim);
        break;
      default:
        Values512<L, 1>(&qs[i], it.values.data(), 0, common, head_dim);
    }
    for (int32_t k = i; k < i + n; ++k) {
      Values512<L, 1>(&qs[k], it.values.data(), common, qs[k].pos + 1, head_dim);
    }
  }
}

void ItemVectorAnyType(bool wide, const Job& job, int32_t s, int32_t kv_head, int32_t row0, int32_t rows) {
  if (wide) {
    switch (job.kv->layout.dtype) {
      case DType::kBF16:
        return ItemVector512<LoadBF16>(job, s, kv_head, row0, rows);
      case DType::kF16:
        return ItemVector512<LoadF16>(job, s, kv_head, row0, rows);
      default:
        return ItemVector512<LoadF32>(job, s, kv_head, row0, rows);
    }
  }
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
  const int32_t row_block = !vector ? 1 : path == GemmPath::kAvx512 ? kRowBlock512 : kRowBlock;
  std::vector<std::pair<int32_t, int32_t>> blocks;
  int64_t cost = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int32_t j = 0; j < seqs[s].num_queries; j += row_block) blocks.emplace_back(s, j);
    cost += int64_t{seqs[s].num_queries} * seqs[s].context_len * num_heads * l.head_dim;
  }
  const int32_t per_block = vector ? l.num_kv_heads : num_heads;
  const int64_t items = static_cast<int64_t>(blocks.size()) * per_block;
  RunItems(pool, cost, items, [&](int64_t item) {
    // Head-major: consecutive items read the same head's keys and values
    // (one layer's K and V for a 512-token prompt: 256 KiB a head, 3 MiB
    // for 12), so they stay in L2 between items.
    const int64_t n_blocks = static_cast<int64_t>(blocks.size());
    const auto [s, j] = blocks[item % n_blocks];
    const int32_t h = static_cast<int32_t>(item / n_blocks);
    if (!vector) return QueryScalar(job, s, j, h);
    ItemVectorAnyType(path == GemmPath::kAvx512, job, s, h, j, std::min(row_block, seqs[s].num_queries - j));
  });
}

}  // namespace tandem::kernels::cpu
