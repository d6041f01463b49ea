// See elementwise.h.
#include "kernels/cpu/elementwise.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common/dtype.h"

namespace tandem::kernels::cpu {
namespace {

#define TANDEM_AVX2 __attribute__((target("avx2,fma,f16c")))

// ggml_v_expf (llama.cpp ggml/src/ggml-cpu/vec.h, MIT; adapted there from Arm's
// optimized routines): max error 1.45 + 0.5 ulp; above 88.38 gives inf,
// below -103.97 gives 0.
TANDEM_AVX2 inline __m256 ExpF(__m256 x) {
  const __m256 r = _mm256_set1_ps(0x1.8p23f);
  const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
  const __m256 n = _mm256_sub_ps(z, r);
  const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
  const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
  const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
  const __m256i c = _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
  const __m256 u = _mm256_mul_ps(b, b);
  const __m256 j = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                      _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
      u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
  if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
  const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                     _mm256_set1_epi32(0x82000000u));
  const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000u)));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
  const __m256i d = _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(192), _CMP_GT_OQ));
  return _mm256_or_ps(
      _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
      _mm256_andnot_ps(
          _mm256_castsi256_ps(d),
          _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                       _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}

TANDEM_AVX2 inline __m256 SwiGlu8(__m256 g, __m256 u) {
  const __m256 e = ExpF(_mm256_sub_ps(_mm256_setzero_ps(), g));
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

TANDEM_AVX2 void SwiGluAvx2(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, SwiGlu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i < n) {  // the same vector code on a zero-padded copy
    alignas(32) float g[8] = {}, u[8] = {}, o[8];
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    _mm256_store_ps(o, SwiGlu8(_mm256_load_ps(g), _mm256_load_ps(u)));
    std::copy(o, o + (n - i), out + i);
  }
}

TANDEM_AVX2 double ExpShiftSumAvx2(float* x, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  double sum = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i, ExpF(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    for (int l = 0; l < 8; ++l) sum += x[i + l];
  }
  if (i < n) {  // the same vector code on a padded copy
    alignas(32) float t[8] = {};
    std::copy(x + i, x + n, t);
    _mm256_store_ps(t, ExpF(_mm256_sub_ps(_mm256_load_ps(t), s)));
    for (int64_t l = 0; l < n - i; ++l) sum += (x[i + l] = t[l]);
  }
  return sum;
}

TANDEM_AVX2 void ExpShiftAvx2(float* x, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, ExpF(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
  if (i < n) {  // the same vector code on a padded copy, as ExpShiftSumAvx2
    alignas(32) float t[8] = {};
    std::copy(x + i, x + n, t);
    _mm256_store_ps(t, ExpF(_mm256_sub_ps(_mm256_load_ps(t), s)));
    std::copy(t, t + (n - i), x + i);
  }
}

// Whether any of v's 8 floats is a NaN (the one case F16C's rounding and
// FloatToHalf's differ: F16C keeps the payload's top bits).
TANDEM_AVX2 inline bool AnyNan(__m256 v) {
  return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0;
}

TANDEM_AVX2 void FloatsToHalfAvx2(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    if (AnyNan(v)) {
      for (int l = 0; l < 8; ++l) out[i + l] = FloatToHalf(x[i + l]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = FloatToHalf(x[i]);
}

// FloatToBF16's integer rounding, 8 at a time: (x + 0x7fff + bit 16 of x) >> 16.
TANDEM_AVX2 void FloatsToBf16Avx2(const float* x, int64_t n, uint16_t* out) {
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    if (AnyNan(v)) {
      for (int l = 0; l < 8; ++l) out[i + l] = FloatToBF16(x[i + l]);
      continue;
    }
    const __m256i b = _mm256_castps_si256(v);
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(b, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(b, 16), one))), 16);
    // 32 -> 16 bits (values < 2^16, so the saturation never clips); packus
    // works per 128-bit half, the permute puts the halves' results together.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) out[i] = FloatToBF16(x[i]);
}

}  // namespace

void FloatsToHalf(GemmPath path, const float* x, int64_t n, uint16_t* out) {
  if (path != GemmPath::kScalar) return FloatsToHalfAvx2(x, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i]);
}

void FloatsToBf16(GemmPath path, const float* x, int64_t n, uint16_t* out) {
  if (path != GemmPath::kScalar) return FloatsToBf16Avx2(x, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToBF16(x[i]);
}

void ExpShift(GemmPath path, float* x, int64_t n, float shift) {
  if (path != GemmPath::kScalar) return ExpShiftAvx2(x, n, shift);
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - shift);
}

double ExpShiftSum(GemmPath path, float* x, int64_t n, float shift) {
  if (path != GemmPath::kScalar) return ExpShiftSumAvx2(x, n, shift);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void SwiGlu(GemmPath path, const float* gate, const float* up, int64_t n, float* out) {
  if (path != GemmPath::kScalar) {
    SwiGluAvx2(gate, up, n, out);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace tandem::kernels::cpu
