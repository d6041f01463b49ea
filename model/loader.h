// Loads a model by name: a GGUF path, a Hugging Face checkpoint directory or
// "synthetic:<preset>".
//
// Specs:
//   PATH.gguf                      GGUF file (weights and tokenizer)
//   DIR                            config.json + model.safetensors or
//                                  model.safetensors.index.json + shards
//                                  (Llama, Mistral, Qwen2; see hf_config.h),
//                                  tokenizer.json (+ tokenizer_config.json,
//                                  generation_config.json; tokenizer_json.h).
//                                  LoadHfCheckpoint loads the weights alone.
//   synthetic:tiny | llama-1b | llama-8b | qwen2-0.5b
//                                  built-in random-weight presets
//   synthetic:config=PATH/config.json
//                                  random weights in the shape of a real
//                                  config.json, with the built-in vocabulary
//                                  padded to its vocab_size (synthetic.h)
//   synthetic:NAME,tokenizer=DIR   either of the above with DIR's real
//                                  tokenizer.json (and chat template); the
//                                  embedding grows to the tokenizer's
//                                  vocabulary where that is larger, and the
//                                  model_id names the tokenizer
//
//   TANDEM_ASSIGN_OR_RETURN(auto model, LoadModel("synthetic:tiny"));
//   model->tokenizer->Encode("Hello", true);
//
// A process that needs no weights (router, store) calls LoadModelInfo
// (model_info.h) instead: same config and tokenizer, no weights, no kernels.
//
// Thread safety: free functions, safe from any thread; a LoadedModel is
// immutable once loaded.
#ifndef TANDEM_MODEL_LOADER_H_
#define TANDEM_MODEL_LOADER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/model_info.h"
#include "model/safetensors.h"
#include "model/synthetic.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace tandem::model {

inline constexpr std::string_view kDefaultModel = "synthetic:tiny";

// Everything a runtime needs from a model, in host memory: the ModelInfo
// (spec, config, tokenizer, chat template; LoadModelInfo alone reads those
// without weights, model_info.h) and the weights.
struct LoadedModel : ModelInfo {
  bool synthetic = false;
  LlamaWeights weights;  // views into gguf or synthetic storage
  // Owners of the weight memory (one of them is set).
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<SyntheticModel> synthetic_model;
  std::unique_ptr<SafetensorsCheckpoint> safetensors;
  std::vector<float> bias_storage;  // F32 copies of attention biases (safetensors)
};

// `spec` is one of the specs above. Errors name the
// problem: NotFound for a missing file or unknown preset, InvalidArgument for
// a malformed file, Unimplemented for an unsupported architecture, tensor type
// or tokenizer.
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(std::string_view spec);

// Loads a Hugging Face checkpoint directory's config and weights, without a
// tokenizer (tokenizer is null).
absl::StatusOr<std::unique_ptr<LoadedModel>> LoadHfCheckpoint(std::string_view dir);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LOADER_H_
