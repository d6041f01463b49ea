// Built-in synthetic models: deterministic random-weight Llamas of a named
// shape, so Tandem runs with no download. `synthetic:tiny` is the default for
// the demo and tests; `llama-1b` and `llama-8b` have the dimensions of Llama
// 3.2 1B and Llama 3 8B (BF16 weights) for speed work and are never loaded in
// CI; `qwen2-0.5b` has Qwen2.5 0.5B's (q/k/v biases, NeoX RoPE).
//
// `config=PATH/config.json` takes the shape from a Hugging Face config.json
// (see hf_config.h): a real Llama/Mistral/Qwen2 shape with random weights,
// of the config's torch_dtype (float32, float16; anything else BF16), and the
// built-in vocabulary padded with unused tokens to the config's vocab_size.
// Its model_id hashes the config file's bytes. A config's llama3
// rope_scaling is applied as for real weights (LlamaModel).
//
// The weights are random: the text they produce is gibberish. Real output
// needs a real model (--model PATH.gguf). The shape alone, without weights,
// is synthetic_shape.h.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<SyntheticModel> m, CreateSyntheticModel("tiny"));
//
// Thread safety: free functions; a SyntheticModel is immutable once built.
#ifndef TANDEM_MODEL_SYNTHETIC_H_
#define TANDEM_MODEL_SYNTHETIC_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "model/synthetic_shape.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace tandem::model {

struct SyntheticModel {
  ModelConfig config;
  Vocabulary vocabulary;
  LlamaWeights weights;          // views into `storage`
  std::vector<uint8_t> storage;  // every weight, owned
};

// Builds preset `name` (without the "synthetic:" prefix), or "config=PATH".
// The same name gives bit-identical weights on every machine. NotFound lists
// the presets.
absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModel(std::string_view name);

// Random weights of `dtype` (F32, F16 or BF16; biases always F32) in the
// shape of `config`. config.vocab_size 0 means the built-in vocabulary;
// otherwise it must be at least the built-in vocabulary's size, which is
// padded to it. Keeps config.model_id.
absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModelFromConfig(const ModelConfig& config,
                                                                               DType dtype);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_SYNTHETIC_H_
