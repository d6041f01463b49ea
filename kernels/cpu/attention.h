// The CPU backend's paged causal attention (Backend::PagedAttention,
// kernels/backend.h), over a KV cache of F32, BF16 or F16 elements.
//
//   cpu::PagedAttention(cpu::DefaultGemmPath(), &pool, q, kv, layer, num_heads, seqs, scale, out);
//
// Vector path (any GemmPath but kScalar, head_dim a multiple of 8): work
// items are (sequence, KV head, block of up to 4 query rows), so the queries
// of an item (its rows x the query heads sharing that KV head) share every K
// and V vector loaded: prefill is blocked over queries and keys, decode with
// grouped-query attention shares the loads across the group, and each K/V
// vector is converted from BF16/F16 once per tile. Dot products and the value
// sum run 8 lanes wide with explicit FMA (AVX2; the AVX-512 path runs the
// same code, so the two give the same bits).
//
// Determinism (the contract of kernels/backend.h): a query's score for key p
// is one 8-lane accumulator over head_dim in order and one fixed horizontal
// combine; its softmax runs over its own keys [0, position] in key order
// (max, exp, sum in double); its output is sum_p w_p * V_p taken in ascending
// p, one FMA per (p, 8 lanes). None of these depends on which item, tile,
// thread, batch or prefill chunk computed the query, so results are
// bit-identical for any batch composition and thread count
// (attention_test.cc). kScalar, or a head_dim that is not a multiple of 8:
// the portable loops (the reference attention_test compares with).
//
// Thread safety: scratch buffers are per calling thread; `pool` is used as
// ThreadPool::ParallelFor allows (one caller at a time).
#ifndef TANDEM_KERNELS_CPU_ATTENTION_H_
#define TANDEM_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"

namespace tandem::kernels::cpu {

// out[(row * num_heads + h) * head_dim + d] = softmax(q_row,h . K[0..pos]
// * scale) . V[0..pos][d], KV head h / (num_heads / num_kv_heads). `pool`
// may be nullptr (the calling thread only).
void PagedAttention(GemmPath path, ThreadPool* pool, const float* q, const KvCacheView& kv, int32_t layer,
                    int32_t num_heads, absl::Span<const AttentionSequence> seqs, float scale, float* out);

}  // namespace tandem::kernels::cpu

#endif  // TANDEM_KERNELS_CPU_ATTENTION_H_
