// The hyper-parameters of a Llama-family model, read from GGUF metadata or
// given by a synthetic preset.
#ifndef TANDEM_MODEL_MODEL_CONFIG_H_
#define TANDEM_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/gguf.h"

namespace tandem::model {

// Llama 3 style RoPE frequency scaling (config.json "rope_scaling" with
// rope_type "llama3"). The forward pass applies it through RopeFreqFactors
// below and the backend's RopeWithFreqFactors.
struct RopeScaling {
  enum class Type { kNone, kLlama3 };
  Type type = Type::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 1.0f;
  int32_t original_max_position_embeddings = 0;
};

struct ModelConfig {
  std::string architecture = "llama";
  // Names the model wherever KV crosses a process (block hashes, KV events):
  // the GGUF's general.name plus its shape, or "synthetic:<preset>".
  std::string model_id;
  int32_t vocab_size = 0;
  int32_t dim = 0;         // embedding_length
  int32_t num_layers = 0;  // block_count
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;             // dim / num_heads
  int32_t ffn_dim = 0;              // feed_forward_length
  int32_t rope_dims = 0;            // rope.dimension_count; Default: head_dim
  float rope_freq_base = 10000.0f;  // rope.freq_base; llama.cpp's default
  float rms_eps = 1e-5f;            // attention.layer_norm_rms_epsilon
  int32_t context_length = 2048;
  kernels::RopeStyle rope_style = kernels::RopeStyle::kNormal;
  // Biases on the q, k and v projections (Qwen2). Default: false.
  bool attention_bias = false;
  // Output head shares token_embd (informational; weights.output aliases it).
  bool tied_embeddings = false;
  RopeScaling rope_scaling;

  // Checks the numbers are positive and consistent (heads divide dim, kv heads
  // divide heads, rope dims even and <= head_dim, llama3 rope_scaling factors
  // positive with high_freq_factor > low_freq_factor).
  absl::Status Validate() const;
  // The KV pool's shape for this model; `kv_dtype` must satisfy
  // kernels::IsKvDType.
  kernels::KvLayout KvLayoutFor(int32_t block_size, DType kv_dtype = DType::kF32) const {
    return kernels::KvLayout{num_layers, num_kv_heads, head_dim, block_size, kv_dtype};
  }
};

// Per rotated pair i (rope_dims / 2 entries), the divisor of the pair's
// frequency freq_base^(-2i / rope_dims) under config.rope_scaling (ggml's
// freq_factors; llama.cpp's converter writes the same numbers to
// rope_freqs.weight). Empty without scaling. For llama3 these are Hugging
// Face transformers' _compute_llama3_parameters, as divisors: with
// wavelen = 2*pi / freq, a pair with wavelen < original_max_position_embeddings
// / high_freq_factor keeps its frequency (1), one with wavelen >
// original_max_position_embeddings / low_freq_factor is divided by factor, and
// one between gets 1 / ((1 - s) / factor + s), s = (original / wavelen -
// low_freq_factor) / (high_freq_factor - low_freq_factor). Computed in double.
// REQUIRES: config.Validate() is OK.
std::vector<float> RopeFreqFactors(const ModelConfig& config);

// Reads `general.architecture` (must be "llama") and the `llama.*` keys.
// Missing required keys give NotFound naming the key; absent optional keys take
// llama.cpp's defaults.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_MODEL_CONFIG_H_
