// The shape of a synthetic model without its weights: the preset table, the
// built-in vocabulary and the ModelConfig that `synthetic:NAME` resolves to.
// LoadModelInfo (model_info.h) uses it where no weights are wanted (router,
// store); CreateSyntheticModel (synthetic.h) fills the same shape with the
// random weights.
//
//   TANDEM_ASSIGN_OR_RETURN(SyntheticShape shape, SyntheticModelShape("tiny"));
//   shape.config.vocab_size == shape.vocabulary.tokens.size();
//
// Thread safety: free functions over their arguments; safe from any thread.
#ifndef TANDEM_MODEL_SYNTHETIC_SHAPE_H_
#define TANDEM_MODEL_SYNTHETIC_SHAPE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace tandem::model {

struct SyntheticShape {
  // Validated; vocab_size is vocabulary's size; model_id names the preset
  // (or hashes the config file).
  ModelConfig config;
  DType dtype = DType::kF32;  // of the weights (biases are always F32)
  Vocabulary vocabulary;      // built in, padded with unused tokens to vocab_size
};

// Names of the presets: "tiny", "llama-1b", "llama-8b", "qwen2-0.5b".
std::vector<std::string> SyntheticPresets();

// Preset `name` (without the "synthetic:" prefix), or "config=PATH". NotFound
// lists the presets.
absl::StatusOr<SyntheticShape> SyntheticModelShape(std::string_view name);

// `config`'s shape with the built-in vocabulary padded to config.vocab_size
// (0: the built-in vocabulary alone; otherwise at least its size). Keeps
// config.model_id. InvalidArgument for a vocabulary too small or too large, a
// dtype other than F32/F16/BF16 or an invalid config.
absl::StatusOr<SyntheticShape> SyntheticShapeFromConfig(const ModelConfig& config, DType dtype);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_SYNTHETIC_SHAPE_H_
