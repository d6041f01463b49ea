// Weight matrices encoded as GGUF's types from floats, for tests: F32,
// F16, BF16, Q8_0, Q4_0 (GGML's reference rules) and Q4_K (every field in
// range, not GGML's scale search), with the values each encoding holds.
//
//   std::vector<float> held;
//   std::vector<uint8_t> bytes = Encode(f, rows, cols, DType::kQ8_0, &held);
#ifndef TANDEM_TESTS_TESTING_WEIGHT_ENCODING_H_
#define TANDEM_TESTS_TESTING_WEIGHT_ENCODING_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/dtype.h"

namespace tandem::testing {

// Q4_K super-blocks of 256: per 32-element sub-block an affine range
// [min(0, lo), hi] in 15 steps, its scale and min as 6-bit multiples of the
// super-block's F16 d and dmin; packed as GGML's quantize_row_q4_K_ref packs
// them (scales: j < 4 in bytes j / j + 4, j >= 4 split into nibbles of
// bytes j + 4 and the top 2 bits of bytes j - 4 / j; nibbles: 32 bytes per
// 64 elements, low = first sub-block). Not GGML's search for the best
// scales, but every field in range, which is what the kernels must read.
inline void EncodeQ4_K(const std::vector<float>& f, uint8_t* bytes, float* represented) {
  for (size_t sb = 0; sb < f.size() / 256; ++sb) {
    const float* v = &f[sb * 256];
    float scale[8], mn[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, v[32 * j + l]);
        hi = std::max(hi, v[32 * j + l]);
      }
      scale[j] = (hi - lo) / 15;
      mn[j] = -lo;
      max_scale = std::max(max_scale, scale[j]);
      max_min = std::max(max_min, mn[j]);
    }
    uint8_t* blk = bytes + sb * 144;
    const uint16_t dh = FloatToHalf(max_scale / 63), mh = FloatToHalf(max_min / 63);
    std::memcpy(blk, &dh, 2);
    std::memcpy(blk + 2, &mh, 2);
    const float d = HalfToFloat(dh), dmin = HalfToFloat(mh);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = static_cast<uint8_t>(std::clamp<long>(d == 0 ? 0 : std::lround(scale[j] / d), 0, 63));
      m[j] = static_cast<uint8_t>(std::clamp<long>(dmin == 0 ? 0 : std::lround(mn[j] / dmin), 0, 63));
    }
    uint8_t* s = blk + 4;
    std::fill(s, s + 12, 0);
    for (int j = 0; j < 8; ++j) {
      if (j < 4) {
        s[j] = sc[j];
        s[j + 4] = m[j];
      } else {
        s[j + 4] = static_cast<uint8_t>((sc[j] & 0x0F) | ((m[j] & 0x0F) << 4));
        s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
        s[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
      }
    }
    for (int j = 0; j < 8; ++j) {
      const float dj = d * sc[j], mj = dmin * m[j];
      for (int l = 0; l < 32; ++l) {
        const long q = std::clamp<long>(dj == 0 ? 0 : std::lround((v[32 * j + l] + mj) / dj), 0, 15);
        uint8_t& byte = blk[16 + 32 * (j / 2) + l];
        byte = static_cast<uint8_t>(j % 2 == 0 ? q : (byte | (q << 4)));
        represented[sb * 256 + 32 * j + l] = dj * static_cast<float>(q) - mj;
      }
    }
  }
}

// `f` (rows x cols) encoded as `type`; *represented gets the values the
// encoding holds. Q8_0 blocks use GGML's rule (d = max|w| / 127), Q4_0
// blocks GGML's quantize_row_q4_0_ref (d = the signed value of largest
// magnitude / -8, q = min(15, trunc(w / d + 8.5))).
inline std::vector<uint8_t> Encode(const std::vector<float>& f, int64_t rows, int64_t cols, DType type,
                                   std::vector<float>* represented) {
  std::vector<uint8_t> bytes(DTypeBytes(type, rows * cols));
  represented->resize(f.size());
  if (type == DType::kQ4_K) {
    EncodeQ4_K(f, bytes.data(), represented->data());
    return bytes;
  }
  if (type == DType::kQ4_0) {
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      float amax = 0, max = 0;
      for (int k = 0; k < 32; ++k) {
        if (std::abs(f[b * 32 + k]) > amax) amax = std::abs(max = f[b * 32 + k]);
      }
      const uint16_t d = FloatToHalf(max / -8);
      const float id = max != 0 ? -8 / max : 0.0f;
      uint8_t* blk = &bytes[b * 18];
      std::memcpy(blk, &d, 2);
      int q[32];
      for (int k = 0; k < 32; ++k) q[k] = std::min(15, static_cast<int>(f[b * 32 + k] * id + 8.5f));
      for (int k = 0; k < 16; ++k) blk[2 + k] = static_cast<uint8_t>(q[k] | (q[k + 16] << 4));
      for (int k = 0; k < 32; ++k) (*represented)[b * 32 + k] = HalfToFloat(d) * (q[k] - 8);
    }
    return bytes;
  }
  if (type == DType::kQ8_0) {
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      float amax = 0;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::abs(f[b * 32 + k]));
      const uint16_t d = FloatToHalf(amax / 127.0f);
      const float scale = HalfToFloat(d);
      uint8_t* blk = &bytes[b * 34];
      std::memcpy(blk, &d, 2);
      for (int k = 0; k < 32; ++k) {
        const auto q = static_cast<int8_t>(std::lround(scale == 0 ? 0 : f[b * 32 + k] / scale));
        blk[2 + k] = static_cast<uint8_t>(q);
        (*represented)[b * 32 + k] = scale * q;
      }
    }
    return bytes;
  }
  for (size_t i = 0; i < f.size(); ++i) {
    if (type == DType::kF32) {
      std::memcpy(&bytes[i * 4], &f[i], 4);
      (*represented)[i] = f[i];
    } else {
      const uint16_t h = type == DType::kF16 ? FloatToHalf(f[i]) : FloatToBF16(f[i]);
      std::memcpy(&bytes[i * 2], &h, 2);
      (*represented)[i] = type == DType::kF16 ? HalfToFloat(h) : BF16ToFloat(h);
    }
  }
  return bytes;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_WEIGHT_ENCODING_H_
