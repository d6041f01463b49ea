// The weight tensors of a Llama model, as views (kernels::Weight) into memory
// owned elsewhere: a GGUF mapping or a synthetic model's buffer.
#ifndef TANDEM_MODEL_WEIGHTS_H_
#define TANDEM_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/model_config.h"

namespace tandem::model {

struct LayerWeights {
  kernels::Weight attn_norm;  // [dim]
  kernels::Weight wq;         // [num_heads * head_dim][dim]
  kernels::Weight wk;         // [num_kv_heads * head_dim][dim]
  kernels::Weight wv;         // [num_kv_heads * head_dim][dim]
  kernels::Weight wo;         // [dim][num_heads * head_dim]
  kernels::Weight ffn_norm;   // [dim]
  kernels::Weight w_gate;     // [ffn_dim][dim]
  kernels::Weight w_up;       // [ffn_dim][dim]
  kernels::Weight w_down;     // [dim][ffn_dim]
};

struct LlamaWeights {
  kernels::Weight token_embd;   // [vocab][dim]
  kernels::Weight output_norm;  // [dim]
  kernels::Weight output;       // [vocab][dim]; token_embd when tied
  std::vector<LayerWeights> layers;
};

// Maps GGUF tensors (token_embd.weight, blk.N.attn_q.weight, ...) to weights,
// checking each exists with the shape `config` implies. A missing output.weight
// means tied embeddings. Errors name the tensor.
absl::StatusOr<LlamaWeights> LlamaWeightsFromGguf(const GgufFile& gguf, const ModelConfig& config);

// Bytes of every weight (a tied output counted once): what one decode step
// must read from memory.
size_t WeightBytes(const LlamaWeights& weights);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_WEIGHTS_H_
