// Reads a Hugging Face config.json into a ModelConfig.
//
//   TANDEM_ASSIGN_OR_RETURN(ModelConfig c, ModelConfigFromHfJson(text));
//
// Architectures ("architectures"[0]): LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM; anything else is Unimplemented("unsupported architecture
// 'X' (supported: ...)"). Keys read: hidden_size, num_hidden_layers,
// num_attention_heads, intermediate_size, vocab_size (required, positive
// integers); num_key_value_heads (default: num_attention_heads), head_dim
// (default: hidden_size / num_attention_heads), rms_norm_eps (default 1e-6),
// rope_theta (default 10000), max_position_embeddings (default 2048),
// tie_word_embeddings (default false), attention_bias (Llama; default false;
// always true for Qwen2, whose q/k/v projections carry biases), hidden_act
// (must be "silu"), mlp_bias (must be false), rope_scaling (null or type
// "llama3" with factor, low_freq_factor, high_freq_factor,
// original_max_position_embeddings; other types are Unimplemented), and
// sliding_window (Mistral; Qwen2 only with use_sliding_window): the
// context length is capped at the window, where full attention and
// sliding-window attention agree.
//
// Hugging Face checkpoints keep q/k weights in their original layout (GGUF
// permutes them), so rope_style is kNeox.
#ifndef TANDEM_MODEL_HF_CONFIG_H_
#define TANDEM_MODEL_HF_CONFIG_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/model_config.h"

namespace tandem::model {

// Parses config.json text. InvalidArgument names the key (or the JSON byte
// offset) for malformed input. model_id is left empty: the caller names the
// model.
absl::StatusOr<ModelConfig> ModelConfigFromHfJson(std::string_view json_text);

// Reads and parses the file; errors are prefixed with the path.
absl::StatusOr<ModelConfig> ModelConfigFromHfFile(const std::string& path);

// The architectures ModelConfigFromHfJson accepts.
inline constexpr std::string_view kHfArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                                        "Qwen2ForCausalLM"};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_HF_CONFIG_H_
