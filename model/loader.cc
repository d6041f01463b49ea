#include "model/loader.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tandem::model {

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(std::string_view spec) {
  auto m = std::make_unique<LoadedModel>();
  m->spec = std::string(spec);
  constexpr std::string_view kSynthetic = "synthetic:";
  if (spec.starts_with(kSynthetic)) {
    TANDEM_ASSIGN_OR_RETURN(m->synthetic_model, CreateSyntheticModel(spec.substr(kSynthetic.size())));
    m->synthetic = true;
    m->config = m->synthetic_model->config;
    m->weights = m->synthetic_model->weights;
    TANDEM_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromVocabulary(m->synthetic_model->vocabulary));
    return m;
  }
  TANDEM_ASSIGN_OR_RETURN(m->gguf, GgufFile::Open(std::string(spec)));
  TANDEM_ASSIGN_OR_RETURN(m->config, ModelConfigFromGguf(*m->gguf));
  TANDEM_ASSIGN_OR_RETURN(m->weights, LlamaWeightsFromGguf(*m->gguf, m->config));
  TANDEM_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromGguf(*m->gguf));
  if (m->tokenizer->vocab_size() != m->config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gguf: tokenizer has ", m->tokenizer->vocab_size(), " tokens but token_embd.weight has ",
        m->config.vocab_size, " rows"));
  }
  return m;
}

}  // namespace tandem::model
