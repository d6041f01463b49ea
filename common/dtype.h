// Element types of weights and activations, scalar conversions between
// them, and row dequantisation. Shared by the model loader (which names the
// type of each tensor) and every kernel backend.
//
//   std::vector<float> row(w.cols);
//   DequantizeRow(w.dtype, row_bytes, w.cols, row.data());
//
// Thread safety: pure functions.
#ifndef TANDEM_COMMON_DTYPE_H_
#define TANDEM_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tandem {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  // GGML's Q8_0: blocks of 32 weights, each block an F16 scale followed by 32
  // int8 values (34 bytes); value = scale * q.
  kQ8_0,
  // GGML's Q4_0: blocks of 32 weights, each an F16 scale followed by 16
  // bytes of 4-bit values (18 bytes); byte j holds element j in its low
  // nibble and element j + 16 in its high one; value = scale * (nibble - 8).
  kQ4_0,
  // GGML's Q4_K: super-blocks of 256 weights in 144 bytes: F16 d, F16 dmin,
  // 12 bytes of 6-bit scales and mins for the 8 sub-blocks of 32 (packed as
  // GGML's get_scale_min_k4 reads them), 128 bytes of nibbles (each 32 bytes
  // hold sub-block 2j in their low nibbles, 2j + 1 in their high ones);
  // value = d * scale_j * nibble - dmin * min_j.
  kQ4_K,
};

inline constexpr int kQ8_0BlockElements = 32;
inline constexpr int kQ8_0BlockBytes = 34;
inline constexpr int kQ4_0BlockElements = 32;
inline constexpr int kQ4_0BlockBytes = 18;
inline constexpr int kQ4_KBlockElements = 256;
inline constexpr int kQ4_KBlockBytes = 144;

// Whether `type` stores rows in blocks (Q8_0, Q4_0: 32 elements; Q4_K: 256):
// such a row's length must be a multiple of BlockElements(type).
inline bool IsBlockQuantized(DType type) {
  return type == DType::kQ8_0 || type == DType::kQ4_0 || type == DType::kQ4_K;
}
// Elements per block: 32 (Q8_0, Q4_0), 256 (Q4_K), 1 otherwise.
inline int BlockElements(DType type) {
  return type == DType::kQ4_K ? kQ4_KBlockElements : IsBlockQuantized(type) ? kQ8_0BlockElements : 1;
}

std::string_view DTypeName(DType type);

// Bytes taken by `n` elements of `type`. For block types, REQUIRES:
// n % BlockElements(type) == 0.
inline size_t DTypeBytes(DType type, size_t n) {
  switch (type) {
    case DType::kF32:
      return n * 4;
    case DType::kF16:
    case DType::kBF16:
      return n * 2;
    case DType::kQ8_0:
      return n / kQ8_0BlockElements * kQ8_0BlockBytes;
    case DType::kQ4_0:
      return n / kQ4_0BlockElements * kQ4_0BlockBytes;
    case DType::kQ4_K:
      return n / kQ4_KBlockElements * kQ4_KBlockBytes;
  }
  return 0;
}

// IEEE half -> float, exact for every input (subnormals, inf, NaN).
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float -> IEEE half, round to nearest even.
inline uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {  // inf or NaN
    return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00;  // overflow to inf
  if (abs < 0x38800000) {                       // subnormal or zero in half
    if (abs < 0x33000000) return sign;
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t h = m >> (shift);
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs >> 13) - ((127 - 15) << 10));
  const uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

inline float BF16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float -> bfloat16, round to nearest even; NaN stays NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  const uint32_t rounding = 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

// The F32 scale of the Q8_0 block at `block` (its leading F16).
inline float Q8_0BlockScale(const uint8_t* block) {
  uint16_t scale_bits;
  std::memcpy(&scale_bits, block, 2);
  return HalfToFloat(scale_bits);
}

// Q4_K sub-block j's (j < 8) 6-bit scale and min from a super-block's 12
// scale bytes (GGML's get_scale_min_k4).
inline void Q4_KScaleMin(const uint8_t* scales, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
    *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// Converts `n` consecutive elements of `type` at `src` (one weight row, any
// alignment) to F32 in out[0, n): the one dequantisation every backend uses.
// Exact: every F16/BF16 value, and every Q8_0/Q4_0 scale * q (an 11-bit by
// 8-bit product), is a float. Q4_K computes (d * scale) * q - dmin * min in
// F32 as GGML's dequantize_row_q4_K (the products exact, the difference
// rounded once). For block types, REQUIRES: n % BlockElements(type) == 0.
void DequantizeRow(DType type, const void* src, int64_t n, float* out);

}  // namespace tandem

#endif  // TANDEM_COMMON_DTYPE_H_
