#include "model/synthetic.h"

#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/thread_pool.h"
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

// SplitMix64: a stateless hash of (tensor seed, element index) into weights,
// so generation is parallel and identical for any thread count.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

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

absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModel(std::string_view name) {
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
    return CreateSyntheticModelFromConfig(*config, dtype);
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
  return CreateSyntheticModelFromConfig(c, preset->dtype);
}

absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModelFromConfig(const ModelConfig& config,
                                                                               DType dtype) {
  // The vocabulary is built token by token: refuse absurd sizes up front.
  constexpr int32_t kMaxVocab = 1 << 22;
  if (config.vocab_size > kMaxVocab) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: vocab_size %d exceeds %d", config.vocab_size, kMaxVocab));
  }
  auto m = std::make_unique<SyntheticModel>();
  m->vocabulary = BuildVocabulary(config.vocab_size);
  const int32_t built_in = static_cast<int32_t>(m->vocabulary.tokens.size());
  if (config.vocab_size != 0 && config.vocab_size < built_in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: vocab_size %d is smaller than the built-in vocabulary of %d tokens",
                        config.vocab_size, built_in));
  }
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("synthetic: weights must be F32, F16 or BF16");
  }
  m->config = config;
  ModelConfig& c = m->config;
  c.vocab_size = built_in;
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  const bool tied = c.tied_embeddings;
  {
    // A shape read from a config file may not fit this machine: say so
    // before allocating anything, rather than abort in the allocator.
    const double q = static_cast<double>(c.num_heads) * c.head_dim;
    const double kv = static_cast<double>(c.num_kv_heads) * c.head_dim;
    const double dim = c.dim;
    const double params =
        static_cast<double>(c.vocab_size) * dim * (tied ? 1 : 2) +
        static_cast<double>(c.num_layers) * (dim * (2 * q + 2 * kv) + 3.0 * dim * c.ffn_dim);
    const double physical =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (params * static_cast<double>(DTypeBytes(dtype, 1)) > physical) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "synthetic: %s has %.0f parameters, more than fit this machine's %.0f bytes of memory", c.model_id,
          params, physical));
    }
  }

  // Lay out every tensor in one buffer, then fill it in parallel.
  struct Spec {
    kernels::Weight* dst;
    int64_t rows, cols;
    bool norm;
    bool bias = false;  // F32 whatever `dtype` is
  };
  std::vector<Spec> specs;
  LlamaWeights& w = m->weights;
  w.layers.resize(c.num_layers);
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  specs.push_back({&w.token_embd, c.vocab_size, c.dim, false});
  specs.push_back({&w.output_norm, 1, c.dim, true});
  if (!tied) specs.push_back({&w.output, c.vocab_size, c.dim, false});
  for (LayerWeights& l : w.layers) {
    specs.push_back({&l.attn_norm, 1, c.dim, true});
    specs.push_back({&l.wq, q_dim, c.dim, false});
    specs.push_back({&l.wk, kv_dim, c.dim, false});
    specs.push_back({&l.wv, kv_dim, c.dim, false});
    specs.push_back({&l.wo, c.dim, q_dim, false});
    specs.push_back({&l.ffn_norm, 1, c.dim, true});
    specs.push_back({&l.w_gate, c.ffn_dim, c.dim, false});
    specs.push_back({&l.w_up, c.ffn_dim, c.dim, false});
    specs.push_back({&l.w_down, c.dim, c.ffn_dim, false});
  }
  // Biases last, so models without them keep the weights they always had.
  if (c.attention_bias) {
    for (LayerWeights& l : w.layers) {
      specs.push_back({&l.bq, 1, q_dim, false, true});
      specs.push_back({&l.bk, 1, kv_dim, false, true});
      specs.push_back({&l.bv, 1, kv_dim, false, true});
    }
  }
  std::vector<size_t> offsets;
  size_t total = 0;
  for (const Spec& s : specs) {
    offsets.push_back(total);
    if (s.rows * s.cols > (int64_t{1} << 40)) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("synthetic: a %d x %d weight of %s is too large", s.rows, s.cols, c.model_id));
    }
    total += (DTypeBytes(s.bias ? DType::kF32 : dtype, s.rows * s.cols) + 63) / 64 * 64;
  }
  const uint64_t physical =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (total > physical) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "synthetic: %s needs %d bytes of weights, more than this machine's %d bytes of memory", c.model_id,
        total, physical));
  }
  m->storage.resize(total);
  ThreadPool pool(ThreadPool::Options{});
  for (size_t t = 0; t < specs.size(); ++t) {
    const Spec& s = specs[t];
    uint8_t* base = m->storage.data() + offsets[t];
    const DType type = s.bias ? DType::kF32 : dtype;
    *s.dst = kernels::Weight{base, type, s.rows, s.cols};
    // Uniform in [-a, a] with a = sqrt(3 / cols): unit-variance inputs give
    // unit-variance outputs, so activations neither vanish nor explode.
    // Biases: uniform in [-0.1, 0.1].
    const float a = s.norm ? 0.0f : s.bias ? 0.1f : std::sqrt(3.0f / static_cast<float>(s.cols));
    const uint64_t seed = SplitMix64(0x7a6e64656d00ull + t);
    const int64_t n = s.rows * s.cols;
    constexpr int64_t kChunk = 1 << 16;
    pool.ParallelFor((n + kChunk - 1) / kChunk, [&](int64_t chunk) {
      const int64_t end = std::min(n, (chunk + 1) * kChunk);
      for (int64_t i = chunk * kChunk; i < end; ++i) {
        float value = 1.0f;  // norm weights
        if (!s.norm) {
          const double u = static_cast<double>(SplitMix64(seed ^ static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
          value = static_cast<float>((2.0 * u - 1.0) * a);
        }
        if (type == DType::kF32) {
          reinterpret_cast<float*>(base)[i] = value;
        } else if (type == DType::kF16) {
          reinterpret_cast<uint16_t*>(base)[i] = FloatToHalf(value);
        } else {
          reinterpret_cast<uint16_t*>(base)[i] = FloatToBF16(value);
        }
      }
    });
  }
  if (tied) w.output = w.token_embd;
  return m;
}

}  // namespace tandem::model
