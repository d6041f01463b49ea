// The weight tensors of a Llama model, as views (kernels::Weight) into memory
// owned elsewhere: a GGUF mapping or a synthetic model's buffer.
#ifndef TANDEM_MODEL_WEIGHTS_H_
#define TANDEM_MODEL_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/safetensors.h"

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
  // Projection biases (config.attention_bias), F32 vectors; data == nullptr
  // when the model has none.
  kernels::Weight bq;  // [num_heads * head_dim]
  kernels::Weight bk;  // [num_kv_heads * head_dim]
  kernels::Weight bv;  // [num_kv_heads * head_dim]
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

// Maps Hugging Face tensors (model.embed_tokens.weight,
// model.layers.N.self_attn.q_proj.weight, mlp.gate_proj, input_layernorm,
// model.norm.weight, lm_head.weight, ...) to weights, checking each exists
// with shape [out, in] (or [n] for norms and biases) and a usable dtype. No
// lm_head.weight, or config.tied_embeddings, means tied embeddings. With
// config.attention_bias the q/k/v biases are required; biases are converted
// to F32 into `bias_storage` (which must outlive the result). Errors name the
// tensor.
absl::StatusOr<LlamaWeights> LlamaWeightsFromSafetensors(const SafetensorsCheckpoint& ckpt,
                                                         const ModelConfig& config,
                                                         std::vector<float>* bias_storage);

// Bytes of every weight (a tied output counted once): what one decode step
// must read from memory.
size_t WeightBytes(const LlamaWeights& weights);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_WEIGHTS_H_
