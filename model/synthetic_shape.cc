#include "model/synthetic_shape.h"

#include <xxhash.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "model/hf_config.h"

namespace tandem::model {
namespace {

struct Preset {
  const char* name;
  int32_t vocab_size;  // 0: just the built-in vocabulary
  int32_t dim, num_layers, num_heads, num_kv_heads, ffn_dim, context_length;
  float rope_freq_base;
  bool tied;
  DType dtype;
  bool qwen2 = false;  // Qwen2 layout: q/k/v biases, NeoX RoPE
};

constexpr Preset kPresets[] = {
    {"tiny", 0, 128, 4, 4, 2, 384, 2048, 10000.0f, true, DType::kF32},
    // Llama 3.2 1B: 16 layers, 2048 wide, GQA 32/8, 8192 FFN, tied embeddings.
    {"llama-1b", 128256, 2048, 16, 32, 8, 8192, 131072, 500000.0f, true, DType::kBF16},
    // Llama 3 8B: 32 layers, 4096 wide, GQA 32/8, 14336 FFN.
    {"llama-8b", 128256, 4096, 32, 32, 8, 14336, 8192, 500000.0f, false, DType::kBF16},
    // Qwen2.5 0.5B: 24 layers, 896 wide, GQA 14/2, 4864 FFN, tied, q/k/v biases.
    {"qwen2-0.5b", 151936, 896, 24, 14, 2, 4864, 32768, 1000000.0f, true, DType::kBF16, true},
};

// A small English-ish vocabulary so prompts tokenize into pieces: special
// tokens, the 256 byte tokens, printable characters, then words with every
// prefix (SentencePiece merges only join pieces that exist).
Vocabulary BuildVocabulary(int32_t vocab_size) {
  Vocabulary v;
  auto add = [&](std::string piece, TokenType type, float score) {
    v.tokens.push_back(std::move(piece));
    v.types.push_back(type);
    v.scores.push_back(score);
  };
  add("<unk>", TokenType::kUnknown, 0);
  add("<s>", TokenType::kControl, 0);
  add("</s>", TokenType::kControl, 0);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b), TokenType::kByte, 0);
  absl::flat_hash_map<std::string, int> seen;
  float score = 0;
  auto add_piece = [&](const std::string& p) {
    if (seen.emplace(p, 1).second) add(p, TokenType::kNormal, score -= 1);
  };
  const std::string space = "\xE2\x96\x81";  // "▁"
  add_piece(space);
  for (char c = 33; c < 127; ++c) add_piece(std::string(1, c));
  static const char* kWords[] = {
      "the",  "and",  "was",   "to",     "a",     "he",   "she", "it",    "they", "said",  "day",    "time",
      "once", "upon", "there", "little", "big",   "girl", "boy", "named", "play", "happy", "friend", "dog",
      "cat",  "sun",  "tree",  "park",   "ball",  "mom",  "dad", "went",  "saw",  "loved", "wanted", "with",
      "in",   "on",   "of",    "for",    "is",    "you",  "we",  "that",  "his",  "her",   "had",    "so",
      "very", "one",  "red",   "blue",   "green", "home", "fun", "good"};
  for (const char* w : kWords) {
    std::string word = space + w;
    for (size_t n = space.size() + 1; n <= word.size(); ++n) add_piece(word.substr(0, n));
  }
  // Pad larger presets with unused tokens that no text encodes to.
  for (int32_t i = static_cast<int32_t>(v.tokens.size()); i < vocab_size; ++i) {
    add(absl::StrFormat("<unused_%d>", i), TokenType::kUnused, -1e9f);
  }
  return v;
}

}  // namespace

std::vector<std::string> SyntheticPresets() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.push_back(p.name);
  return names;
}

absl::StatusOr<SyntheticShape> SyntheticModelShape(std::string_view name) {
  constexpr std::string_view kConfig = "config=";
  if (name.starts_with(kConfig)) {
    const std::string path(name.substr(kConfig.size()));
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("synthetic: cannot read ", path));
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto config = ModelConfigFromHfJson(text);
    if (!config.ok()) {
      return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
    }
    // torch_dtype picks the weight type; BF16 unless the config says float32
    // or float16.
    DType dtype = DType::kBF16;
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (auto it = j.find("torch_dtype"); it != j.end() && it->is_string()) {
      if (*it == "float32") dtype = DType::kF32;
      if (*it == "float16") dtype = DType::kF16;
    }
    config->model_id = absl::StrFormat("synthetic:config:%s:%dx%dx%dx%d:%016x", config->architecture,
                                       config->num_layers, config->dim, config->ffn_dim, config->vocab_size,
                                       XXH3_64bits(text.data(), text.size()));
    return SyntheticShapeFromConfig(*config, dtype);
  }
  const Preset* preset = nullptr;
  for (const Preset& p : kPresets) {
    if (name == p.name) preset = &p;
  }
  if (preset == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("unknown synthetic model '%s' (presets: %s, or config=PATH/config.json)", name,
                        absl::StrJoin(SyntheticPresets(), ", ")));
  }
  ModelConfig c;
  c.model_id = absl::StrCat("synthetic:", preset->name);
  c.vocab_size = preset->vocab_size;
  c.dim = preset->dim;
  c.num_layers = preset->num_layers;
  c.num_heads = preset->num_heads;
  c.num_kv_heads = preset->num_kv_heads;
  c.head_dim = c.dim / c.num_heads;
  c.rope_dims = c.head_dim;
  c.ffn_dim = preset->ffn_dim;
  c.rope_freq_base = preset->rope_freq_base;
  c.context_length = preset->context_length;
  c.tied_embeddings = preset->tied;
  if (preset->qwen2) {
    c.architecture = "Qwen2ForCausalLM";
    c.rope_style = kernels::RopeStyle::kNeox;
    c.attention_bias = true;
    c.rms_eps = 1e-6f;
  }
  return SyntheticShapeFromConfig(c, preset->dtype);
}

absl::StatusOr<SyntheticShape> SyntheticShapeFromConfig(const ModelConfig& config, DType dtype) {
  // The vocabulary is built token by token: refuse absurd sizes up front.
  constexpr int32_t kMaxVocab = 1 << 22;
  if (config.vocab_size > kMaxVocab) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: vocab_size %d exceeds %d", config.vocab_size, kMaxVocab));
  }
  SyntheticShape shape;
  shape.vocabulary = BuildVocabulary(config.vocab_size);
  const int32_t built_in = static_cast<int32_t>(shape.vocabulary.tokens.size());
  if (config.vocab_size != 0 && config.vocab_size < built_in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: vocab_size %d is smaller than the built-in vocabulary of %d tokens",
                        config.vocab_size, built_in));
  }
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("synthetic: weights must be F32, F16 or BF16");
  }
  shape.dtype = dtype;
  shape.config = config;
  shape.config.vocab_size = built_in;
  if (absl::Status s = shape.config.Validate(); !s.ok()) return s;
  return shape;
}

}  // namespace tandem::model
