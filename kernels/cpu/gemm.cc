// See gemm.h. The AVX2 path is compiled per function with target attributes
// because the tree is built for generic x86-64; nothing here relies on FP
// contraction (-ffp-contract=off): every FMA is an explicit intrinsic.
#include "kernels/cpu/gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/dtype.h"
#include "kernels/cpu/scalar_dot.h"

namespace tandem::kernels::cpu {
namespace {

// ---------------------------------------------------------------------------
// Scalar path: the loops the backend ran before the AVX2 kernels, kept for
// CPUs without AVX2/FMA/F16C and as the reference gemm_test.cc compares with.

// (kLanes, CombineLanes, DotScalar, DotF32Scalar: scalar_dot.h.)

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

// Q4_0 row: n / 32 blocks of {f16 scale, 16 bytes of nibbles}; F32 activations.
inline float DotQ4_0Scalar(const float* a, const uint8_t* b, int64_t n) {
  float total = 0;
  float q[kQ4_0BlockElements];
  for (int64_t blk = 0; blk < n / kQ4_0BlockElements; ++blk) {
    const uint8_t* p = b + blk * kQ4_0BlockBytes;
    for (int j = 0; j < 16; ++j) {
      q[j] = static_cast<float>((p[2 + j] & 0x0F) - 8);
      q[j + 16] = static_cast<float>((p[2 + j] >> 4) - 8);
    }
    const float* x = a + blk * kQ4_0BlockElements;
    float acc[kLanes] = {};
    for (int i = 0; i < kQ4_0BlockElements; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * q[i + l];
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
      return DotScalar(x, reinterpret_cast<const uint16_t*>(row), n,
                       [](uint16_t v) { return HalfToFloat(v); });
    case DType::kBF16:
      return DotScalar(x, reinterpret_cast<const uint16_t*>(row), n,
                       [](uint16_t v) { return BF16ToFloat(v); });
    case DType::kQ8_0:
      return DotQ8_0Scalar(x, row, n);
    case DType::kQ4_0:
      return DotQ4_0Scalar(x, row, n);
    case DType::kQ4_K: {
      // Dequantize-then-F32: the reference itself, one row at a time.
      thread_local std::vector<float> dequantized;
      dequantized.resize(n);
      DequantizeRow(DType::kQ4_K, row, n, dequantized.data());
      return DotF32Scalar(x, dequantized.data(), n);
    }
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

// How far ahead of the loads each weight row is prefetched.
constexpr int kPrefetchBytes = 1024;

// Where a one-token tile prefetches, as a byte offset from the start of a
// row (or panel) of `row_bytes` it reads at `at`: kPrefetchBytes ahead, and
// once that passes the row's end, on into the row `stride` rows further,
// the one this tile slot reads next (the next tile's). Plain "kPrefetchBytes
// ahead" ran into the next row, which the same tile was already reading, so
// for 110m's 1.5 KiB rows (K = 768) only the first third of each row was
// asked for early and each tile started on cold misses: 110m F16 decode
// step (gemm_test DecodeModelShapes, alternating, 14:29 UTC 2026-12-04)
// 5.3 -> 3.9 ms, BF16 4.8 -> 3.6, Q8_0 2.4 -> 2.1, Q4_0 1.27 -> 1.11;
// cpu_generate_bench 110m F16 decode after 512 tokens 116-121 -> 158-164
// tok/s. The arithmetic is untouched.
inline int64_t DecodePrefetchAt(int64_t at, int64_t row_bytes, int64_t stride) {
  const int64_t ahead = at + kPrefetchBytes;
  return ahead < row_bytes ? ahead : ahead + (stride - 1) * row_bytes;
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
    for (int i = 0; i < MR; ++i) {
      // Each weight row is its own stream; asking for it kPrefetchBytes
      // ahead keeps enough misses in flight for decode to reach DRAM speed.
      _mm_prefetch(reinterpret_cast<const char*>(w + i * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
      wv[i] = L::Load(w + i * ldw + k);
    }
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
  // For Q4_0 on the AVX-512 path: 8 x the sum of each 4 consecutive q (one
  // int32 lane of vpdpbusd), row r's at sum4[r * n / 4 ..].
  const int32_t* sum4 = nullptr;
  // For Q4_K: each 32-block's d times the sum of its q, row r's at
  // dsum[r * nb ..] (what the block's weight min multiplies); and each pair
  // of blocks' scales as one 16-lane vector (8 x d of block 2p, 8 x d of
  // 2p + 1), row r's at dpair[r * n / 4 ..].
  const float* dsum = nullptr;
  const float* dpair = nullptr;
};

// The 32 int8 values of one weight block (after its F16 scale), by format.
struct BlockQ8_0 {
  static constexpr int kBytes = kQ8_0BlockBytes;
  TANDEM_AVX2 static __m256i Quants(const uint8_t* blk) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  }
};
// Q4_0: low nibbles are elements 0-15, high nibbles 16-31; minus 8.
struct BlockQ4_0 {
  static constexpr int kBytes = kQ4_0BlockBytes;
  TANDEM_AVX2 static __m256i Quants(const uint8_t* blk) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m256i nib =
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    return _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
  }
};

// Q8_0 (and Q4_0, its values unpacked to int8 by B) tile: MR weight rows x NR token rows. Per 32-block the
// integer dot product is exact (|w| <= 128 unsigned times |x| <= 127, pair sums < 2^15), then one FMA adds
// d_w * d_x * sum into the element's 8-lane accumulator. The weight takes the absolute value (unsigned -128
// is 128) and the activation its sign, as llama.cpp's mul_sum_i8_pairs_float.
template <typename B, int MR, int NR>
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
      const uint8_t* blk = w + i * ldw_bytes + b * B::kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes, _MM_HINT_T0);
      uint16_t h;
      std::memcpy(&h, blk, 2);
      wd[i] = _cvtsh_ss(h);
      wq[i] = B::Quants(blk);
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

// Visits the tiles covering weight rows [o_begin, o_end) x tokens [0, rows):
// token blocks of kTokenBlock, MR-row panels, NR-token groups; fn(tile, o, t)
// with the table entry for the tile's actual size.
template <typename Table, typename Fn>
inline void SweepTiles(const Table& tiles, int64_t mr_max, int64_t nr_max, int64_t rows, int64_t o_begin,
                       int64_t o_end, Fn fn, int64_t token_block = kTokenBlock) {
  for (int64_t tb = 0; tb < rows; tb += token_block) {
    const int64_t te = std::min(rows, tb + token_block);
    for (int64_t o = o_begin; o < o_end; o += mr_max) {
      const int64_t mr = std::min(mr_max, o_end - o);
      for (int64_t t = tb; t < te; t += nr_max) fn(tiles[mr - 1][std::min(nr_max, te - t) - 1], o, t);
    }
  }
}

// F16/BF16 with several tokens on AVX2: each 4-row panel is converted to F32
// once per token block and the F32 tiles run on it, so the conversions
// (2 uops each) stop competing with the FMAs. Conversion is exact, so every
// FMA sees the same operands as in the direct tiles: identical results.
constexpr int64_t kConvertMinRows = 8;

template <typename L>
TANDEM_AVX2 void RangeFloatConverted(const float* x, int64_t rows, const Weight& w, float* out,
                                     int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = FloatTable<LoadF32>(std::make_integer_sequence<int, kFloatMR>());
  const auto* wt = static_cast<const typename L::T*>(w.data);
  const int64_t n = w.cols;
  thread_local std::vector<float> panel;
  panel.resize(kFloatMR * n);
  for (int64_t tb = 0; tb < rows; tb += kTokenBlock) {
    const int64_t te = std::min(rows, tb + kTokenBlock);
    for (int64_t o = o_begin; o < o_end; o += kFloatMR) {
      const int64_t mr = std::min<int64_t>(kFloatMR, o_end - o);
      for (int64_t i = 0; i < mr; ++i) {
        const typename L::T* src = wt + (o + i) * n;
        float* dst = panel.data() + i * n;
        int64_t k = 0;
        for (; k + 8 <= n; k += 8) _mm256_storeu_ps(dst + k, L::Load(src + k));
        for (; k < n; ++k) dst[k] = L::One(src[k]);
      }
      for (int64_t t = tb; t < te; t += kFloatNR) {
        kTiles[mr - 1][std::min<int64_t>(kFloatNR, te - t) - 1](x + t * n, n, panel.data(), n, n,
                                                                out + t * w.rows + o, w.rows);
      }
    }
  }
}

template <typename L>
TANDEM_AVX2 void RangeFloat(const float* x, int64_t rows, const Weight& w, float* out, int64_t o_begin,
                            int64_t o_end) {
  if constexpr (!std::is_same_v<L, LoadF32>) {
    if (rows >= kConvertMinRows) {
      RangeFloatConverted<L>(x, rows, w, out, o_begin, o_end);
      return;
    }
  }
  static constexpr auto kTiles = FloatTable<L>(std::make_integer_sequence<int, kFloatMR>());
  SweepTiles(kTiles, kFloatMR, kFloatNR, rows, o_begin, o_end, [&](auto tile, int64_t o, int64_t t) {
    tile(x + t * w.cols, w.cols, static_cast<const typename L::T*>(w.data) + o * w.cols, w.cols, w.cols,
         out + t * w.rows + o, w.rows);
  });
}

using Q8TileFn = void (*)(const QuantizedRows&, int64_t, const uint8_t*, int64_t, float*, int64_t);

template <typename B, int MR, int... NR>
constexpr std::array<Q8TileFn, sizeof...(NR)> Q8Row(std::integer_sequence<int, NR...>) {
  return {&TileQ8_0<B, MR, NR + 1>...};
}

template <typename B, int... MR>
constexpr std::array<std::array<Q8TileFn, kQ8NR>, sizeof...(MR)> Q8Table(std::integer_sequence<int, MR...>) {
  return {Q8Row<B, MR + 1>(std::make_integer_sequence<int, kQ8NR>())...};
}

template <typename B>
TANDEM_AVX2 void RangeQ8_0(const QuantizedRows& xq, int64_t rows, const Weight& w, float* out,
                           int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = Q8Table<B>(std::make_integer_sequence<int, kQ8MR>());
  const int64_t ldw = DTypeBytes(w.dtype, w.cols);
  SweepTiles(kTiles, kQ8MR, kQ8NR, rows, o_begin, o_end, [&](auto tile, int64_t o, int64_t t) {
    tile(xq, t, static_cast<const uint8_t*>(w.data) + o * ldw, ldw, out + t * w.rows + o, w.rows);
  });
}

// ---------------------------------------------------------------------------
// AVX-512 path (F, BW, VL, DQ, VNNI): the same scheme with 16-lane
// accumulators and 32 registers, so larger tiles. Its own lane order, so its
// results differ from the AVX2 path's by float rounding; a machine runs one.

// GCC 12's AVX-512 headers initialise "undefined" vectors from themselves
// (_mm512_undefined_*), which -Wuninitialized reports at every use.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define TANDEM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

// The 16 lanes in one fixed order: lane i + lane i+8, then Hsum's order.
TANDEM_AVX512 inline float Hsum512(__m512 v) {
  return Hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

struct Load512F32 {
  using T = float;
  TANDEM_AVX512 static __m512 Load(const float* p) { return _mm512_loadu_ps(p); }
  static float One(float v) { return v; }
};
struct Load512F16 {
  using T = uint16_t;
  TANDEM_AVX512 static __m512 Load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static float One(uint16_t v) { return HalfToFloat(v); }
};
struct Load512BF16 {
  using T = uint16_t;
  TANDEM_AVX512 static __m512 Load(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static float One(uint16_t v) { return BF16ToFloat(v); }
};

template <typename L, int MR, int NR>
TANDEM_AVX512 void TileFloat512(const float* x, int64_t ldx, const typename L::T* w, int64_t ldw, int64_t n,
                                float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 wv[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      // Each weight row is its own stream; asking for it kPrefetchBytes
      // ahead keeps enough misses in flight for decode to reach DRAM speed.
      if constexpr (NR == 1) {  // decode: on into the next tile's rows
        constexpr int64_t kSize = sizeof(*w);
        _mm_prefetch(
            reinterpret_cast<const char*>(w + i * ldw) + DecodePrefetchAt(k * kSize, ldw * kSize, MR),
            _MM_HINT_T0);
      } else {
        _mm_prefetch(reinterpret_cast<const char*>(w + i * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
      }
      wv[i] = L::Load(w + i * ldw + k);
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  if (k < n) {  // ragged tail: one more FMA on zero-padded vectors
    alignas(64) float buf[16];
    __m512 wv[MR];
    for (int i = 0; i < MR; ++i) {
      std::fill(buf, buf + 16, 0.0f);
      for (int64_t j = k; j < n; ++j) buf[j - k] = L::One(w[i * ldw + j]);
      wv[i] = _mm512_load_ps(buf);
    }
    for (int t = 0; t < NR; ++t) {
      std::fill(buf, buf + 16, 0.0f);
      std::copy(x + t * ldx + k, x + t * ldx + n, buf);
      const __m512 xv = _mm512_load_ps(buf);
      for (int i = 0; i < MR; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum512(acc[i][t]);
  }
}

// Q8_0, two 32-blocks per step: lanes 0-7 take block b, lanes 8-15 block b+1
// (a lone last block leaves lanes 8-15 zero). The integer products use
// VNNI's dpbusd on |w| (unsigned) and x negated where w < 0: exact, as AVX2's.
template <typename B, int MR, int NR>
TANDEM_AVX512 void TileQ8_0_512(const QuantizedRows& xq, int64_t t0, const uint8_t* w, int64_t ldw_bytes,
                                float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  const int64_t n = xq.nb * kQ8_0BlockElements;
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t b = 0; b < xq.nb; b += 2) {
    const bool pair = b + 1 < xq.nb;
    __m512i wabs[MR];
    __mmask64 wneg[MR];
    __m512 wd[MR];  // lanes 0-7: block b's scale, 8-15: block b+1's
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const uint8_t* blk = w + i * ldw_bytes + b * B::kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes + 64, _MM_HINT_T0);
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const float d0 = _cvtsh_ss(h);
      __m256i hi = _mm256_setzero_si256();
      float d1 = 0.0f;
      if (pair) {
        std::memcpy(&h, blk + B::kBytes, 2);
        d1 = _cvtsh_ss(h);
        hi = B::Quants(blk + B::kBytes);
      }
      const __m512i wq = _mm512_inserti64x4(_mm512_zextsi256_si512(B::Quants(blk)), hi, 1);
      wabs[i] = _mm512_abs_epi8(wq);
      wneg[i] = _mm512_movepi8_mask(wq);
      wd[i] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const int64_t row = t0 + t;
      const int8_t* xp = xq.q + row * n + b * 32;
      const __m512i xv =
          pair ? _mm512_loadu_si512(xp)
               : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp)));
      const __m512 xd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(xq.d[row * xq.nb + b]),
                                             _mm512_set1_ps(pair ? xq.d[row * xq.nb + b + 1] : 0.0f));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512i sx = _mm512_mask_sub_epi8(xv, wneg[i], zero, xv);
        const __m512i p32 = _mm512_dpbusd_epi32(zero, wabs[i], sx);
        acc[i][t] = _mm512_fmadd_ps(_mm512_mul_ps(wd[i], xd), _mm512_cvtepi32_ps(p32), acc[i][t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum512(acc[i][t]);
  }
}

// Q4_0, two blocks per step as TileQ8_0_512, but the nibbles (0..15) go
// into vpdpbusd unsigned as they are and each lane then subtracts 8 x the
// sum of its 4 activations: the same integers as (q - 8) . x, so the same
// bits as the Q8_0 tiles on unpacked values, without unpacking to signed
// bytes or the sign trick.
template <int MR, int NR>
TANDEM_AVX512 void TileQ4_0_512(const QuantizedRows& xq, int64_t t0, const uint8_t* w, int64_t ldw_bytes,
                                float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  const int64_t n = xq.nb * kQ4_0BlockElements;
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < xq.nb; b += 2) {
    const bool pair = b + 1 < xq.nb;
    __m512i wq[MR];
    __m512 wd[MR];  // lanes 0-7: block b's scale, 8-15: block b+1's
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const uint8_t* blk = w + i * ldw_bytes + b * kQ4_0BlockBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes, _MM_HINT_T0);
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const float d0 = _cvtsh_ss(h);
      __m128i raw1 = _mm_setzero_si128();
      float d1 = 0.0f;
      if (pair) {
        std::memcpy(&h, blk + kQ4_0BlockBytes, 2);
        d1 = _cvtsh_ss(h);
        raw1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kQ4_0BlockBytes + 2));
      }
      // [qs_b | qs_b+1] -> 128-bit lanes lo_b, lo_b+1, hi_b, hi_b+1 -> element order.
      const __m256i raw = _mm256_set_m128i(raw1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
      const __m512i both = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1), low4);
      wq[i] = _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0));
      wd[i] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const int64_t row = t0 + t;
      const int8_t* xp = xq.q + row * n + b * 32;
      const int32_t* sp = xq.sum4 + row * (n / 4) + b * 8;
      const __m512i xv =
          pair ? _mm512_loadu_si512(xp)
               : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp)));
      const __m512i sx =
          pair ? _mm512_loadu_si512(sp)
               : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sp)));
      const __m512 xd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(xq.d[row * xq.nb + b]),
                                             _mm512_set1_ps(pair ? xq.d[row * xq.nb + b + 1] : 0.0f));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512i p32 = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, wq[i], xv), sx);
        acc[i][t] = _mm512_fmadd_ps(_mm512_mul_ps(wd[i], xd), _mm512_cvtepi32_ps(p32), acc[i][t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum512(acc[i][t]);
  }
}

// Q4_K: per super-block, each row's 8 scales and mins are unpacked once to
// F32 (d * scale, dmin * min: exact products) and the mins' share,
// sum_j dmin * min_j * d_x(j) * sum(q_x in sub-block j), goes into lanes 0-7
// of the output's accumulator by one FMA; then per 64 elements (two
// sub-blocks, 32 bytes of nibbles: low = sub-block 2c, high = 2c + 1, which
// is already the activations' order) the unsigned nibbles go into vpdpbusd
// against the int8 activations and each lane adds d_w * scale * d_x * its
// integer sum. A fixed sequence of FMAs per lane whatever the tile: the same
// bits for every batch and thread count.
struct BlockQ4_K {};

template <int MR, int NR>
TANDEM_AVX512 void TileQ4_K_512(const QuantizedRows& xq, int64_t t0, const uint8_t* w, int64_t ldw_bytes,
                                float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  const int64_t n = xq.nb * kQ8_0BlockElements;
  const __m512i zero = _mm512_setzero_si512();
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t s = 0; s < n / kQ4_KBlockElements; ++s) {
    __m512 wsc[MR];  // lanes 0-7: d * scale_j
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const uint8_t* blk = w + i * ldw_bytes + s * kQ4_KBlockBytes;
      for (int p = 0; p < 3; ++p) {
        _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes + 64 * p, _MM_HINT_T0);
      }
      // The 12 scale bytes to 8 scales then 8 mins, one byte each (GGML's
      // kmask shuffle in ggml_vec_dot_q4_K_q8_K; Q4_KScaleMin per value).
      uint32_t u[4];
      std::memcpy(u, blk + 4, 12);
      u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
      const uint32_t mins_lo = u[1] & 0x3f3f3f3f;
      u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
      u[2] = mins_lo;
      u[0] &= 0x3f3f3f3f;
      const __m128i sm = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
      wsc[i] = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk[0] | blk[1] << 8)),
                                                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm))));
      const __m512 wmn = _mm512_zextps256_ps512(
          _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(blk[2] | blk[3] << 8)),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8)))));
#pragma GCC unroll 16
      for (int t = 0; t < NR; ++t) {
        const __m512 xs = _mm512_zextps256_ps512(_mm256_loadu_ps(xq.dsum + (t0 + t) * xq.nb + s * 8));
        acc[i][t] = _mm512_fnmadd_ps(wmn, xs, acc[i][t]);
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512i pick =
          _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(2 * c), _mm512_set1_epi32(2 * c + 1));
      __m512i wq[MR];
      __m512 ws[MR];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const uint8_t* qs = w + i * ldw_bytes + s * kQ4_KBlockBytes + 16 + 32 * c;
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
        wq[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(raw, low4)),
                                   _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), 1);
        ws[i] = _mm512_permutexvar_ps(pick, wsc[i]);
      }
      const int64_t b = s * 8 + 2 * c;  // the first 32-block of these 64 elements
#pragma GCC unroll 16
      for (int t = 0; t < NR; ++t) {
        const int64_t row = t0 + t;
        const __m512i xv = _mm512_loadu_si512(xq.q + row * n + b * 32);
        const __m512 xd = _mm512_loadu_ps(xq.dpair + row * (n / 4) + b * 8);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
          const __m512i p32 = _mm512_dpbusd_epi32(zero, wq[i], xv);
          acc[i][t] = _mm512_fmadd_ps(_mm512_mul_ps(ws[i], xd), _mm512_cvtepi32_ps(p32), acc[i][t]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum512(acc[i][t]);
  }
}

constexpr int k512MR = 4, k512NR = 6;
// The float tiles for K <= kTallMaxK: 6 weight rows x 4 tokens. A tile's
// 6-row panel (24 KiB of F16 at K = 2048) stays in L1 while the token
// groups stream from L2, and 4 x 64 bytes of activations per 24 FMAs
// instead of 6 x 64 halve the L2 traffic that bounds the 4 x 6 tiles (F32
// weights, twice the bytes, ran slower than F16 at 240 GFLOP/s; gemm_test
// ModelShapes F16, alternating: 110m 768 x 2048 321-327 -> 373, llama-1b's
// K = 2048 matrices 326-337 -> 342-362). At K = 8192 the panel no longer
// fits L1 and 6 x 4 ran at 300 against 334-340: 4 x 6 there. The shape
// changes no output's arithmetic. The BF16 dot tiles too (110m/1b K <=
// 2048 matrices 470-545 -> 487-610 GFLOP/s, alternating).
constexpr int k512TallMR = 6, k512TallNR = 4;
constexpr int64_t kTallMaxK = 4096;
constexpr int k512Q8MR = 4, k512Q8NR = 4;
// Decode (one token): 8 weight rows per tile, so 8 streams are in flight
// from DRAM instead of 4 (gemm_test's Throughput, 8192 x 4096, 1 token:
// F16/BF16 56-60 -> 63-69 GB/s). Every output's accumulator sees the same
// FMAs as in the batched tiles, so the bits do not change. Not for Q8_0 and
// Q4_0: their one-token tiles are bound by unpacking, not by DRAM (8 rows:
// Q8_0 the same, Q4_0 141 -> 117 GFLOP/s).
constexpr int k512DecodeMR = 8;

// Tokens per pass over a work item's weight rows on the AVX-512 float
// tiles: as many as keep their activations (x_bytes each per element)
// within 512 KiB of L2, in whole tile widths, 12..kTokenBlock. 64 tokens of
// llama-1b's K = 8192 were 2 MiB, streamed from L3 for every tile: its
// down projection ran at 215-236 GFLOP/s against 320-330 for K = 2048, and
// at 329-336 with 12 tokens (gemm_test ModelShapes, TANDEM_GEMM_BENCH_SHAPE=1b).
// Which tokens share a pass changes no output's arithmetic.
inline int64_t TokenBlock512(int64_t k, int64_t x_bytes, int64_t nr = k512NR) {
  return std::clamp<int64_t>((int64_t{512} << 10) / (x_bytes * k) / nr * nr, 2 * nr, kTokenBlock);
}

// One token: `wide` (an MR-row, 1-token tile) over [o_begin, o_end), the
// table's 1-token tiles for the rest.
template <typename Tile, typename Table, typename Fn>
inline void SweepDecode(Tile wide, const Table& tiles, int64_t o_begin, int64_t o_end, Fn fn) {
  int64_t o = o_begin;
  for (; o + k512DecodeMR <= o_end; o += k512DecodeMR) fn(wide, o, 0);
  const int64_t mr_max = static_cast<int64_t>(tiles.size());
  for (; o < o_end; o += mr_max) fn(tiles[std::min(mr_max, o_end - o) - 1][0], o, 0);
}

template <typename L, int MR, int... NR>
constexpr std::array<FloatTileFn<L>, sizeof...(NR)> Float512Row(std::integer_sequence<int, NR...>) {
  return {&TileFloat512<L, MR, NR + 1>...};
}

template <typename L, int NRMax, int... MR>
constexpr std::array<std::array<FloatTileFn<L>, NRMax>, sizeof...(MR)> Float512Table(
    std::integer_sequence<int, MR...>) {
  return {Float512Row<L, MR + 1>(std::make_integer_sequence<int, NRMax>())...};
}

// B = BlockQ4_0 selects TileQ4_0_512.
template <typename B, int MR, int... NR>
constexpr std::array<Q8TileFn, sizeof...(NR)> Q8_512Row(std::integer_sequence<int, NR...>) {
  if constexpr (std::is_same_v<B, BlockQ4_0>) {
    return {&TileQ4_0_512<MR, NR + 1>...};
  } else if constexpr (std::is_same_v<B, BlockQ4_K>) {
    return {&TileQ4_K_512<MR, NR + 1>...};
  } else {
    return {&TileQ8_0_512<B, MR, NR + 1>...};
  }
}

template <typename B, int... MR>
constexpr std::array<std::array<Q8TileFn, k512Q8NR>, sizeof...(MR)> Q8_512Table(
    std::integer_sequence<int, MR...>) {
  return {Q8_512Row<B, MR + 1>(std::make_integer_sequence<int, k512Q8NR>())...};
}

template <typename L>
TANDEM_AVX512 void RangeFloat512(const float* x, int64_t rows, const Weight& w, float* out, int64_t o_begin,
                                 int64_t o_end) {
  static constexpr auto kTiles = Float512Table<L, k512NR>(std::make_integer_sequence<int, k512MR>());
  static constexpr auto kTallTiles =
      Float512Table<L, k512TallNR>(std::make_integer_sequence<int, k512TallMR>());
  auto run = [&](auto tile, int64_t o, int64_t t) {
    tile(x + t * w.cols, w.cols, static_cast<const typename L::T*>(w.data) + o * w.cols, w.cols, w.cols,
         out + t * w.rows + o, w.rows);
  };
  if (rows == 1) {
    SweepDecode(&TileFloat512<L, k512DecodeMR, 1>, kTiles, o_begin, o_end, run);
    return;
  }
  if (w.cols <= kTallMaxK) {
    SweepTiles(kTallTiles, k512TallMR, k512TallNR, rows, o_begin, o_end, run,
               TokenBlock512(w.cols, sizeof(float), k512TallNR));
    return;
  }
  SweepTiles(kTiles, k512MR, k512NR, rows, o_begin, o_end, run, TokenBlock512(w.cols, sizeof(float)));
}

template <typename B>
TANDEM_AVX512 void RangeQ8_0_512(const QuantizedRows& xq, int64_t rows, const Weight& w, float* out,
                                 int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = Q8_512Table<B>(std::make_integer_sequence<int, k512Q8MR>());
  const int64_t ldw = DTypeBytes(w.dtype, w.cols);
  auto run = [&](auto tile, int64_t o, int64_t t) {
    tile(xq, t, static_cast<const uint8_t*>(w.data) + o * ldw, ldw, out + t * w.rows + o, w.rows);
  };
  SweepTiles(kTiles, k512Q8MR, k512Q8NR, rows, o_begin, o_end, run);
}

// Q4_0 and Q8_0 packed at load (gemm.h PackedWeight): panels of kPanelRows
// rows; per pair of 32-blocks, both blocks' 16 F16 scales (32 bytes each),
// then each block's quants as F::kVectors 64-byte vectors, lane r of vector
// j holding row r's quant bytes 4j..4j+3. Unsigned for vpdpbusd: Q4_0's
// nibbles as they are (q = u - 8), Q8_0's int8 with the sign bit flipped
// (q = u - 128); the bias times the block's activation sum comes off the
// integer sum.
constexpr int kPanelRows = 16;
constexpr int kPackedNR = 8;

struct PackedQ4_0 {
  static constexpr int kVectors = 4;  // low nibbles: elements 4j.., high: 16 + 4j..
  static constexpr int32_t kBias = 8;
  static constexpr int kBlockBytes = kQ4_0BlockBytes;
  TANDEM_AVX512 static void Unpack(const uint8_t* qs, __m512i (&wq)[8]) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i z = _mm512_load_si512(qs + 64 * j);
      wq[j] = _mm512_and_si512(z, low4);
      wq[j + 4] = _mm512_and_si512(_mm512_srli_epi16(z, 4), low4);
    }
  }
  static uint8_t Byte(uint8_t b) { return b; }
};
struct PackedQ8_0 {
  static constexpr int kVectors = 8;
  static constexpr int32_t kBias = 128;
  static constexpr int kBlockBytes = kQ8_0BlockBytes;
  TANDEM_AVX512 static void Unpack(const uint8_t* qs, __m512i (&wq)[8]) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) wq[j] = _mm512_load_si512(qs + 64 * j);
  }
  static uint8_t Byte(uint8_t b) { return b ^ 0x80; }
};

template <typename F>
constexpr int64_t kPackedPairBytes = 2 * (32 + 64 * F::kVectors);

template <typename F>
int64_t PackedPanelBytes(int64_t cols) {
  return (cols / kQ8_0BlockElements + 1) / 2 * kPackedPairBytes<F>;
}

// One panel x NR tokens. Per block, each token's integer sums: the unsigned
// quants against its int8 activations by 8 vpdpbusd (two chains of 4 to
// shorten the latency; integer, so exact in any order), minus the bias x
// the block's activation sum (bsum), the same integers as q . x; then
// acc = fma(d_w * d_x, float(sum), acc) in every output's own lane. Nothing
// here depends on NR or the panel's place: every output sees the same ops.
template <typename F, int NR>
TANDEM_AVX512 void TilePacked(const QuantizedRows& xq, const int32_t* bsum, int64_t t0, const uint8_t* panel,
                              float* out, int64_t ldo, __mmask16 keep) {
  __m512 acc[NR];
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) acc[t] = _mm512_setzero_ps();
  const int64_t nb = xq.nb, n = nb * kQ8_0BlockElements;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pair = panel + (b >> 1) * kPackedPairBytes<F>;
    const uint8_t* qs = pair + 64 + (b & 1) * 64 * F::kVectors;
#pragma GCC unroll 8
    for (int j = 0; j < F::kVectors; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(qs) + kPrefetchBytes + 64 * j, _MM_HINT_T0);
    }
    const __m512 dw =
        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(pair + (b & 1) * 32)));
    __m512i wq[8];
    F::Unpack(qs, wq);
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const int64_t row = t0 + t;
      int32_t x4[8];
      std::memcpy(x4, xq.q + row * n + b * kQ8_0BlockElements, 32);
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[0], _mm512_set1_epi32(x4[0]));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[4], _mm512_set1_epi32(x4[4]));
#pragma GCC unroll 4
      for (int j = 1; j < 4; ++j) {
        s0 = _mm512_dpbusd_epi32(s0, wq[j], _mm512_set1_epi32(x4[j]));
        s1 = _mm512_dpbusd_epi32(s1, wq[j + 4], _mm512_set1_epi32(x4[j + 4]));
      }
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(bsum[row * nb + b]));
      acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(xq.d[row * nb + b])), _mm512_cvtepi32_ps(sum),
                               acc[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) _mm512_mask_storeu_ps(out + t * ldo, keep, acc[t]);
}

// One token over kDecodePanels adjacent panels (panel_bytes apart): each
// panel's lanes take exactly TilePacked<F, 1>'s ops, but the panels' chains
// interleave and their weights stream side by side, where one panel per
// tile left the one-token tiles short of DRAM speed (a llama-1b Q4_0 decode
// step's matmuls read 35 GB/s where F16's read 52; two panels: Q8_0
// 25.9-30.0 -> 20.9-23.7 ms, Q4_0 15.3-17.8 -> 15.0-16.0, gemm_test
// DecodeModelShapes with TANDEM_GEMM_BENCH_SHAPE=1b, alternating).
constexpr int kDecodePanels = 2;

template <typename F>
TANDEM_AVX512 void TilePackedDecode(const QuantizedRows& xq, const int32_t* bsum, int64_t row,
                                    const uint8_t* panel, int64_t panel_bytes, float* out) {
  __m512 acc[kDecodePanels];
#pragma GCC unroll 4
  for (int p = 0; p < kDecodePanels; ++p) acc[p] = _mm512_setzero_ps();
  const int64_t nb = xq.nb, n = nb * kQ8_0BlockElements;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t x4[8];
    std::memcpy(x4, xq.q + row * n + b * kQ8_0BlockElements, 32);
    const __m512i bs = _mm512_set1_epi32(bsum[row * nb + b]);
    const __m512 xd = _mm512_set1_ps(xq.d[row * nb + b]);
#pragma GCC unroll 4
    for (int p = 0; p < kDecodePanels; ++p) {
      const uint8_t* pair = panel + p * panel_bytes + (b >> 1) * kPackedPairBytes<F>;
      const uint8_t* qs = pair + 64 + (b & 1) * 64 * F::kVectors;
      // On into the next tile's panels past this one's end (DecodePrefetchAt).
      const int64_t at = DecodePrefetchAt(qs - (panel + p * panel_bytes), panel_bytes, kDecodePanels);
      const char* ahead = reinterpret_cast<const char*>(panel + p * panel_bytes) + at;
#pragma GCC unroll 8
      for (int j = 0; j < F::kVectors; ++j) _mm_prefetch(ahead + 64 * j, _MM_HINT_T0);
      const __m512 dw =
          _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(pair + (b & 1) * 32)));
      __m512i wq[8];
      F::Unpack(qs, wq);
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[0], _mm512_set1_epi32(x4[0]));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[4], _mm512_set1_epi32(x4[4]));
#pragma GCC unroll 4
      for (int j = 1; j < 4; ++j) {
        s0 = _mm512_dpbusd_epi32(s0, wq[j], _mm512_set1_epi32(x4[j]));
        s1 = _mm512_dpbusd_epi32(s1, wq[j + 4], _mm512_set1_epi32(x4[j + 4]));
      }
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), bs);
      acc[p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd), _mm512_cvtepi32_ps(sum), acc[p]);
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < kDecodePanels; ++p) _mm512_storeu_ps(out + p * kPanelRows, acc[p]);
}

// Q4_K packed: per 256-element super-block and panel, the 16 rows' F16 d
// then F16 dmin (64 bytes), each sub-block j's 16 six-bit scales (bytes
// [j][r], 128) then mins (128), then per 64 elements c the 16 rows' 32
// quant bytes as 8 vectors, lane r of vector v holding row r's bytes
// 4v..4v+3 (low nibbles: sub-block 2c, high: 2c + 1). 2,368 bytes where the
// source has 2,304.
struct PackedQ4_K {
  static constexpr int64_t kSuperBytes = 64 + 256 + 4 * 512;
};

int64_t PackedQ4_KPanelBytes(int64_t cols) { return cols / kQ4_KBlockElements * PackedQ4_K::kSuperBytes; }

// 16 bytes (64-byte aligned at p) as 16 floats.
TANDEM_AVX512 inline __m512 Bytes16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p))));
}

// One panel x NR tokens, per sub-block j of 32 elements: the nibbles against
// the int8 activations by 8 vpdpbusd (exact), then two FMAs in each output's
// own lane: acc += (d * scale_j) * d_x * float(sum), acc -= (dmin * min_j) *
// (d_x * sum of q_x) (xq.dsum). d * scale_j and dmin * min_j are exact
// products (11 x 6 bits). A fixed sequence per output whatever NR or panel.
template <int NR>
TANDEM_AVX512 void TilePackedQ4_K(const QuantizedRows& xq, const int32_t*, int64_t t0, const uint8_t* panel,
                                  float* out, int64_t ldo, __mmask16 keep) {
  __m512 acc[NR];
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) acc[t] = _mm512_setzero_ps();
  const int64_t nb = xq.nb, n = nb * kQ8_0BlockElements;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t s = 0; s < n / kQ4_KBlockElements; ++s) {
    const uint8_t* sb = panel + s * PackedQ4_K::kSuperBytes;
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sb)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sb + 32)));
    for (int j = 0; j < 8; ++j) {
      const uint8_t* qs = sb + 320 + (j / 2) * 512;
#pragma GCC unroll 8
      for (int v = 0; v < 8; v += 2) {
        _mm_prefetch(reinterpret_cast<const char*>(qs) + kPrefetchBytes + 64 * (v + j % 2), _MM_HINT_T0);
      }
      const __m512 dsc = _mm512_mul_ps(d, Bytes16(sb + 64 + 16 * j));
      const __m512 dmn = _mm512_mul_ps(dmin, Bytes16(sb + 192 + 16 * j));
      __m512i wq[8];
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        const __m512i z = _mm512_load_si512(qs + 64 * v);
        wq[v] = _mm512_and_si512(j % 2 == 0 ? z : _mm512_srli_epi16(z, 4), low4);
      }
      const int64_t blk = s * 8 + j;
#pragma GCC unroll 16
      for (int t = 0; t < NR; ++t) {
        const int64_t row = t0 + t;
        int32_t x4[8];
        std::memcpy(x4, xq.q + row * n + blk * kQ8_0BlockElements, 32);
        __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[0], _mm512_set1_epi32(x4[0]));
        __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[4], _mm512_set1_epi32(x4[4]));
#pragma GCC unroll 4
        for (int v = 1; v < 4; ++v) {
          s0 = _mm512_dpbusd_epi32(s0, wq[v], _mm512_set1_epi32(x4[v]));
          s1 = _mm512_dpbusd_epi32(s1, wq[v + 4], _mm512_set1_epi32(x4[v + 4]));
        }
        const __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dsc, _mm512_set1_ps(xq.d[row * nb + blk])), sum, acc[t]);
        acc[t] = _mm512_fnmadd_ps(dmn, _mm512_set1_ps(xq.dsum[row * nb + blk]), acc[t]);
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) _mm512_mask_storeu_ps(out + t * ldo, keep, acc[t]);
}

using PackedTileFn = void (*)(const QuantizedRows&, const int32_t*, int64_t, const uint8_t*, float*, int64_t,
                              __mmask16);

template <typename F, int... NR>
constexpr std::array<PackedTileFn, sizeof...(NR)> PackedTable(std::integer_sequence<int, NR...>) {
  if constexpr (std::is_same_v<F, PackedQ4_K>) {
    return {&TilePackedQ4_K<NR + 1>...};
  } else {
    return {&TilePacked<F, NR + 1>...};
  }
}

template <typename F>
int64_t PanelBytes(int64_t cols) {
  if constexpr (std::is_same_v<F, PackedQ4_K>) {
    return PackedQ4_KPanelBytes(cols);
  } else {
    return PackedPanelBytes<F>(cols);
  }
}

// Output rows [o_begin, o_end), o_begin a multiple of kPanelRows.
template <typename F>
TANDEM_AVX512 void RangePacked(const QuantizedRows& xq, const int32_t* bsum, int64_t rows,
                               const PackedWeight& pw, float* out, int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = PackedTable<F>(std::make_integer_sequence<int, kPackedNR>());
  const int64_t ldo = pw.source.rows, panel_bytes = PanelBytes<F>(pw.source.cols);
  for (int64_t tb = 0; tb < rows; tb += kTokenBlock) {
    const int64_t te = std::min(rows, tb + kTokenBlock);
    int64_t o = o_begin;
    if constexpr (!std::is_same_v<F, PackedQ4_K>) {
      if (rows == 1) {
        for (; o + kDecodePanels * kPanelRows <= o_end; o += kDecodePanels * kPanelRows) {
          TilePackedDecode<F>(xq, bsum, 0, pw.data.get() + o / kPanelRows * panel_bytes, panel_bytes,
                              out + o);
        }
      }
    }
    for (; o < o_end; o += kPanelRows) {
      const uint8_t* panel = pw.data.get() + o / kPanelRows * panel_bytes;
      const int64_t live = std::min<int64_t>(kPanelRows, o_end - o);
      const auto keep = static_cast<__mmask16>((1u << live) - 1);
      for (int64_t t = tb; t < te; t += kPackedNR) {
        kTiles[std::min<int64_t>(kPackedNR, te - t) - 1](xq, bsum, t, panel, out + t * ldo + o, ldo, keep);
      }
    }
  }
}

// F16 weights packed at load for outer products (gemm.h PackedWeight):
// panels of kF16PanelRows = 32 weight rows stored k-major, element (k, r) of
// panel p at p * K * 32 + k * 32 + r (rows past w.rows zero). Per k a tile
// converts the panel's two 16-row vectors once (vcvtph2ps) and multiplies
// them by each of its NR tokens' x[k], broadcast: 2 conversions and 24 FMAs
// for 12 tokens, where the row-major 6 x 4 tile spends 6 conversions and 4
// activation vectors from L2 per 24 FMAs, and no horizontal sums. An
// isolated tile on this VM's Zen 5 (one core, data in L2): 32 x 12 outer
// product 206 GFLOP/s against 165-185 for the 6 x 4 / 4 x 6 dot tiles.
// Every output is one float lane that takes its K products in index order,
// acc = fma(w[k], x[k], acc), in every tile, batch and thread count, so its
// bits depend only on its own row and weights (not the unpacked tiles'
// bits: those split K over 16 lanes and combine them at the end).
constexpr int64_t kF16PanelRows = 32;
constexpr int kF16PackedNR = 12;
// One token: 4 panels (128 rows, 8 accumulators) per tile, so 4 streams of
// 64 bytes per k are in flight from DRAM.
constexpr int kF16DecodePanels = 4;
// Several tokens: each k's panel line is prefetched 4 KiB (64 k) ahead.
// Without it a few-token step (batched decode) starved on one panel
// stream per tile: llama-1b's decode matmuls at 4 tokens (gemm_test
// DecodeModelShapes, TANDEM_GEMM_BENCH_TOKENS=4) 74-78 ms against the
// row-major tiles' 55; with it 46-53 ms (1 KiB ahead: 57-59, 8 KiB: 52),
// at 16 tokens 137-147 -> 89-101 ms (row-major: 128-158); 512-token
// prefill unchanged within the VM's spread.
constexpr int64_t kF16PrefetchBytes = 4096;

// NP adjacent panels (panel_elems apart) x NR tokens (x rows ldx apart);
// `live` of the tile's 32 x NP output rows exist (the rest are padding).
template <int NP, int NR>
TANDEM_AVX512 void TilePackedF16(const float* x, int64_t ldx, const uint16_t* panel, int64_t panel_elems,
                                 int64_t n, float* out, int64_t ldo, int64_t live) {
  constexpr int kV = 2 * NP;
  __m512 acc[kV][NR];
#pragma GCC unroll 16
  for (int v = 0; v < kV; ++v) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[v][t] = _mm512_setzero_ps();
  }
  const int64_t panel_bytes = panel_elems * static_cast<int64_t>(sizeof(uint16_t));
  for (int64_t k = 0; k < n; ++k) {
    __m512 wv[kV];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      const uint16_t* wp = panel + p * panel_elems + k * kF16PanelRows;
      if constexpr (NR == 1) {  // decode: on into the next tile's panels
        _mm_prefetch(reinterpret_cast<const char*>(panel + p * panel_elems) +
                         DecodePrefetchAt(k * kF16PanelRows * 2, panel_bytes, NP),
                     _MM_HINT_T0);
      } else {
        _mm_prefetch(reinterpret_cast<const char*>(wp) + kF16PrefetchBytes, _MM_HINT_T0);
      }
      wv[2 * p] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(wp)));
      wv[2 * p + 1] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(wp + 16)));
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_set1_ps(x[t * ldx + k]);
#pragma GCC unroll 16
      for (int v = 0; v < kV; ++v) acc[v][t] = _mm512_fmadd_ps(wv[v], xv, acc[v][t]);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < kV; ++v) {
    const int64_t lanes = std::clamp<int64_t>(live - 16 * v, 0, 16);
    const auto keep = static_cast<__mmask16>((uint32_t{1} << lanes) - 1);
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) _mm512_mask_storeu_ps(out + t * ldo + 16 * v, keep, acc[v][t]);
  }
}

using PackedF16TileFn = void (*)(const float*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t,
                                 int64_t);

template <int... NR>
constexpr std::array<PackedF16TileFn, sizeof...(NR)> PackedF16Table(std::integer_sequence<int, NR...>) {
  return {&TilePackedF16<1, NR + 1>...};
}

// Output rows [o_begin, o_end), o_begin a multiple of kF16PanelRows.
TANDEM_AVX512 void RangePackedF16(const float* x, int64_t rows, const PackedWeight& pw, float* out,
                                  int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = PackedF16Table(std::make_integer_sequence<int, kF16PackedNR>());
  const int64_t n = pw.source.cols, ldo = pw.source.rows, panel_elems = n * kF16PanelRows;
  const auto* data = reinterpret_cast<const uint16_t*>(pw.data.get());
  int64_t o = o_begin;
  if (rows == 1) {
    constexpr int64_t kWide = kF16DecodePanels * kF16PanelRows;
    for (; o + kWide <= o_end; o += kWide) {
      TilePackedF16<kF16DecodePanels, 1>(x, n, data + o / kF16PanelRows * panel_elems, panel_elems, n,
                                         out + o, ldo, kWide);
    }
    for (; o < o_end; o += kF16PanelRows) {
      TilePackedF16<1, 1>(x, n, data + o / kF16PanelRows * panel_elems, panel_elems, n, out + o, ldo,
                          o_end - o);
    }
    return;
  }
  const int64_t block = TokenBlock512(n, sizeof(float), kF16PackedNR);
  for (int64_t tb = 0; tb < rows; tb += block) {
    const int64_t te = std::min(rows, tb + block);
    for (o = o_begin; o < o_end; o += kF16PanelRows) {
      const uint16_t* panel = data + o / kF16PanelRows * panel_elems;
      for (int64_t t = tb; t < te; t += kF16PackedNR) {
        kTiles[std::min<int64_t>(kF16PackedNR, te - t) - 1](x + t * n, n, panel, panel_elems, n,
                                                            out + t * ldo + o, ldo, o_end - o);
      }
    }
  }
}

std::unique_ptr<PackedWeight> PackF16(GemmPath path, ThreadPool* pool, const Weight& w) {
  const int64_t panels = (w.rows + kF16PanelRows - 1) / kF16PanelRows;
  const int64_t panel_elems = w.cols * kF16PanelRows;
  auto packed = std::make_unique<PackedWeight>();
  packed->path = path;
  packed->source = w;
  packed->data.reset(static_cast<uint8_t*>(
      std::aligned_alloc(64, panels * panel_elems * static_cast<int64_t>(sizeof(uint16_t)))));
  if (packed->data == nullptr) return nullptr;  // the unpacked kernels still run w
  auto* data = reinterpret_cast<uint16_t*>(packed->data.get());
  const auto* src = static_cast<const uint16_t*>(w.data);
  auto pack = [&](int64_t p) {
    uint16_t* dst = data + p * panel_elems;
    std::fill_n(dst, panel_elems, uint16_t{0});
    for (int64_t r = 0; r < kF16PanelRows && p * kF16PanelRows + r < w.rows; ++r) {
      const uint16_t* row = src + (p * kF16PanelRows + r) * w.cols;
      for (int64_t k = 0; k < w.cols; ++k) dst[k * kF16PanelRows + r] = row[k];
    }
  };
  if (pool == nullptr) {
    for (int64_t p = 0; p < panels; ++p) pack(p);
  } else {
    pool->ParallelFor(panels, pack);
  }
  return packed;
}

// Panel p of weight w into dst (zeroed; rows past w.rows stay zero).
template <typename F>
void PackPanel(const Weight& w, int64_t p, uint8_t* dst) {
  const int64_t nb = w.cols / kQ8_0BlockElements, ldw = DTypeBytes(w.dtype, w.cols);
  for (int r = 0; r < kPanelRows && p * kPanelRows + r < w.rows; ++r) {
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + (p * kPanelRows + r) * ldw;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = src + b * F::kBlockBytes;
      uint8_t* pair = dst + (b >> 1) * kPackedPairBytes<F>;
      std::memcpy(pair + (b & 1) * 32 + 2 * r, blk, 2);
      uint8_t* qs = pair + 64 + (b & 1) * 64 * F::kVectors;
      for (int j = 0; j < F::kVectors; ++j) {
        for (int k = 0; k < 4; ++k) qs[64 * j + 4 * r + k] = F::Byte(blk[2 + 4 * j + k]);
      }
    }
  }
}

// Panel p of Q4_K weight w into dst (zeroed; rows past w.rows stay zero).
void PackPanelQ4_K(const Weight& w, int64_t p, uint8_t* dst) {
  const int64_t supers = w.cols / kQ4_KBlockElements, ldw = DTypeBytes(w.dtype, w.cols);
  for (int r = 0; r < kPanelRows && p * kPanelRows + r < w.rows; ++r) {
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + (p * kPanelRows + r) * ldw;
    for (int64_t s = 0; s < supers; ++s) {
      const uint8_t* blk = src + s * kQ4_KBlockBytes;
      uint8_t* sb = dst + s * PackedQ4_K::kSuperBytes;
      std::memcpy(sb + 2 * r, blk, 2);
      std::memcpy(sb + 32 + 2 * r, blk + 2, 2);
      for (int j = 0; j < 8; ++j) Q4_KScaleMin(blk + 4, j, sb + 64 + 16 * j + r, sb + 192 + 16 * j + r);
      for (int c = 0; c < 4; ++c) {
        for (int v = 0; v < 8; ++v)
          std::memcpy(sb + 320 + 512 * c + 64 * v + 4 * r, blk + 16 + 32 * c + 4 * v, 4);
      }
    }
  }
}

// Packs w (Q4_0, Q8_0, Q4_K) by format F.
template <typename F>
std::unique_ptr<PackedWeight> PackAs(GemmPath path, ThreadPool* pool, const Weight& w) {
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int64_t panel_bytes = PanelBytes<F>(w.cols);
  auto packed = std::make_unique<PackedWeight>();
  packed->path = path;
  packed->source = w;
  packed->data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, panels * panel_bytes)));
  if (packed->data == nullptr) return nullptr;  // the unpacked kernels still run w
  uint8_t* data = packed->data.get();
  auto pack = [&](int64_t p) {
    std::memset(data + p * panel_bytes, 0, panel_bytes);
    if constexpr (std::is_same_v<F, PackedQ4_K>) {
      PackPanelQ4_K(w, p, data + p * panel_bytes);
    } else {
      PackPanel<F>(w, p, data + p * panel_bytes);
    }
  };
  if (pool == nullptr) {
    for (int64_t p = 0; p < panels; ++p) pack(p);
  } else {
    pool->ParallelFor(panels, pack);
  }
  return packed;
}

// BF16 weights on CPUs with AVX512_BF16 (as llama.cpp's ggml_vec_dot_bf16):
// activations rounded to BF16 once per row (round to nearest even,
// vcvtne2ps2bf16, zero-padded to a multiple of 32), then vdpbf16ps takes 32
// products per instruction where widening the weights to F32 gets 16, and
// nothing converts the weights. Each lane adds its two exact BF16 products
// to its accumulator in a fixed order; every output owns one accumulator
// that sees its K in the same order in every tile, so results depend only on
// the output's own row and weights, as on the other paths. The cost is the
// activations' rounding: |error| <= 2^-8 sum|x * w| (gemm_test bounds it).
#define TANDEM_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")))

// One step of 32 elements of K: a zero-padded x, and `mask` zeroing w past
// the row's end.
template <int MR, int NR>
TANDEM_AVX512BF16 inline void Bf16Step(__m512 (&acc)[MR][NR], const uint16_t* x, int64_t ldx,
                                       const uint16_t* w, int64_t ldw, int64_t k, __mmask32 mask) {
  __m512bh wv[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 1) {  // decode: on into the next tile's rows (DecodePrefetchAt)
      _mm_prefetch(reinterpret_cast<const char*>(w + i * ldw) + DecodePrefetchAt(k * 2, ldw * 2, MR),
                   _MM_HINT_T0);
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(w + i * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
    }
    wv[i] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + i * ldw + k);
  }
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) {
    const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + t * ldx + k);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv[i], xv);
  }
}

template <int MR, int NR>
TANDEM_AVX512BF16 void TileBf16Dot(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t n,
                                   float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) acc[i][t] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) Bf16Step<MR, NR>(acc, x, ldx, w, ldw, k, ~__mmask32{0});
  if (k < n) Bf16Step<MR, NR>(acc, x, ldx, w, ldw, k, (__mmask32{1} << (n - k)) - 1);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) out[t * ldo + i] = Hsum512(acc[i][t]);
  }
}

using Bf16TileFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t);

template <int MR, int... NR>
constexpr std::array<Bf16TileFn, sizeof...(NR)> Bf16Row(std::integer_sequence<int, NR...>) {
  return {&TileBf16Dot<MR, NR + 1>...};
}

template <int NRMax, int... MR>
constexpr std::array<std::array<Bf16TileFn, NRMax>, sizeof...(MR)> Bf16Table(
    std::integer_sequence<int, MR...>) {
  return {Bf16Row<MR + 1>(std::make_integer_sequence<int, NRMax>())...};
}

// Rounds each of `rows` rows of x (n floats) to BF16 at xb + r * ld, ld =
// n rounded up to 32, the padding zero.
TANDEM_AVX512BF16 void RoundRowsToBf16(const float* x, int64_t rows, int64_t n, int64_t ld, uint16_t* xb) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * n;
    for (int64_t k = 0; k < ld; k += 32) {
      const __mmask16 lo = k + 16 <= n ? 0xFFFF : k >= n ? 0 : (1u << (n - k)) - 1;
      const __mmask16 hi = k + 32 <= n ? 0xFFFF : k + 16 >= n ? 0 : (1u << (n - k - 16)) - 1;
      const __m512bh v =
          _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k + 16), _mm512_maskz_loadu_ps(lo, src + k));
      _mm512_storeu_si512(xb + r * ld + k, (__m512i)v);
    }
  }
}

TANDEM_AVX512BF16 void RangeBf16Dot(const uint16_t* xb, int64_t ldx, int64_t rows, const Weight& w,
                                    float* out, int64_t o_begin, int64_t o_end) {
  static constexpr auto kTiles = Bf16Table<k512NR>(std::make_integer_sequence<int, k512MR>());
  static constexpr auto kTallTiles = Bf16Table<k512TallNR>(std::make_integer_sequence<int, k512TallMR>());
  auto run = [&](auto tile, int64_t o, int64_t t) {
    tile(xb + t * ldx, ldx, static_cast<const uint16_t*>(w.data) + o * w.cols, w.cols, w.cols,
         out + t * w.rows + o, w.rows);
  };
  if (rows == 1) {
    SweepDecode(&TileBf16Dot<k512DecodeMR, 1>, kTiles, o_begin, o_end, run);
    return;
  }
  if (w.cols <= kTallMaxK) {
    SweepTiles(kTallTiles, k512TallMR, k512TallNR, rows, o_begin, o_end, run,
               TokenBlock512(ldx, sizeof(uint16_t), k512TallNR));
    return;
  }
  SweepTiles(kTiles, k512MR, k512NR, rows, o_begin, o_end, run, TokenBlock512(ldx, sizeof(uint16_t)));
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

// QuantizeRow with 16-lane vectors, the same values: the max of |x| is
// exact in any order, d and 1/d the same divisions, and vcvtps2dq rounds to
// nearest even as nearbyint does in the default rounding mode. Quantizing
// runs on the calling thread before the tiles, so it is worth the vectors.
TANDEM_AVX512 void QuantizeRow512(const float* x, int64_t n, float* d, int8_t* q) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQ8_0BlockElements; ++b) {
    const float* xb = x + b * kQ8_0BlockElements;
    const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    d[b] = amax / 127.0f;
    const __m512 id = _mm512_set1_ps(amax != 0 ? 127.0f / amax : 0.0f);
    const __m128i q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)));
    const __m128i q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQ8_0BlockElements), q0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQ8_0BlockElements + 16), q1);
  }
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool CpuHasAvx512Bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

bool CpuHasAvx512() {
  __builtin_cpu_init();
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
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

std::vector<GemmPath> SupportedGemmPaths() {
  std::vector<GemmPath> paths = {GemmPath::kScalar};
  if (CpuHasAvx2()) paths.push_back(GemmPath::kAvx2);
  if (CpuHasAvx512()) paths.push_back(GemmPath::kAvx512);
  return paths;
}

// TANDEM_CPU_GEMM=scalar|avx2|avx512 picks a path (before/after benchmarks
// in one build); one the CPU lacks falls back to the fastest it has.
GemmPath PickGemmPath() {
  const std::vector<GemmPath> paths = SupportedGemmPaths();
  const char* cap = std::getenv("TANDEM_CPU_GEMM");
  if (cap != nullptr) {
    for (GemmPath p : paths) {
      if (std::strncmp(GemmPathName(p), cap, std::strlen(cap)) == 0) {
        return p;
      }
    }
  }
  return paths.back();
}

// Whether kAvx512 runs BF16 weights through vdpbf16ps (the CPU has
// AVX512_BF16, and TANDEM_CPU_BF16_DOT is not 0: for before/after checks).
static bool Avx512Bf16() {
  static const bool on = [] {
    const char* env = std::getenv("TANDEM_CPU_BF16_DOT");
    return CpuHasAvx512Bf16() && (env == nullptr || std::strcmp(env, "0") != 0);
  }();
  return on;
}

// Whether kAvx512 packs F16 weights for the outer-product tiles
// (TANDEM_CPU_F16_PACK=0: the row-major tiles, for before/after checks).
static bool PackF16Enabled() {
  static const bool on = [] {
    const char* env = std::getenv("TANDEM_CPU_F16_PACK");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

GemmPath DefaultGemmPath() {
  static const GemmPath path = PickGemmPath();
  return path;
}

const char* GemmPathName(GemmPath path) {
  switch (path) {
    case GemmPath::kScalar:
      return "scalar";
    case GemmPath::kAvx2:
      return "avx2+fma+f16c";
    case GemmPath::kAvx512:
      return "avx512+vnni";
  }
  return "?";
}

void PackedWeight::Free::operator()(uint8_t* p) const { std::free(p); }

std::unique_ptr<PackedWeight> PackWeight(GemmPath path, ThreadPool* pool, const Weight& w) {
  if (path != GemmPath::kAvx512 || w.rows == 0 || w.cols == 0) return nullptr;
  if (w.dtype == DType::kQ4_0) return PackAs<PackedQ4_0>(path, pool, w);
  if (w.dtype == DType::kQ8_0) return PackAs<PackedQ8_0>(path, pool, w);
  if (w.dtype == DType::kQ4_K) return PackAs<PackedQ4_K>(path, pool, w);
  if (w.dtype == DType::kF16 && PackF16Enabled()) return PackF16(path, pool, w);
  return nullptr;
}

void MatMul(GemmPath path, ThreadPool* pool, const float* x, int64_t rows, const Weight& w, float* out,
            const PackedWeight* packed) {
  const int64_t work = rows * w.rows * w.cols;
  // Weight rows per work item, a multiple of every MR. 64 for decode too:
  // each thread then streams 64 consecutive rows, and one 110m decode step
  // (84 matmuls, gemm_test DecodeModelShapes) took 20-25% less time than
  // with 16 (F16 5.7 -> 4.6 ms, Q4_K 3.6-4.7 -> 2.8, Q4_0 3.6 -> 3.0).
  // The float tiles of 6 rows (k512TallMR) take 48 when there are several
  // tokens: 64 left a 4-row tile per item, 6% of a batch-16 decode's tile
  // samples for 1/16 of the rows.
  const bool float_tall = path == GemmPath::kAvx512 && rows > 1 && w.cols <= kTallMaxK &&
                          (w.dtype == DType::kF32 || w.dtype == DType::kF16 || w.dtype == DType::kBF16);
  const int64_t chunk = float_tall ? 48 : 64;
  auto run = [&](auto range) {
    ForChunks(pool, work, w.rows, path == GemmPath::kScalar ? 16 : chunk, range);
  };
  const bool wide = path == GemmPath::kAvx512;
  // Q4_K has AVX-512 tiles only; the AVX2 path runs the scalar loops.
  if (path == GemmPath::kScalar || (w.dtype == DType::kQ4_K && !wide)) {
    run([&](int64_t b, int64_t e) { RangeScalar(x, rows, w, out, b, e); });
    return;
  }
  switch (w.dtype) {
    case DType::kF32:
      run([&](int64_t b, int64_t e) {
        wide ? RangeFloat512<Load512F32>(x, rows, w, out, b, e) : RangeFloat<LoadF32>(x, rows, w, out, b, e);
      });
      return;
    case DType::kF16:
      if (packed != nullptr && packed->path == path && wide) {
        // Items of whole panels: 4 (the decode tile) for one token, else 2.
        ForChunks(pool, work, w.rows, (rows == 1 ? kF16DecodePanels : 2) * kF16PanelRows,
                  [&](int64_t b, int64_t e) { RangePackedF16(x, rows, *packed, out, b, e); });
        return;
      }
      run([&](int64_t b, int64_t e) {
        wide ? RangeFloat512<Load512F16>(x, rows, w, out, b, e) : RangeFloat<LoadF16>(x, rows, w, out, b, e);
      });
      return;
    case DType::kBF16:
      if (wide && Avx512Bf16()) {
        const int64_t ld = (w.cols + 31) / 32 * 32;
        thread_local std::vector<uint16_t> xb;
        xb.resize(rows * ld);
        RoundRowsToBf16(x, rows, w.cols, ld, xb.data());
        // By pointer: a worker naming the thread_local would see its own.
        const uint16_t* rounded = xb.data();
        run([&](int64_t b, int64_t e) { RangeBf16Dot(rounded, ld, rows, w, out, b, e); });
        return;
      }
      run([&](int64_t b, int64_t e) {
        wide ? RangeFloat512<Load512BF16>(x, rows, w, out, b, e)
             : RangeFloat<LoadBF16>(x, rows, w, out, b, e);
      });
      return;
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_K: {
      const int64_t nb = w.cols / kQ8_0BlockElements;
      thread_local std::vector<float> scales;
      thread_local std::vector<int8_t> quants;
      scales.resize(rows * nb);
      quants.resize(rows * w.cols);
      for (int64_t r = 0; r < rows; ++r) {
        (wide ? QuantizeRow512 : QuantizeRow)(x + r * w.cols, w.cols, scales.data() + r * nb,
                                              quants.data() + r * w.cols);
      }
      QuantizedRows xq{scales.data(), quants.data(), nb};
      if (w.dtype == DType::kQ4_K) {
        thread_local std::vector<float> dsums, dpairs;
        dsums.resize(rows * nb);
        dpairs.resize(rows * w.cols / 4);
        for (int64_t b = 0; b < rows * nb; ++b) {
          int32_t sum = 0;
          for (int k = 0; k < kQ8_0BlockElements; ++k) sum += quants[b * kQ8_0BlockElements + k];
          dsums[b] = scales[b] * static_cast<float>(sum);
          std::fill_n(dpairs.data() + 8 * b, 8, scales[b]);  // blocks 2p, 2p + 1 are adjacent in a row
        }
        xq.dsum = dsums.data();
        xq.dpair = dpairs.data();
        if (packed != nullptr && packed->path == path) {
          run([&](int64_t b, int64_t e) { RangePacked<PackedQ4_K>(xq, nullptr, rows, *packed, out, b, e); });
          return;
        }
        run([&](int64_t b, int64_t e) { RangeQ8_0_512<BlockQ4_K>(xq, rows, w, out, b, e); });
        return;
      }
      if (packed != nullptr && packed->path == path && w.dtype != DType::kQ4_K) {
        const bool q4 = w.dtype == DType::kQ4_0;
        thread_local std::vector<int32_t> bsums;
        bsums.resize(rows * nb);
        for (int64_t b = 0; b < rows * nb; ++b) {
          int32_t sum = 0;
          for (int k = 0; k < kQ8_0BlockElements; ++k) sum += quants[b * kQ8_0BlockElements + k];
          bsums[b] = (q4 ? PackedQ4_0::kBias : PackedQ8_0::kBias) * sum;
        }
        const int32_t* sums = bsums.data();
        run([&](int64_t b, int64_t e) {
          q4 ? RangePacked<PackedQ4_0>(xq, sums, rows, *packed, out, b, e)
             : RangePacked<PackedQ8_0>(xq, sums, rows, *packed, out, b, e);
        });
        return;
      }
      if (w.dtype == DType::kQ4_0) {
        thread_local std::vector<int32_t> sums;
        if (wide) {
          sums.resize(rows * w.cols / 4);
          for (int64_t i = 0; i < rows * w.cols / 4; ++i) {
            const int8_t* q = quants.data() + 4 * i;
            sums[i] = 8 * (q[0] + q[1] + q[2] + q[3]);
          }
          xq.sum4 = sums.data();
        }
        run([&](int64_t b, int64_t e) {
          wide ? RangeQ8_0_512<BlockQ4_0>(xq, rows, w, out, b, e)
               : RangeQ8_0<BlockQ4_0>(xq, rows, w, out, b, e);
        });
        return;
      }
      run([&](int64_t b, int64_t e) {
        wide ? RangeQ8_0_512<BlockQ8_0>(xq, rows, w, out, b, e)
             : RangeQ8_0<BlockQ8_0>(xq, rows, w, out, b, e);
      });
      return;
    }
  }
}

}  // namespace tandem::kernels::cpu
