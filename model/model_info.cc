#include "model/model_info.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "hub/hub.h"
#include "model/hf_config.h"
#include "model/synthetic_shape.h"
#include "model/tokenizer_json.h"

namespace tandem::model {
namespace {

// The last path component of `dir`, without trailing slashes.
std::string BaseName(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (size_t slash = dir.rfind('/'); slash != std::string::npos) dir = dir.substr(slash + 1);
  return dir;
}

// synthetic:NAME[,tokenizer=DIR]: the preset's shape; with DIR, its real
// tokenizer and chat template, the vocabulary grown to the tokenizer's.
absl::Status ReadSyntheticInfo(std::string_view name, ModelInfo* info, ModelSource* source) {
  std::string tokenizer_dir;
  constexpr std::string_view kTokenizer = ",tokenizer=";
  if (size_t at = name.find(kTokenizer); at != std::string_view::npos) {
    tokenizer_dir = std::string(name.substr(at + kTokenizer.size()));
    name = name.substr(0, at);
  }
  TANDEM_ASSIGN_OR_RETURN(SyntheticShape shape, SyntheticModelShape(name));
  source->synthetic = true;
  source->synthetic_dtype = shape.dtype;
  if (tokenizer_dir.empty()) {
    TANDEM_ASSIGN_OR_RETURN(info->tokenizer, Tokenizer::FromVocabulary(std::move(shape.vocabulary)));
  } else {
    TANDEM_ASSIGN_OR_RETURN(HfTokenizer hf, LoadHfTokenizer(tokenizer_dir));
    info->tokenizer = std::move(hf.tokenizer);
    info->chat_template = std::move(hf.chat_template);
    const std::string preset_model_id = shape.config.model_id;
    if (info->tokenizer->vocab_size() > shape.config.vocab_size) {
      // Grow the embedding to the tokenizer's vocabulary (same shape otherwise).
      ModelConfig grown = shape.config;
      grown.vocab_size = info->tokenizer->vocab_size();
      TANDEM_ASSIGN_OR_RETURN(shape, SyntheticShapeFromConfig(grown, shape.dtype));
    }
    shape.config.model_id =
        absl::StrCat(preset_model_id, ",tokenizer=", BaseName(tokenizer_dir), ":", shape.config.vocab_size);
  }
  info->config = std::move(shape.config);
  return absl::OkStatus();
}

// A checkpoint DIR: config.json (model_id hashing the norms) and tokenizer.json.
absl::Status ReadHfInfo(std::string_view dir, ModelInfo* info, ModelSource* source) {
  TANDEM_ASSIGN_OR_RETURN(info->config, ReadHfCheckpointConfig(dir, &source->safetensors));
  TANDEM_ASSIGN_OR_RETURN(HfTokenizer hf, LoadHfTokenizer(dir));
  if (hf.tokenizer->vocab_size() > info->config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("model directory ", info->spec, ": tokenizer.json has ", hf.tokenizer->vocab_size(),
                     " tokens but the embedding has ", info->config.vocab_size, " rows"));
  }
  info->tokenizer = std::move(hf.tokenizer);
  info->chat_template = std::move(hf.chat_template);
  return absl::OkStatus();
}

// PATH.gguf: the metadata's config, tokenizer and chat template.
absl::Status ReadGgufInfo(const std::string& path, ModelInfo* info, ModelSource* source) {
  TANDEM_ASSIGN_OR_RETURN(source->gguf, GgufFile::Open(path));
  const GgufFile& gguf = *source->gguf;
  TANDEM_ASSIGN_OR_RETURN(info->config, ModelConfigFromGguf(gguf));
  TANDEM_ASSIGN_OR_RETURN(info->tokenizer, Tokenizer::FromGguf(gguf));
  if (gguf.Find("tokenizer.chat_template") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(info->chat_template, gguf.GetString("tokenizer.chat_template"));
  }
  if (info->tokenizer->vocab_size() != info->config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("gguf: tokenizer has ", info->tokenizer->vocab_size(),
                                                   " tokens but token_embd.weight has ",
                                                   info->config.vocab_size, " rows"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ReadHfCheckpointConfig(std::string_view dir_view,
                                                   std::unique_ptr<SafetensorsCheckpoint>* checkpoint) {
  const std::string dir(dir_view);
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
  TANDEM_ASSIGN_OR_RETURN(*checkpoint, SafetensorsCheckpoint::Open(dir));
  // Names the checkpoint across processes: the shape, config.json's bytes
  // and every norm weight (which fine-tuning changes; a few KB in all).
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, config_text.data(), config_text.size());
  for (const SafetensorsTensor* t : (*checkpoint)->tensors()) {
    if (t->name.find("norm") == std::string::npos || t->data == nullptr) continue;
    XXH3_64bits_update(state, t->name.data(), t->name.size());
    XXH3_64bits_update(state, t->data, t->size_bytes);
  }
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  config->model_id = absl::StrFormat("hf:%s:%dx%dx%dx%d:%016x", BaseName(dir), config->num_layers,
                                     config->dim, config->ffn_dim, config->vocab_size, digest);
  return config;
}

absl::Status ReadModelInfo(std::string_view spec, ModelInfo* info, ModelSource* source) {
  if (hub::IsHfSpec(spec)) {  // downloaded (or found in the cache) first
    TANDEM_ASSIGN_OR_RETURN(const std::string local, hub::ResolveModelSpec(spec));
    return ReadModelInfo(local, info, source);
  }
  info->spec = std::string(spec);
  constexpr std::string_view kSynthetic = "synthetic:";
  if (spec.starts_with(kSynthetic)) return ReadSyntheticInfo(spec.substr(kSynthetic.size()), info, source);
  struct stat st;
  if (::stat(info->spec.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return ReadHfInfo(spec, info, source);
  return ReadGgufInfo(info->spec, info, source);
}

absl::StatusOr<std::unique_ptr<ModelInfo>> LoadModelInfo(std::string_view spec) {
  auto info = std::make_unique<ModelInfo>();
  ModelSource source;  // closed on return: nothing but the metadata was read
  TANDEM_RETURN_IF_ERROR(ReadModelInfo(spec, info.get(), &source));
  return info;
}

}  // namespace tandem::model
