// The CPU backend's matrix multiply: out[r][o] = sum_i x[r][i] * w[o][i] for
// F32, F16, BF16, Q8_0, Q4_0 and Q4_K weights, in the weights' own row-major
// layout.
//
//   cpu::MatMul(cpu::DefaultGemmPath(), &pool, x, rows, w, out);
//
// Three paths, the fastest the machine runs picked at run time
// (DefaultGemmPath):
// - kAvx512 (AVX-512 F/BW/VL/DQ + VNNI): the same scheme with 16-lane
//   accumulators, tiles of 4 x 6 (4 x 4 for Q8_0, two 32-blocks per step,
//   integer products by vpdpbusd). Q4_0 runs the Q8_0 tiles on its nibbles
//   unpacked to int8 (-8..7) in registers, against the same int8
//   activations (as llama.cpp's vec_dot_q4_0_q8_0); AVX-512 feeds the
//   unsigned nibbles to vpdpbusd and subtracts 8 x each lane's activation
//   sum instead, the same integers, so the same bits. Q4_K (256-element
//   super-blocks) runs AVX-512 tiles only: per 64 elements vpdpbusd on the
//   unsigned nibbles and one FMA per lane (d_w * scale * d_x * sum), per
//   super-block one FMA for the mins (dmin * min_j * d_x(j) * sum q_x);
//   within 1e-4 + the int8 activations' bound of dequantize-then-F32
//   (gemm_test). On kAvx2 Q4_K runs the scalar loops. BF16, where the CPU
//   has AVX512_BF16, runs vdpbf16ps on activations rounded to BF16 once per
//   row (llama.cpp's scheme; |error| <= 2^-8 sum|x w|; TANDEM_CPU_BF16_DOT=0
//   widens the weights to F32 instead). One token: F32/F16/BF16 tiles of 8
//   weight rows, so 8 DRAM streams are in flight.
// - kAvx2 (AVX2 + FMA + F16C): register-blocked tiles of 4 weight rows x 3
//   tokens (2 x 4 for Q8_0), so each weight vector loaded and converted serves
//   several tokens and each token vector several weight rows. Q8_0 quantizes
//   each activation row per 32-block to int8 (d = max|x| / 127, as llama.cpp's
//   quantize_row_q8_0) and multiplies in integers.
// - kScalar: the portable loops, for CPUs without AVX2/FMA/F16C.
//
// Determinism (the contract of kernels/backend.h): every output element owns
// one 8-lane accumulator that takes its K elements in the same order, one FMA
// per 8 elements (per 32-block for Q8_0; a zero-padded final vector for a
// ragged tail), and the same horizontal combine at the end, whatever tile,
// batch size, thread count or position in the batch computed it (packed
// weights: one float lane per output, see PackedWeight). Integer
// block sums are exact, so their internal order cannot matter. Results
// therefore depend only on the element's own inputs on a given machine and
// path; the two paths differ from each other by float rounding (FMA vs
// multiply-then-add; Q8_0's int8 activations), bounded in gemm_test.cc.
//
// Thread safety: MatMul may run concurrently on different outputs; its Q8_0
// activation buffer is per calling thread.
#ifndef TANDEM_KERNELS_CPU_GEMM_H_
#define TANDEM_KERNELS_CPU_GEMM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/backend.h"

namespace tandem::kernels::cpu {

enum class GemmPath { kScalar, kAvx2, kAvx512 };

// The paths this CPU can run, slowest first (kScalar always).
std::vector<GemmPath> SupportedGemmPaths();
// The fastest of them (asked of the CPU once per process), unless the
// environment variable TANDEM_CPU_GEMM names another supported one (scalar,
// avx2, avx512): for before/after measurements in one build.
GemmPath DefaultGemmPath();
const char* GemmPathName(GemmPath path);

// A weight repacked once (at load: CpuBackend::PrepareWeight) into the
// layout one path's kernels stream. F16 on kAvx512: panels of 32 weight
// rows stored k-major (element (k, r) at k * 32 + r), multiplied as outer
// products — per k the panel's two 16-row vectors converted once and each
// of up to 12 tokens' x[k] broadcast, so every output is one float lane
// taking its K products in index order, in every tile, batch and thread
// count (bits differ from the unpacked tiles', which split K over 16
// lanes); the same bytes as the source; TANDEM_CPU_F16_PACK=0 keeps the
// unpacked tiles. Q4_0, Q8_0, Q4_K on kAvx512, as
// llama.cpp repacks Q4_0 at load: panels of 16 weight rows, per 32-block
// the 16 rows' F16 scales and then 64-byte vectors whose int32 lane r holds
// row r's quant bytes 4j..4j+3 (Q4_0: four, low nibbles elements 4j..,
// high 16 + 4j..; Q8_0: eight, sign bit flipped so vpdpbusd takes them
// unsigned, 128 x the activation sum subtracted; Q4_K: per 256 the rows'
// d, dmin, 6-bit scales and mins as bytes, then the nibbles as Q4_0's, two
// FMAs per 32-element sub-block). One vpdpbusd feeds 16
// outputs, each int32 lane ends a block holding one output's whole integer
// sum, and one FMA per block adds d_w * d_x * sum to that output's single
// float lane: 5 vector ops per output per 64 elements become about 2.
// About the source's bytes (Q4_K: 2,368 per 2,304). Each output's result is a
// fixed sequence over its blocks whatever the tile, batch or thread count
// (integer block sums are exact); it differs from the unpacked kernels'
// bits (one lane per output, no horizontal combine), within the same int8
// activation bound of dequantize-then-F32 (gemm_test).
struct PackedWeight {
  GemmPath path = GemmPath::kScalar;
  Weight source;  // shape and type; its data is not read by MatMul
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> data;  // 64-byte aligned
};

// The packed form of `w` for `path`, or nullptr where the path runs `w` in
// its own layout. Panels are packed in parallel over `pool` (may be null).
std::unique_ptr<PackedWeight> PackWeight(GemmPath path, ThreadPool* pool, const Weight& w);

// out[r * w.rows + o] = sum_i x[r * w.cols + i] * w[o][i] for r < rows,
// o < w.rows. Output rows are split over `pool` (nullptr: the calling thread
// only). `packed`, when not null, is PackWeight(path, ., w)'s result and is
// read instead of w.data. REQUIRES: w.cols % BlockElements(w.dtype) == 0
// (common/dtype.h); kAvx2/kAvx512 only where the CPU supports them.
void MatMul(GemmPath path, ThreadPool* pool, const float* x, int64_t rows, const Weight& w, float* out,
            const PackedWeight* packed = nullptr);

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_GEMM_H_
