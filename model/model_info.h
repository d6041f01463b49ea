// What a process that runs no forward pass needs from a model: its config
// (model_id, shape), tokenizer and chat template, read from the same specs as
// LoadModel (loader.h) without materialising any weight and without a
// backend. The router and `tandem store` use it; tandem_model_info links no
// kernel library.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<ModelInfo> info, LoadModelInfo("synthetic:tiny"));
//   info->tokenizer->Encode("Hello", true);
//
// The config (model_id included) and the tokenizer equal LoadModel's for the
// same spec: LoadModel reads them through the same ReadModelInfo. A GGUF file
// or safetensors checkpoint is mapped, its header and metadata read (and, for
// a checkpoint, the norm weights hashed into the model_id); no weight is
// copied, and a synthetic model's random weights are never generated.
//
// Thread safety: free functions, safe from any thread; a ModelInfo is
// immutable once loaded.
#ifndef TANDEM_MODEL_MODEL_INFO_H_
#define TANDEM_MODEL_MODEL_INFO_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

namespace tandem::model {

struct ModelInfo {
  std::string spec;  // as given (an hf:// spec: the local path it resolved to)
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  // The model's Jinja chat template source (GGUF tokenizer.chat_template or
  // tokenizer_config.json's chat_template); empty if it has none, and then
  // ChatTemplate::Default() applies (model/chat_template.h).
  std::string chat_template;
};

// `spec` is one of LoadModel's specs (loader.h). Errors as LoadModel's:
// NotFound for a missing file or unknown preset, InvalidArgument for a
// malformed file, Unimplemented for an unsupported architecture or tokenizer.
absl::StatusOr<std::unique_ptr<ModelInfo>> LoadModelInfo(std::string_view spec);

// What ReadModelInfo read a model from, left open so that LoadModel reads the
// weights from the same mapping. Exactly one of gguf, safetensors or
// synthetic is set.
struct ModelSource {
  std::unique_ptr<GgufFile> gguf;                      // PATH.gguf
  std::unique_ptr<SafetensorsCheckpoint> safetensors;  // a checkpoint DIR
  bool synthetic = false;                              // synthetic:...
  DType synthetic_dtype = DType::kF32;                 // of the synthetic weights
};

// LoadModelInfo into `info`, also returning the open source (LoadModel).
absl::Status ReadModelInfo(std::string_view spec, ModelInfo* info, ModelSource* source);

// A Hugging Face checkpoint directory's config.json, with a model_id that
// hashes config.json and every norm weight (which fine-tuning changes; a few
// KB), so it names the checkpoint across processes. Opens the checkpoint into
// `*checkpoint` (mapped; no weight copied).
absl::StatusOr<ModelConfig> ReadHfCheckpointConfig(std::string_view dir,
                                                   std::unique_ptr<SafetensorsCheckpoint>* checkpoint);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_MODEL_INFO_H_
