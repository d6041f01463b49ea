// The CPU backend's scalar dot products: 8 interleaved partial sums combined
// pairwise, then the tail, so a result depends only on the vector's length
// (the batch-invariance contract, backend.h). The GEMM's scalar path
// (gemm.cc) and attention over the KV cache (cpu_backend.cc) share them.
#ifndef TANDEM_KERNELS_CPU_SCALAR_DOT_H_
#define TANDEM_KERNELS_CPU_SCALAR_DOT_H_

#include <cstdint>

namespace tandem::kernels::cpu {

inline constexpr int kLanes = 8;

inline float CombineLanes(const float* acc) {
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// a . convert(b) for 16-bit elements (F16, BF16). Convert is a lambda (not a
// function pointer) so it inlines as a direct call would.
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

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_SCALAR_DOT_H_
