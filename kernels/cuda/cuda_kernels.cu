// Device kernels of the CUDA backend; see cuda_kernels.h. Written for
// clarity: one obvious indexing scheme per kernel, spelled out in comments,
// every global index bounds-checked, int64 arithmetic for every offset.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "kernels/cuda/cuda_kernels.h"

namespace tandem::kernels::cuda {
namespace {

constexpr int kThreads = 256;  // default block size: 8 warps

// Blocks for a grid-stride loop over n elements: enough to fill the GPU,
// never more than needed, never 0.
unsigned int GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  constexpr int64_t kMaxBlocks = 65536;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

__device__ __forceinline__ float BF16ToFloat(uint16_t b) {
  return __uint_as_float(static_cast<uint32_t>(b) << 16);
}

// Same bit manipulation as tandem::FloatToBF16 (common/dtype.h).
__device__ __forceinline__ uint16_t FloatToBF16(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // every lane holds the warp's sum
}

// Sum over the whole block; every thread gets the same value (the per-warp
// sums are added in warp order by each thread). REQUIRES: blockDim.x is a
// multiple of 32 and at most 1024; every thread of the block calls it.
template <typename T>
__device__ T BlockSum(T v) {
  __shared__ T warp_sums[32];
  v = WarpSum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  T total = 0;
  const int num_warps = blockDim.x >> 5;
  for (int w = 0; w < num_warps; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums may be reused by the next call
  return total;
}

// ---------------------------------------------------------------------------
// Embed: grid.x = row r; threads stride over the row's columns.
__global__ void EmbedKernel(const void* table, int32_t dtype, int64_t vocab, int64_t cols, const int32_t* ids,
                            float* out) {
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r];
  float* o = out + r * cols;
  if (id < 0 || id >= vocab) {  // the model validates ids; poison rather than read out of bounds
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = NAN;
    return;
  }
  const int64_t base = static_cast<int64_t>(id) * cols;
  if (dtype == static_cast<int32_t>(DeviceDType::kBF16)) {
    const uint16_t* t = static_cast<const uint16_t*>(table) + base;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = BF16ToFloat(t[c]);
  } else {
    const float* t = static_cast<const float*>(table) + base;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = t[c];
  }
}

// RmsNorm: grid.x = row; threads stride over the row. Sum of squares in
// double, as the CPU reference (and llama.cpp) does.
__global__ void RmsNormKernel(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* yr = out + static_cast<int64_t>(blockIdx.x) * n;
  double sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = xr[i];
    sum += static_cast<double>(v * v);
  }
  sum = BlockSum(sum);  // also a barrier: all reads of xr are done before any write to yr
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / sqrtf(mean + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

__global__ void FloatToBF16Kernel(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FloatToBF16(x[i]);
  }
}

// Rope: one thread per rotated pair. Flat index t = (r * num_heads + h) * half + pair,
// half = rope_dims / 2. Pair `pair` rotates (2*pair, 2*pair + 1) (normal) or
// (pair, pair + half) (NeoX) by theta = position * theta_scale^pair, the power
// taken as an iterated float product exactly as the CPU reference does.
__global__ void RopeKernel(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                           const int32_t* positions, float theta_scale, bool neox) {
  const int32_t half = rope_dims / 2;
  const int64_t total = rows * num_heads * half;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int32_t pair = static_cast<int32_t>(t % half);
    const int64_t row_head = t / half;  // r * num_heads + h
    const int64_t r = row_head / num_heads;
    float theta = static_cast<float>(positions[r]);
    for (int32_t k = 0; k < pair; ++k) theta *= theta_scale;
    const float c = cosf(theta);
    const float s = sinf(theta);
    const int32_t a = neox ? pair : 2 * pair;
    const int32_t b = neox ? pair + half : 2 * pair + 1;
    float* v = x + row_head * head_dim;
    const float x0 = v[a];
    const float x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

// KV elements: stored as float, __nv_bfloat16 or __half; computed in F32.
__device__ __forceinline__ float KvToFloat(float x) { return x; }
__device__ __forceinline__ float KvToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float KvToFloat(__half x) { return __half2float(x); }
template <typename KvT>
__device__ __forceinline__ KvT KvFromFloat(float x);
template <>
__device__ __forceinline__ float KvFromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 KvFromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half KvFromFloat<__half>(float x) {
  return __float2half_rn(x);
}

// WriteKv: grid.x = row r; threads stride over the token's kv_heads * head_dim
// elements. Slot s lands in block s / block_size at token s % block_size.
template <typename KvT>
__global__ void WriteKvKernel(DeviceKvLayout kv, int32_t layer, const float* k, const float* v,
                              const int32_t* slots) {
  const int64_t r = blockIdx.x;
  const int32_t slot = slots[r];
  if (slot < 0) return;
  const int32_t block = slot / kv.block_size;
  const int32_t t = slot % kv.block_size;
  if (block >= kv.num_blocks) return;  // the model validates slots; never write out of the pool
  KvT* dst_k =
      static_cast<KvT*>(kv.base) + block * kv.block_elements + layer * kv.layer_stride + t * kv.token_stride;
  KvT* dst_v = dst_k + kv.plane_stride;
  const float* src_k = k + r * kv.token_stride;
  const float* src_v = v + r * kv.token_stride;
  for (int64_t i = threadIdx.x; i < kv.token_stride; i += blockDim.x) {
    dst_k[i] = KvFromFloat<KvT>(src_k[i]);
    dst_v[i] = KvFromFloat<KvT>(src_v[i]);
  }
}

// ---------------------------------------------------------------------------
// Paged attention (decode and prefill alike).
constexpr int kAttnThreads = 128;  // 4 warps
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnTile = 64;                                        // positions per tile (<= kAttnThreads)
constexpr int kDimsPerThread = kMaxAttentionHeadDim / kAttnThreads;  // 2

// Address of position p's K (kv = 0) or V (kv = 1) vector for `kv_head`.
template <typename KvT>
__device__ __forceinline__ const KvT* KvVector(const DeviceKvLayout& kv, const int32_t* table, int32_t layer,
                                               int32_t which, int32_t p, int32_t kv_head) {
  const int64_t block = table[p / kv.block_size];
  const int64_t t = p % kv.block_size;
  return static_cast<const KvT*>(kv.base) + block * kv.block_elements + layer * kv.layer_stride +
         which * kv.plane_stride + t * kv.token_stride + static_cast<int64_t>(kv_head) * kv.head_dim;
}

// grid = (num_items, num_heads), block = kAttnThreads. Block (item, h) covers
// positions [begin, end) of its row for query head h with an online softmax:
// tiles of kAttnTile positions; warp w scores positions w, w + 4, ... of the
// tile (lanes split head_dim, then a warp sum); then every thread rescales
// its accumulators acc[k] for dims d = threadIdx.x + k * kAttnThreads and
// adds the tile's weighted V rows.
template <typename KvT>
__global__ void PagedAttentionKernel(const float* q, DeviceKvLayout kv, int32_t layer, int32_t num_heads,
                                     const AttentionRow* rows, const AttentionItem* items,
                                     const int32_t* block_tables, int32_t split_tokens, float scale,
                                     float* partial_acc, float* partial_ml, float* out) {
  __shared__ float q_s[kMaxAttentionHeadDim];
  __shared__ float p_s[kAttnTile];  // scores, then softmax weights, of the current tile
  const int32_t item_index = blockIdx.x;
  const int32_t h = blockIdx.y;
  const AttentionItem item = items[item_index];
  const AttentionRow row = rows[item.row_index];
  const int32_t head_dim = kv.head_dim;
  const int32_t group = num_heads / kv.num_kv_heads;  // query heads per KV head (GQA)
  const int32_t kv_head = h / group;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int32_t* table = block_tables + row.table_offset;

  const float* qv = q + (static_cast<int64_t>(row.row) * num_heads + h) * head_dim;
  for (int d = tid; d < head_dim; d += kAttnThreads) q_s[d] = qv[d];
  __syncthreads();

  const int32_t begin = item.split * split_tokens;
  const int32_t end = min(row.n_ctx, begin + split_tokens);
  float m = -INFINITY;  // running max of the scores seen
  float l = 0;          // running sum of exp(score - m)
  float acc[kDimsPerThread];
  for (int k = 0; k < kDimsPerThread; ++k) acc[k] = 0;

  for (int32_t tile = begin; tile < end; tile += kAttnTile) {
    const int32_t tile_len = min(kAttnTile, end - tile);
    for (int32_t j = warp; j < tile_len; j += kAttnWarps) {
      const KvT* kp = KvVector<KvT>(kv, table, layer, 0, tile + j, kv_head);
      float dot = 0;
      for (int d = lane; d < head_dim; d += 32) dot += q_s[d] * KvToFloat(kp[d]);
      dot = WarpSum(dot);
      if (lane == 0) p_s[j] = dot * scale;
    }
    __syncthreads();
    // Every thread reads the same scores in the same order: m, l are uniform.
    float tile_max = -INFINITY;
    for (int32_t j = 0; j < tile_len; ++j) tile_max = fmaxf(tile_max, p_s[j]);
    const float m_new = fmaxf(m, tile_max);
    const float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
    __syncthreads();                           // all reads of the raw scores are done
    if (tid < tile_len) p_s[tid] = expf(p_s[tid] - m_new);
    __syncthreads();
    l *= correction;
    for (int k = 0; k < kDimsPerThread; ++k) acc[k] *= correction;
    for (int32_t j = 0; j < tile_len; ++j) {
      const float w = p_s[j];
      l += w;
      const KvT* vp = KvVector<KvT>(kv, table, layer, 1, tile + j, kv_head);
      for (int k = 0; k < kDimsPerThread; ++k) {
        const int d = tid + k * kAttnThreads;
        if (d < head_dim) acc[k] += w * KvToFloat(vp[d]);
      }
    }
    m = m_new;
    __syncthreads();  // p_s is overwritten by the next tile
  }

  if (row.num_splits == 1) {
    float* o = out + (static_cast<int64_t>(row.row) * num_heads + h) * head_dim;
    const float inv = 1.0f / l;
    for (int k = 0; k < kDimsPerThread; ++k) {
      const int d = tid + k * kAttnThreads;
      if (d < head_dim) o[d] = acc[k] * inv;
    }
    return;
  }
  const int64_t slot = static_cast<int64_t>(item_index) * num_heads + h;
  for (int k = 0; k < kDimsPerThread; ++k) {
    const int d = tid + k * kAttnThreads;
    if (d < head_dim) partial_acc[slot * head_dim + d] = acc[k];
  }
  if (tid == 0) {
    partial_ml[2 * slot] = m;
    partial_ml[2 * slot + 1] = l;
  }
}

// grid = (num_rows, num_heads). Merges a split row's partials:
// out = sum_s acc_s * exp(m_s - M) / sum_s l_s * exp(m_s - M), M = max_s m_s.
__global__ void AttentionCombineKernel(const AttentionRow* rows, int32_t num_heads, int32_t head_dim,
                                       const float* partial_acc, const float* partial_ml, float* out) {
  const AttentionRow row = rows[blockIdx.x];
  if (row.num_splits == 1) return;  // written directly by PagedAttentionKernel
  const int32_t h = blockIdx.y;
  float max_m = -INFINITY;
  for (int32_t s = 0; s < row.num_splits; ++s) {
    const int64_t slot = static_cast<int64_t>(row.item_begin + s) * num_heads + h;
    max_m = fmaxf(max_m, partial_ml[2 * slot]);
  }
  float total = 0;
  for (int32_t s = 0; s < row.num_splits; ++s) {
    const int64_t slot = static_cast<int64_t>(row.item_begin + s) * num_heads + h;
    total += partial_ml[2 * slot + 1] * expf(partial_ml[2 * slot] - max_m);
  }
  const float inv = 1.0f / total;
  float* o = out + (static_cast<int64_t>(row.row) * num_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float sum = 0;
    for (int32_t s = 0; s < row.num_splits; ++s) {
      const int64_t slot = static_cast<int64_t>(row.item_begin + s) * num_heads + h;
      sum += partial_acc[slot * head_dim + d] * expf(partial_ml[2 * slot] - max_m);
    }
    o[d] = sum * inv;
  }
}

__global__ void SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += y[i];
  }
}

}  // namespace

cudaError_t LaunchEmbed(const void* table, DeviceDType dtype, int64_t vocab, int64_t cols, const int32_t* ids,
                        int64_t rows, float* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  EmbedKernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(table, static_cast<int32_t>(dtype),
                                                                        vocab, cols, ids, out);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, int64_t rows, const float* w, int64_t n, float eps, float* out,
                          cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(x, w, n, eps, out);
  return cudaGetLastError();
}

cudaError_t LaunchFloatToBF16(const float* x, int64_t n, uint16_t* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  FloatToBF16Kernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, out);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                       const int32_t* positions, float theta_scale, bool neox, cudaStream_t stream) {
  const int64_t total = rows * num_heads * (rope_dims / 2);
  if (total <= 0) return cudaSuccess;
  RopeKernel<<<GridFor(total), kThreads, 0, stream>>>(x, rows, num_heads, head_dim, rope_dims, positions,
                                                      theta_scale, neox);
  return cudaGetLastError();
}

cudaError_t LaunchWriteKv(const DeviceKvLayout& kv, int32_t layer, const float* k, const float* v,
                          const int32_t* slots, int64_t rows, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const unsigned int grid = static_cast<unsigned int>(rows);
  switch (kv.dtype) {
    case DeviceKvDType::kBF16:
      WriteKvKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(kv, layer, k, v, slots);
      break;
    case DeviceKvDType::kF16:
      WriteKvKernel<__half><<<grid, kThreads, 0, stream>>>(kv, layer, k, v, slots);
      break;
    default:
      WriteKvKernel<float><<<grid, kThreads, 0, stream>>>(kv, layer, k, v, slots);
  }
  return cudaGetLastError();
}

cudaError_t LaunchPagedAttention(const float* q, const DeviceKvLayout& kv, int32_t layer, int32_t num_heads,
                                 const AttentionRow* rows, int32_t num_rows, const AttentionItem* items,
                                 int32_t num_items, bool any_split, const int32_t* block_tables,
                                 int32_t split_tokens, float scale, float* partial_acc, float* partial_ml,
                                 float* out, cudaStream_t stream) {
  if (num_items <= 0 || num_heads <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(num_items), static_cast<unsigned int>(num_heads));
  switch (kv.dtype) {
    case DeviceKvDType::kBF16:
      PagedAttentionKernel<__nv_bfloat16>
          <<<grid, kAttnThreads, 0, stream>>>(q, kv, layer, num_heads, rows, items, block_tables,
                                              split_tokens, scale, partial_acc, partial_ml, out);
      break;
    case DeviceKvDType::kF16:
      PagedAttentionKernel<__half><<<grid, kAttnThreads, 0, stream>>>(q, kv, layer, num_heads, rows, items,
                                                                      block_tables, split_tokens, scale,
                                                                      partial_acc, partial_ml, out);
      break;
    default:
      PagedAttentionKernel<float><<<grid, kAttnThreads, 0, stream>>>(q, kv, layer, num_heads, rows, items,
                                                                     block_tables, split_tokens, scale,
                                                                     partial_acc, partial_ml, out);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !any_split) return err;
  const dim3 combine_grid(static_cast<unsigned int>(num_rows), static_cast<unsigned int>(num_heads));
  AttentionCombineKernel<<<combine_grid, kAttnThreads, 0, stream>>>(rows, num_heads, kv.head_dim, partial_acc,
                                                                    partial_ml, out);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  AddKernel<<<GridFor(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

}  // namespace tandem::kernels::cuda
