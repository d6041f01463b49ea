// Device kernels of the CUDA backend, behind plain launch functions so the
// backend's host code (cuda_backend.cc) compiles with the host compiler and
// only this file's .cu goes through nvcc. No Abseil here: each launcher
// returns the launch's cudaError_t and the backend turns it into a Status.
//
//   TANDEM_CUDA_CHECK(LaunchAdd(x, y, n, stream));   // x[i] += y[i]
//
// Every pointer is device memory; every launcher is asynchronous on `stream`.
// Semantics match kernels/cpu/cpu_backend.cc op for op (see backend.h); the
// results differ from the CPU reference only by float rounding (order of
// reductions, cosf/expf ulps), never by indexing.
#ifndef TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_
#define TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace tandem::kernels::cuda {

// How a device weight table stores its elements.
enum class DeviceDType : int32_t { kF32 = 0, kBF16 = 1 };

// How the KV pool stores its elements (kv_layout.h's dtype); kernels convert
// to F32 on read and from F32 on write.
enum class DeviceKvDType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2 };

// The paged KV pool (kv_layout.h) as plain numbers a kernel can read:
// block[layer][kv][token][kv_head][head_dim]. All strides in elements.
struct DeviceKvLayout {
  void* base = nullptr;
  DeviceKvDType dtype = DeviceKvDType::kF32;
  int64_t block_elements = 0;  // KvLayout::BlockElements()
  int64_t layer_stride = 0;    // KvLayout::LayerStride()
  int64_t plane_stride = 0;    // KvLayout::PlaneStride()
  int64_t token_stride = 0;    // KvLayout::TokenStride() = kv_heads * head_dim
  int32_t block_size = 0;
  int32_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// Largest head_dim PagedAttention supports (2 accumulators per thread of 128).
inline constexpr int kMaxAttentionHeadDim = 256;

// One query row of an attention step.
struct AttentionRow {
  int32_t row = 0;           // token row in q/out
  int32_t n_ctx = 0;         // positions attended: [0, n_ctx) (causal: position + 1)
  int32_t table_offset = 0;  // first entry of this row's block table in `block_tables`
  int32_t item_begin = 0;    // first work item of this row (items are contiguous per row)
  int32_t num_splits = 0;    // work items of this row: ceil(n_ctx / split_tokens)
};

// One work item: positions [split * split_tokens, min(n_ctx, (split + 1) * split_tokens))
// of row `row_index`, for every head (grid.y).
struct AttentionItem {
  int32_t row_index = 0;  // into the AttentionRow array
  int32_t split = 0;
};

cudaError_t LaunchEmbed(const void* table, DeviceDType dtype, int64_t vocab, int64_t cols, const int32_t* ids,
                        int64_t rows, float* out, cudaStream_t stream);

// w: F32 vector of n. out may equal x.
cudaError_t LaunchRmsNorm(const float* x, int64_t rows, const float* w, int64_t n, float eps, float* out,
                          cudaStream_t stream);

// out[i] = bf16(x[i]), round to nearest even (bit-identical to FloatToBF16 in common/dtype.h).
cudaError_t LaunchFloatToBF16(const float* x, int64_t n, uint16_t* out, cudaStream_t stream);

// theta_scale = freq_base^(-2 / rope_dims), computed by the caller on the host.
cudaError_t LaunchRope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                       const int32_t* positions, float theta_scale, bool neox, cudaStream_t stream);

cudaError_t LaunchWriteKv(const DeviceKvLayout& kv, int32_t layer, const float* k, const float* v,
                          const int32_t* slots, int64_t rows, cudaStream_t stream);

// Attention for `num_items` work items x `num_heads` heads. A row with one
// split writes `out` directly; rows with several write partial results
// (partial_acc: [item][head][head_dim], partial_ml: [item][head][max, sum])
// that a second kernel combines. partial_* may be null when no row splits.
cudaError_t LaunchPagedAttention(const float* q, const DeviceKvLayout& kv, int32_t layer, int32_t num_heads,
                                 const AttentionRow* rows, int32_t num_rows, const AttentionItem* items,
                                 int32_t num_items, bool any_split, const int32_t* block_tables,
                                 int32_t split_tokens, float scale, float* partial_acc, float* partial_ml,
                                 float* out, cudaStream_t stream);

// out may equal gate.
cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);

cudaError_t LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream);

}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_CUDA_KERNELS_H_
