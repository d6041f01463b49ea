#include "model/loader.h"

#include <utility>

#include "common/status_macros.h"

namespace tandem::model {

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadHfCheckpoint(std::string_view dir) {
  auto m = std::make_unique<LoadedModel>();
  m->spec = std::string(dir);
  TANDEM_ASSIGN_OR_RETURN(m->config, ReadHfCheckpointConfig(dir, &m->safetensors));
  TANDEM_ASSIGN_OR_RETURN(m->weights,
                          LlamaWeightsFromSafetensors(*m->safetensors, m->config, &m->bias_storage));
  return m;
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(std::string_view spec) {
  auto m = std::make_unique<LoadedModel>();
  ModelSource source;
  TANDEM_RETURN_IF_ERROR(ReadModelInfo(spec, m.get(), &source));
  if (source.synthetic) {
    // The shape ReadModelInfo resolved (vocabulary grown to a real
    // tokenizer's, model_id final): the same weights as the preset's.
    m->synthetic = true;
    TANDEM_ASSIGN_OR_RETURN(m->synthetic_model,
                            CreateSyntheticModelFromConfig(m->config, source.synthetic_dtype));
    m->weights = m->synthetic_model->weights;
  } else if (source.safetensors != nullptr) {
    m->safetensors = std::move(source.safetensors);
    TANDEM_ASSIGN_OR_RETURN(m->weights,
                            LlamaWeightsFromSafetensors(*m->safetensors, m->config, &m->bias_storage));
  } else {
    m->gguf = std::move(source.gguf);
    TANDEM_ASSIGN_OR_RETURN(m->weights, LlamaWeightsFromGguf(*m->gguf, m->config));
  }
  return m;
}

}  // namespace tandem::model
