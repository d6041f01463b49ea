#include "model/loader.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "hub/hub.h"
#include "model/hf_config.h"
#include "model/tokenizer_json.h"

namespace tandem::model {

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadHfCheckpoint(std::string_view dir_view) {
  const std::string dir(dir_view);
  auto m = std::make_unique<LoadedModel>();
  m->spec = dir;
  const std::string config_path = dir + "/config.json";
  std::ifstream in(config_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("model directory ", dir, " has no readable config.json"));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string config_text = ss.str();
  auto config = ModelConfigFromHfJson(config_text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(config_path, ": ", config.status().message()));
  }
  m->config = *config;
  TANDEM_ASSIGN_OR_RETURN(m->safetensors, SafetensorsCheckpoint::Open(dir));
  TANDEM_ASSIGN_OR_RETURN(m->weights,
                          LlamaWeightsFromSafetensors(*m->safetensors, m->config, &m->bias_storage));
  // Names the checkpoint across processes: the shape, config.json's bytes
  // and every norm weight (which fine-tuning changes; a few KB in all).
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, config_text.data(), config_text.size());
  for (const SafetensorsTensor* t : m->safetensors->tensors()) {
    if (t->name.find("norm") == std::string::npos || t->data == nullptr) continue;
    XXH3_64bits_update(state, t->name.data(), t->name.size());
    XXH3_64bits_update(state, t->data, t->size_bytes);
  }
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (size_t slash = base.rfind('/'); slash != std::string::npos) base = base.substr(slash + 1);
  m->config.model_id = absl::StrFormat("hf:%s:%dx%dx%dx%d:%016x", base, m->config.num_layers, m->config.dim,
                                       m->config.ffn_dim, m->config.vocab_size, digest);
  return m;
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadModel(std::string_view spec) {
  if (hub::IsHfSpec(spec)) {  // downloaded (or found in the cache) first
    TANDEM_ASSIGN_OR_RETURN(const std::string local, hub::ResolveModelSpec(spec));
    return LoadModel(local);
  }
  auto m = std::make_unique<LoadedModel>();
  m->spec = std::string(spec);
  constexpr std::string_view kSynthetic = "synthetic:";
  if (spec.starts_with(kSynthetic)) {
    // synthetic:NAME[,tokenizer=DIR]
    std::string_view name = spec.substr(kSynthetic.size());
    std::string tokenizer_dir;
    constexpr std::string_view kTokenizer = ",tokenizer=";
    if (size_t at = name.find(kTokenizer); at != std::string_view::npos) {
      tokenizer_dir = std::string(name.substr(at + kTokenizer.size()));
      name = name.substr(0, at);
    }
    TANDEM_ASSIGN_OR_RETURN(m->synthetic_model, CreateSyntheticModel(name));
    m->synthetic = true;
    if (tokenizer_dir.empty()) {
      TANDEM_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromVocabulary(m->synthetic_model->vocabulary));
    } else {
      TANDEM_ASSIGN_OR_RETURN(HfTokenizer hf, LoadHfTokenizer(tokenizer_dir));
      m->tokenizer = std::move(hf.tokenizer);
      m->chat_template = std::move(hf.chat_template);
      ModelConfig config = m->synthetic_model->config;
      if (m->tokenizer->vocab_size() > config.vocab_size) {
        // Grow the embedding to the tokenizer's vocabulary (same shape otherwise).
        config.vocab_size = m->tokenizer->vocab_size();
        TANDEM_ASSIGN_OR_RETURN(
            m->synthetic_model,
            CreateSyntheticModelFromConfig(config, m->synthetic_model->weights.token_embd.dtype));
      }
      std::string base = tokenizer_dir;
      while (base.size() > 1 && base.back() == '/') base.pop_back();
      if (size_t slash = base.rfind('/'); slash != std::string::npos) base = base.substr(slash + 1);
      m->synthetic_model->config.model_id =
          absl::StrCat(config.model_id, ",tokenizer=", base, ":", m->synthetic_model->config.vocab_size);
    }
    m->config = m->synthetic_model->config;
    m->weights = m->synthetic_model->weights;
    return m;
  }
  struct stat st;
  if (::stat(m->spec.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    TANDEM_ASSIGN_OR_RETURN(auto checkpoint, LoadHfCheckpoint(spec));
    TANDEM_ASSIGN_OR_RETURN(HfTokenizer hf, LoadHfTokenizer(spec));
    if (hf.tokenizer->vocab_size() > checkpoint->config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model directory ", m->spec, ": tokenizer.json has ", hf.tokenizer->vocab_size(),
                       " tokens but the embedding has ", checkpoint->config.vocab_size, " rows"));
    }
    checkpoint->tokenizer = std::move(hf.tokenizer);
    checkpoint->chat_template = std::move(hf.chat_template);
    return checkpoint;
  }
  TANDEM_ASSIGN_OR_RETURN(m->gguf, GgufFile::Open(std::string(spec)));
  TANDEM_ASSIGN_OR_RETURN(m->config, ModelConfigFromGguf(*m->gguf));
  TANDEM_ASSIGN_OR_RETURN(m->weights, LlamaWeightsFromGguf(*m->gguf, m->config));
  TANDEM_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::FromGguf(*m->gguf));
  if (m->gguf->Find("tokenizer.chat_template") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(m->chat_template, m->gguf->GetString("tokenizer.chat_template"));
  }
  if (m->tokenizer->vocab_size() != m->config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("gguf: tokenizer has ", m->tokenizer->vocab_size(),
                                                   " tokens but token_embd.weight has ", m->config.vocab_size,
                                                   " rows"));
  }
  return m;
}

}  // namespace tandem::model
