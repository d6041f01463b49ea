#include "common/dtype.h"

namespace tandem {

std::string_view DTypeName(DType type) {
  switch (type) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_K:
      return "Q4_K";
  }
  return "unknown";
}

void DequantizeRow(DType type, const void* src, int64_t n, float* out) {
  const uint8_t* base = static_cast<const uint8_t*>(src);
  switch (type) {
    case DType::kF32:
      std::memcpy(out, base, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, base + 2 * i, 2);
        out[i] = type == DType::kF16 ? HalfToFloat(b) : BF16ToFloat(b);
      }
      break;
    case DType::kQ8_0:
      for (int64_t blk = 0; blk < n / kQ8_0BlockElements; ++blk) {
        const uint8_t* block = base + blk * kQ8_0BlockBytes;
        const float d = Q8_0BlockScale(block);
        const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
        for (int i = 0; i < kQ8_0BlockElements; ++i) {
          out[blk * kQ8_0BlockElements + i] = d * static_cast<float>(q[i]);
        }
      }
      break;
    case DType::kQ4_0:
      for (int64_t blk = 0; blk < n / kQ4_0BlockElements; ++blk) {
        const uint8_t* block = base + blk * kQ4_0BlockBytes;
        const float d = Q8_0BlockScale(block);  // the same leading F16 scale
        float* o = out + blk * kQ4_0BlockElements;
        for (int j = 0; j < kQ4_0BlockElements / 2; ++j) {
          o[j] = d * static_cast<float>((block[2 + j] & 0x0F) - 8);
          o[j + 16] = d * static_cast<float>((block[2 + j] >> 4) - 8);
        }
      }
      break;
    case DType::kQ4_K:
      for (int64_t blk = 0; blk < n / kQ4_KBlockElements; ++blk) {
        const uint8_t* block = base + blk * kQ4_KBlockBytes;
        const float d = Q8_0BlockScale(block);
        const float dmin = Q8_0BlockScale(block + 2);
        const uint8_t* qs = block + 16;
        float* o = out + blk * kQ4_KBlockElements;
        for (int j = 0; j < 8; j += 2) {  // 64 elements per 32 bytes of nibbles
          uint8_t sc0, m0, sc1, m1;
          Q4_KScaleMin(block + 4, j, &sc0, &m0);
          Q4_KScaleMin(block + 4, j + 1, &sc1, &m1);
          const float d0 = d * sc0, dm0 = dmin * m0, d1 = d * sc1, dm1 = dmin * m1;
          for (int l = 0; l < 32; ++l) {
            o[32 * j + l] = d0 * static_cast<float>(qs[16 * j + l] & 0x0F) - dm0;
            o[32 * j + 32 + l] = d1 * static_cast<float>(qs[16 * j + l] >> 4) - dm1;
          }
        }
      }
      break;
  }
}

}  // namespace tandem
