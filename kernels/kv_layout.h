// The shape of the paged KV cache, shared by every backend, the engine's block
// pool, transfers and the tiers.
//
// One block holds `block_size` consecutive tokens of one sequence for ALL
// layers, contiguous, so a block is one RDMA write, one DRAM-tier object and
// one RocksDB value:
//
//   block[layer][kv (0 = K, 1 = V)][token][kv_head][head_dim]   (elements of `dtype`)
//
// The element type is the pool's: F32 (the CPU default, which the llama.cpp
// references need), BF16 (the CUDA default; half the bytes to store, move and
// offload) or F16. Attention computes in F32 whatever the storage type; a
// backend converts on WriteKv and on read. Every process that exchanges
// blocks (prefill and decode workers, the tiers, the shared store) must use
// the same dtype: BlockBytes() differs between dtypes, and every exchange
// checks it.
//
// A KvCacheView is the base of `num_blocks` such blocks laid end to end in one
// backend allocation; block b starts at base + b * BlockBytes().
#ifndef TANDEM_KERNELS_KV_LAYOUT_H_
#define TANDEM_KERNELS_KV_LAYOUT_H_

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace tandem::kernels {

struct KvLayout {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;  // tokens per block
  // kF32, kBF16 or kF16 (IsKvDType).
  DType dtype = DType::kF32;

  // Elements in one token's K (or V) for one layer: [kv_head][head_dim].
  int64_t TokenStride() const { return int64_t{num_kv_heads} * head_dim; }
  // Elements in one layer's K (or V) plane of a block: [token][kv_head][head_dim].
  int64_t PlaneStride() const { return TokenStride() * block_size; }
  // Elements in one layer of a block: [K,V][token][kv_head][head_dim].
  int64_t LayerStride() const { return 2 * PlaneStride(); }
  int64_t BlockElements() const { return LayerStride() * num_layers; }
  size_t ElementBytes() const { return DTypeBytes(dtype, 1); }
  size_t BlockBytes() const { return static_cast<size_t>(BlockElements()) * ElementBytes(); }

  // Offset in elements, from the start of a block, of token `t`'s K (kv = 0)
  // or V (kv = 1) vector for `layer`, all heads.
  int64_t Offset(int32_t layer, int32_t kv, int32_t t) const {
    return layer * LayerStride() + kv * PlaneStride() + t * TokenStride();
  }
};

// Whether `type` may be a KV pool's element type.
inline bool IsKvDType(DType type) {
  return type == DType::kF32 || type == DType::kBF16 || type == DType::kF16;
}

// A borrowed view of the KV pool in backend memory.
struct KvCacheView {
  void* base = nullptr;
  KvLayout layout;
  int32_t num_blocks = 0;

  // The first byte of block `block_id` (backend memory).
  uint8_t* Block(int32_t block_id) const {
    return static_cast<uint8_t*>(base) + static_cast<size_t>(block_id) * layout.BlockBytes();
  }
};

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_KV_LAYOUT_H_
