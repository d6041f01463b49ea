// Element-wise CPU ops with vector paths (AVX2 + FMA), picked with the GEMM
// path (gemm.h: TANDEM_CPU_GEMM=scalar selects the portable loops for both).
//
// Each element's result depends only on that element: a ragged tail runs
// through the same vector code on a zero-padded copy, so an element computes
// identically whatever n is and wherever it sits.
#ifndef TANDEM_KERNELS_CPU_ELEMENTWISE_H_
#define TANDEM_KERNELS_CPU_ELEMENTWISE_H_

#include <cstdint>

#include "kernels/cpu/gemm.h"

namespace tandem::kernels::cpu {

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
// The vector paths use llama.cpp's ggml_v_expf (max error about 1.5 ulp);
// kScalar uses std::exp. out may equal gate.
void SwiGlu(GemmPath path, const float* gate, const float* up, int64_t n, float* out);

// The softmax's exponentials: x[i] = exp(x[i] - shift) for i < n, returning
// their sum in double, added in index order (llama.cpp's soft_max also sums
// in double). Same exp as SwiGlu per path.
double ExpShiftSum(GemmPath path, float* x, int64_t n, float shift);

// ExpShiftSum's exponentials without the sum (the same x[i] bits), for
// callers that add several rows' sums side by side: each row's sum is a
// chain of dependent double additions, so one row at a time waits on
// their latency.
void ExpShift(GemmPath path, float* x, int64_t n, float shift);

// out[i] = FloatToHalf(x[i]) / FloatToBF16(x[i]) (common/dtype.h) for
// i < n: the same bits for every input, NaN included, on every path (the
// vector paths round with F16C / integer adds to nearest even, and fall back
// to the scalar rounding for a vector holding a NaN). The KV cache's writes.
void FloatsToHalf(GemmPath path, const float* x, int64_t n, uint16_t* out);
void FloatsToBf16(GemmPath path, const float* x, int64_t n, uint16_t* out);

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_ELEMENTWISE_H_
