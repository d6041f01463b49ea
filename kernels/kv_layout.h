// The shape of the paged KV cache, shared by every backend, the engine's block
// pool, transfers and the tiers.
//
// One block holds `block_size` consecutive tokens of one sequence for ALL
// layers, contiguous, so a block is one RDMA write, one DRAM-tier object and
// one RocksDB value:
//
//   block[layer][kv (0 = K, 1 = V)][token][kv_head][head_dim]   (F32)
//
// A KvCacheView is the base of `num_blocks` such blocks laid end to end in one
// backend allocation; block b starts at base + b * BlockElements().
#ifndef TANDEM_KERNELS_KV_LAYOUT_H_
#define TANDEM_KERNELS_KV_LAYOUT_H_

#include <cstddef>
#include <cstdint>

namespace tandem::kernels {

struct KvLayout {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;  // tokens per block

  // Floats in one token's K (or V) for one layer: [kv_head][head_dim].
  int64_t TokenStride() const { return int64_t{num_kv_heads} * head_dim; }
  // Floats in one layer's K (or V) plane of a block: [token][kv_head][head_dim].
  int64_t PlaneStride() const { return TokenStride() * block_size; }
  // Floats in one layer of a block: [K,V][token][kv_head][head_dim].
  int64_t LayerStride() const { return 2 * PlaneStride(); }
  int64_t BlockElements() const { return LayerStride() * num_layers; }
  size_t BlockBytes() const { return static_cast<size_t>(BlockElements()) * sizeof(float); }

  // Offset in floats, from the start of a block, of token `t`'s K (kv = 0) or V
  // (kv = 1) vector for `layer`, all heads.
  int64_t Offset(int32_t layer, int32_t kv, int32_t t) const {
    return layer * LayerStride() + kv * PlaneStride() + t * TokenStride();
  }
};

// A borrowed view of the KV pool in backend memory.
struct KvCacheView {
  float* base = nullptr;
  KvLayout layout;
  int32_t num_blocks = 0;

  float* Block(int32_t block_id) const { return base + block_id * layout.BlockElements(); }
};

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_KV_LAYOUT_H_
