// See gemm.h. The AVX2 path is compiled per function with target attributes
// because the tree is built for generic x86-64; nothing here relies on FP
// contraction (-ffp-contract=off): every FMA is an explicit intrinsic.
#include "kernels/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/dtype.h"

namespace tandem::kernels::cpu {
namespace {

// ---------------------------------------------------------------------------
// Scalar path: the loops the backend ran before the AVX2 kernels, kept for
// CPUs without AVX2/FMA/F16C and as the reference gemm_test.cc compares with.

constexpr int kLanes = 8;

inline float CombineLanes(const float* acc) {
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <typename Convert>
inline float DotScalar(const float* a, const uint16_t* b, int64_t n, Convert convert) {
  float acc[kLanes] = {};
  float wb[kLanes];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) wb[l] = convert(b[i + l]);
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * wb[l];
  }
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * convert(b[i]);
  return CombineLanes(acc) + tail;
}

inline float DotF32Scalar(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return CombineLanes(acc) + tail;
}

// Q8_0 row: n / 32 blocks of {f16 scale, int8 q[32]}; F32 activations.
inline float DotQ8_0Scalar(const float* a, const uint8_t* b, int64_t n) {
  float total = 0;
  for (int64_t blk = 0; blk < n / kQ8_0BlockElements; ++blk) {
    const uint8_t* p = b + blk * kQ8_0BlockBytes;
    const int8_t* q = reinterpret_cast<const int8_t*>(p + 2);
    const float* x = a + blk * kQ8_0BlockElements;
    float acc[kLanes] = {};
    for (int i = 0; i < kQ8_0BlockElements; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * static_cast<float>(q[i + l]);
    }
    total += Q8_0BlockScale(p) * CombineLanes(acc);
  }
  return total;
}

inline float RowDotScalar(const float* x, const Weight& w, int64_t o) {
  const int64_t n = w.cols;
  const uint8_t* row = static_cast<const uint8_t*>(w.data) + DTypeBytes(w.dtype, n) * o;
  switch (w.dtype) {
    case DType::kF32:
      return DotF32Scalar(x, reinterpret_cast<const float*>(row), n);
    case DType::kF16:
      return DotScalar(x, reinterpret_cast<const uint16_t*>(row), n, HalfToFloat);
    case DType::kBF16:
      return DotScalar(x, reinterpret_cast<const uint16_t*>(row), n, BF16ToFloat);
    case DType::kQ8_0:
      return DotQ8_0Scalar(x, row, n);
  }
  return 0;
}

// Compiled twice (AVX2 and baseline) so the vectoriser gets 8-wide registers
// where the machine has them; each clone is deterministic on its own.
__attribute__((target_clones("avx2", "default"))) void RangeScalar(const float* x, int64_t rows,
                                                                   const Weight& w, float* out,
                                                                   int64_t o_begin, int64_t o_end) {
  const int64_t out_cols = w.rows;
  for (int64_t o = o_begin; o < o_end; ++o) {
    for (int64_t r = 0; r < rows; ++r) out[r * out_cols + o] = RowDotScalar(x + r * w.cols, w, o);
  }
}

// ---------------------------------------------------------------------------
// AVX2 + FMA + F16C path.

#define TANDEM_AVX2 __attribute__((target("avx2,fma,f16c")))

// Sum of the 8 lanes in one fixed order: (l0+l4, l1+l5, l2+l6, l3+l7), then
// pairs of those. Every path that produces an output ends here.
TANDEM_AVX2 inline float Hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Loads 8 weights as floats. Conversions are exact (F16C converts every half,
// subnormals included; BF16 is the high half of an F32).
struct LoadF32 {
  using T = float;
  TANDEM_AVX2 static __m256 Load(const float* p) { return _mm256_loadu_ps(p); }
  static float One(float v) { return v; }
};
struct LoadF16 {
  using T = uint16_t;
  TANDEM_AVX2 static __m256 Load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float One(uint16_t v) { return HalfToFloat(v); }
};
struct LoadBF16 {
  using T = uint16_t;
  TANDEM_AVX2 static __m256 Load(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float One(uint16_t v) { return BF16ToFloat(v); }
};

// One tile: MR weight rows (w[0..MR) rows apart by `ldw` elements) x NR token
// rows of x (`ldx` apart); out[t * ldo + i]. The K loop is identical for every
// (MR, NR), so a given output's accumulator sees the same FMAs in every tile.
template <typename L, int MR, int NR>
TANDEM_AVX2 void TileFloat(const float* x, int64_t ldx, const typename L::T* w, int64_t ldw, int64_t n,
                           float* out, int64_t ldo) {
  __m256 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 wv[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) wv[i] = L::Load(w + i * ldw + k);
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  if (k < n) {  // ragged tail: one more FMA on zero-padded vectors
    alignas(32) float buf[8];
    __m256 wv[MR];
    for (int i = 0; i < MR; ++i) {
      std::fill(buf, buf + 8, 0.0f);
      for (int64_t j = k; j < n; ++j) buf[j - k] = L::One(w[i * ldw + j]);
      wv[i] = _mm256_load_ps(buf);
    }
    for (int t = 0; t < NR; ++t) {
      std::fill(buf, buf + 8, 0.0f);
      std::copy(x + t * ldx + k, x + t * ldx + n, buf);
      const __m256 xv = _mm256_load_ps(buf);
      for (int i = 0; i < MR; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum(acc[i][t]);
  }
}

// Activations quantized per 32-block: row r's block b has scale d[r * nb + b]
// and values q[r * n + 32 * b ..].
struct QuantizedRows {
  const float* d;
  const int8_t* q;
  int64_t nb;
};

// Q8_0 tile: MR weight rows x NR token rows. Per 32-block the integer dot
// product is exact (|w| <= 128 unsigned times |x| <= 127, pair sums < 2^15),
// then one FMA adds d_w * d_x * sum into the element's 8-lane accumulator.
// The weight takes the absolute value (unsigned -128 is 128) and the
// activation its sign, as llama.cpp's mul_sum_i8_pairs_float.
template <int MR, int NR>
TANDEM_AVX2 void TileQ8_0(const QuantizedRows& xq, int64_t t0, const uint8_t* w, int64_t ldw_bytes,
                          float* out, int64_t ldo) {
  __m256 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm256_setzero_ps();
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t n = xq.nb * kQ8_0BlockElements;
  for (int64_t b = 0; b < xq.nb; ++b) {
    __m256i wabs[MR], wq[MR];
    float wd[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const uint8_t* blk = w + i * ldw_bytes + b * kQ8_0BlockBytes;
      uint16_t h;
      std::memcpy(&h, blk, 2);
      wd[i] = _cvtsh_ss(h);
      wq[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      wabs[i] = _mm256_sign_epi8(wq[i], wq[i]);
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const int64_t row = t0 + t;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.q + row * n + b * 32));
      const float xd = xq.d[row * xq.nb + b];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m256i sx = _mm256_sign_epi8(xv, wq[i]);
        const __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[i], sx), ones);
        acc[i][t] = _mm256_fmadd_ps(_mm256_set1_ps(wd[i] * xd), _mm256_cvtepi32_ps(p32), acc[i][t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum(acc[i][t]);
  }
}

// Tile shapes: 4 x 3 float accumulators (+ 4 weight vectors) fill the 16 ymm
// registers; Q8_0 needs more temporaries per product, so 2 x 4.
constexpr int kFloatMR = 4, kFloatNR = 3;
constexpr int kQ8MR = 2, kQ8NR = 4;
// Tokens per pass over a range of weight rows: their activations (<= 64 x
// 16 KiB for a 4096-wide F32 row) stay in L2 while the rows are swept.
constexpr int64_t kTokenBlock = 64;

template <typename L>
using FloatTileFn = void (*)(const float*, int64_t, const typename L::T*, int64_t, int64_t, float*, int64_t);

template <typename L, int MR, int... NR>
constexpr std::array<FloatTileFn<L>, sizeof...(NR)> FloatRow(std::integer_sequence<int, NR...>) {
  return {&TileFloat<L, MR, NR + 1>...};
}

template <typename L, int... MR>
constexpr std::array<std::array<FloatTileFn<L>, kFloatNR>, sizeof...(MR)> FloatTable(
    std::integer_sequence<int, MR...>) {
  return {FloatRow<L, MR + 1>(std::make_integer_sequence<int, kFloatNR>())...};
}

template <typename L>
TANDEM_AVX2 void RangeFloat(const float* x, int64_t rows, const Weight& w, float* out, int64_t o_begin,
                            int64_t o_end) {
  static constexpr auto kTiles = FloatTable<L>(std::make_integer_sequence<int, kFloatMR>());
  const auto* wt = static_cast<const typename L::T*>(w.data);
  const int64_t n = w.cols;
  for (int64_t tb = 0; tb < rows; tb += kTokenBlock) {
    const int64_t te = std::min(rows, tb + kTokenBlock);
    for (int64_t o = o_begin; o < o_end; o += kFloatMR) {
      const int64_t mr = std::min<int64_t>(kFloatMR, o_end - o);
      for (int64_t t = tb; t < te; t += kFloatNR) {
        const int64_t nr = std::min<int64_t>(kFloatNR, te - t);
        kTiles[mr - 1][nr - 1](x + t * n, n, wt + o * n, n, n, out + t * w.rows + o, w.rows);
      }
    }
  }
}

using Q8TileFn = void (*)(const QuantizedRows&, int64_t, const uint8_t*, int64_t, float*, int64_t);

template <int MR, int... NR>
constexpr std::array<Q8TileFn, sizeof...(NR)> Q8Row(std::integer_sequence<int, NR...>) {
  return {&TileQ8_0<MR, NR + 1>...};
}

template <int... MR>
constexpr std::array<std::array<Q8TileFn, kQ8NR>, sizeof...(MR)> Q8Table(std::integer_sequence<int, MR...>) {
  return {Q8Row<MR + 1>(std::make_integer_sequence<int, kQ8NR>())...};
}

TANDEM_AVX2 void RangeQ8_0(const QuantizedRows& xq, int64_t rows, const Weight& w, float* out,
                           int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = Q8Table(std::make_integer_sequence<int, kQ8MR>());
  const auto* wt = static_cast<const uint8_t*>(w.data);
  const int64_t ldw = DTypeBytes(DType::kQ8_0, w.cols);
  for (int64_t tb = 0; tb < rows; tb += kTokenBlock) {
    const int64_t te = std::min(rows, tb + kTokenBlock);
    for (int64_t o = o_begin; o < o_end; o += kQ8MR) {
      const int64_t mr = std::min<int64_t>(kQ8MR, o_end - o);
      for (int64_t t = tb; t < te; t += kQ8NR) {
        const int64_t nr = std::min<int64_t>(kQ8NR, te - t);
        kTiles[mr - 1][nr - 1](xq, t, wt + o * ldw, ldw, out + t * w.rows + o, w.rows);
      }
    }
  }
}

// Per 32-block: d = max|x| / 127, q = round-to-nearest-even(x * 127 / max|x|)
// (llama.cpp's quantize_row_q8_0, with d kept in F32). Depends only on the row.
void QuantizeRow(const float* x, int64_t n, float* d, int8_t* q) {
  for (int64_t b = 0; b < n / kQ8_0BlockElements; ++b) {
    const float* xb = x + b * kQ8_0BlockElements;
    float amax = 0;
    for (int i = 0; i < kQ8_0BlockElements; ++i) amax = std::max(amax, std::abs(xb[i]));
    d[b] = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    for (int i = 0; i < kQ8_0BlockElements; ++i) {
      q[b * kQ8_0BlockElements + i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
    }
  }
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// Below this many multiply-adds an op runs on the calling thread: waking
// workers costs more than it saves.
constexpr int64_t kParallelThreshold = 1 << 15;

void ForChunks(ThreadPool* pool, int64_t work, int64_t out_cols, int64_t chunk,
               absl::FunctionRef<void(int64_t, int64_t)> fn) {
  const int64_t chunks = (out_cols + chunk - 1) / chunk;
  auto run = [&](int64_t c) { fn(c * chunk, std::min(out_cols, (c + 1) * chunk)); };
  if (pool == nullptr || work < kParallelThreshold) {
    for (int64_t c = 0; c < chunks; ++c) run(c);
  } else {
    pool->ParallelFor(chunks, run);
  }
}

}  // namespace

GemmPath DefaultGemmPath() {
  static const GemmPath path = CpuHasAvx2() ? GemmPath::kAvx2 : GemmPath::kScalar;
  return path;
}

const char* GemmPathName(GemmPath path) { return path == GemmPath::kAvx2 ? "avx2+fma+f16c" : "scalar"; }

void MatMul(GemmPath path, ThreadPool* pool, const float* x, int64_t rows, const Weight& w, float* out) {
  const int64_t work = rows * w.rows * w.cols;
  // Weight rows per work item: small for decode (balance), larger for
  // batches (fewer passes over the activations). A multiple of every MR.
  const int64_t chunk = rows <= 4 ? 16 : 64;
  if (path == GemmPath::kScalar) {
    ForChunks(pool, work, w.rows, 16, [&](int64_t b, int64_t e) { RangeScalar(x, rows, w, out, b, e); });
    return;
  }
  switch (w.dtype) {
    case DType::kF32:
      ForChunks(pool, work, w.rows, chunk,
                [&](int64_t b, int64_t e) { RangeFloat<LoadF32>(x, rows, w, out, b, e); });
      return;
    case DType::kF16:
      ForChunks(pool, work, w.rows, chunk,
                [&](int64_t b, int64_t e) { RangeFloat<LoadF16>(x, rows, w, out, b, e); });
      return;
    case DType::kBF16:
      ForChunks(pool, work, w.rows, chunk,
                [&](int64_t b, int64_t e) { RangeFloat<LoadBF16>(x, rows, w, out, b, e); });
      return;
    case DType::kQ8_0: {
      const int64_t nb = w.cols / kQ8_0BlockElements;
      thread_local std::vector<float> scales;
      thread_local std::vector<int8_t> quants;
      scales.resize(rows * nb);
      quants.resize(rows * w.cols);
      for (int64_t r = 0; r < rows; ++r) {
        QuantizeRow(x + r * w.cols, w.cols, scales.data() + r * nb, quants.data() + r * w.cols);
      }
      const QuantizedRows xq{scales.data(), quants.data(), nb};
      ForChunks(pool, work, w.rows, chunk, [&](int64_t b, int64_t e) { RangeQ8_0(xq, rows, w, out, b, e); });
      return;
    }
  }
}

}  // namespace tandem::kernels::cpu
