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
};

inline constexpr int kQ8_0BlockElements = 32;
inline constexpr int kQ8_0BlockBytes = 34;
inline constexpr int kQ4_0BlockElements = 32;
inline constexpr int kQ4_0BlockBytes = 18;

// Whether `type` stores rows in blocks of 32 elements (Q8_0, Q4_0): such a
// row's length must be a multiple of 32.
inline bool IsBlockQuantized(DType type) { return type == DType::kQ8_0 || type == DType::kQ4_0; }

std::string_view DTypeName(DType type);

// Bytes taken by `n` elements of `type`. For Q8_0 and Q4_0, REQUIRES:
// n % 32 == 0.
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

// Converts `n` consecutive elements of `type` at `src` (one weight row, any
// alignment) to F32 in out[0, n): the one dequantisation every backend uses.
// Exact: every F16/BF16 value, and every Q8_0/Q4_0 scale * q (an 11-bit by
// 8-bit product), is a float. For Q8_0 and Q4_0, REQUIRES: n % 32 == 0.
void DequantizeRow(DType type, const void* src, int64_t n, float* out);

}  // namespace tandem

#endif  // TANDEM_COMMON_DTYPE_H_
