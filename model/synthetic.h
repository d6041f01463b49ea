// Built-in synthetic models: deterministic random-weight Llamas of a named
// shape, so Tandem runs with no download. `synthetic:tiny` is the default for
// the demo and tests; `llama-1b` and `llama-8b` have the dimensions of Llama
// 3.2 1B and Llama 3 8B (BF16 weights) for speed work and are never loaded in CI.
//
// The weights are random: the text they produce is gibberish. Real output
// needs a real model (--model PATH.gguf).
#ifndef TANDEM_MODEL_SYNTHETIC_H_
#define TANDEM_MODEL_SYNTHETIC_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace tandem::model {

struct SyntheticModel {
  ModelConfig config;
  Vocabulary vocabulary;
  LlamaWeights weights;              // views into `storage`
  std::vector<uint8_t> storage;      // every weight, owned
};

// Names of the presets: "tiny", "llama-1b", "llama-8b".
std::vector<std::string> SyntheticPresets();

// Builds preset `name` (without the "synthetic:" prefix). The same name gives
// bit-identical weights on every machine. NotFound lists the presets.
absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModel(std::string_view name);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_SYNTHETIC_H_
