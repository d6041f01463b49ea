// Loads a model by name: a GGUF path or "synthetic:<preset>".
//
//   TANDEM_ASSIGN_OR_RETURN(auto model, LoadModel("synthetic:tiny"));
//   model->tokenizer->Encode("Hello", true);
#ifndef TANDEM_MODEL_LOADER_H_
#define TANDEM_MODEL_LOADER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/synthetic.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace tandem::model {

inline constexpr std::string_view kDefaultModel = "synthetic:tiny";

// Everything a runtime needs from a model, in host memory.
struct LoadedModel {
  std::string spec;  // as given to LoadModel
  bool synthetic = false;
  ModelConfig config;
  LlamaWeights weights;  // views into gguf or synthetic storage
  std::unique_ptr<Tokenizer> tokenizer;
  // Owners of the weight memory (one of them is set).
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<SyntheticModel> synthetic_model;
};

// `spec` is "synthetic:<preset>" or a path to a .gguf file. Errors name the
// problem: NotFound for a missing file or unknown preset, InvalidArgument for
// a malformed file, Unimplemented for an unsupported architecture, tensor type
// or tokenizer.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(std::string_view spec);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LOADER_H_
