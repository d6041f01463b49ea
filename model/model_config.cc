#include "model/model_config.h"

#include <xxhash.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

// A positive count that fits int32, read from an integer key.
absl::StatusOr<int32_t> GetCount(const GgufFile& gguf, const std::string& key) {
  TANDEM_ASSIGN_OR_RETURN(uint64_t v, gguf.GetUint(key));
  if (v == 0 || v > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrFormat("gguf: key %s = %d out of range", key, v));
  }
  return static_cast<int32_t>(v);
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0)
      return absl::InvalidArgumentError(absl::StrCat("model config: ", name, " = ", v, " must be positive"));
    return absl::OkStatus();
  };
  TANDEM_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  TANDEM_RETURN_IF_ERROR(positive("dim", dim));
  TANDEM_RETURN_IF_ERROR(positive("num_layers", num_layers));
  TANDEM_RETURN_IF_ERROR(positive("num_heads", num_heads));
  TANDEM_RETURN_IF_ERROR(positive("num_kv_heads", num_kv_heads));
  TANDEM_RETURN_IF_ERROR(positive("head_dim", head_dim));
  TANDEM_RETURN_IF_ERROR(positive("ffn_dim", ffn_dim));
  TANDEM_RETURN_IF_ERROR(positive("context_length", context_length));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: head_count %d is not a multiple of head_count_kv %d", num_heads, num_kv_heads));
  }
  if (rope_dims <= 0 || rope_dims % 2 != 0 || rope_dims > head_dim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model config: rope dimension_count %d must be even and in (0, head_dim %d]", rope_dims, head_dim));
  }
  if (!(rope_freq_base > 0) || !(rms_eps > 0)) {
    return absl::InvalidArgumentError("model config: rope freq_base and rms epsilon must be positive");
  }
  if (const RopeScaling& s = rope_scaling; s.type == RopeScaling::Type::kLlama3) {
    if (!(s.factor > 0) || !(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor) ||
        s.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "model config: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor "
          "and original_max_position_embeddings > 0 (got %g, %g, %g, %d)",
          s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings));
    }
  }
  return absl::OkStatus();
}

std::vector<float> RopeFreqFactors(const ModelConfig& config) {
  const RopeScaling& s = config.rope_scaling;
  if (s.type == RopeScaling::Type::kNone) return {};
  const double old_context = s.original_max_position_embeddings;
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  std::vector<float> factors(config.rope_dims / 2);
  for (int32_t i = 0; i < config.rope_dims / 2; ++i) {
    const double freq = std::pow(static_cast<double>(config.rope_freq_base), -2.0 * i / config.rope_dims);
    const double wavelen = 2 * std::numbers::pi / freq;
    double factor = 1;
    if (wavelen > low_freq_wavelen) {
      factor = s.factor;
    } else if (!(wavelen < high_freq_wavelen)) {
      const double smooth =
          (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      factor = 1 / ((1 - smooth) / s.factor + smooth);
    }
    factors[i] = static_cast<float>(factor);
  }
  return factors;
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf) {
  ModelConfig c;
  TANDEM_ASSIGN_OR_RETURN(c.architecture, gguf.GetString("general.architecture"));
  if (c.architecture != "llama") {
    return absl::UnimplementedError(
        absl::StrFormat("unsupported architecture '%s' (supported: llama)", c.architecture));
  }
  const std::string a = c.architecture + ".";
  TANDEM_ASSIGN_OR_RETURN(c.dim, GetCount(gguf, a + "embedding_length"));
  TANDEM_ASSIGN_OR_RETURN(c.num_layers, GetCount(gguf, a + "block_count"));
  TANDEM_ASSIGN_OR_RETURN(c.num_heads, GetCount(gguf, a + "attention.head_count"));
  TANDEM_ASSIGN_OR_RETURN(c.ffn_dim, GetCount(gguf, a + "feed_forward_length"));
  c.num_kv_heads = c.num_heads;
  if (gguf.Find(a + "attention.head_count_kv") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(c.num_kv_heads, GetCount(gguf, a + "attention.head_count_kv"));
  }
  if (c.dim % c.num_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gguf: embedding_length %d is not a multiple of head_count %d", c.dim, c.num_heads));
  }
  c.head_dim = c.dim / c.num_heads;
  c.rope_dims = c.head_dim;
  if (gguf.Find(a + "rope.dimension_count") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(c.rope_dims, GetCount(gguf, a + "rope.dimension_count"));
  }
  if (gguf.Find(a + "rope.freq_base") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(double base, gguf.GetFloat(a + "rope.freq_base"));
    c.rope_freq_base = static_cast<float>(base);
  }
  TANDEM_ASSIGN_OR_RETURN(double eps, gguf.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  c.rms_eps = static_cast<float>(eps);
  if (gguf.Find(a + "context_length") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(c.context_length, GetCount(gguf, a + "context_length"));
  }
  const GgufTensorInfo* emb = gguf.FindTensor("token_embd.weight");
  if (emb == nullptr) return absl::NotFoundError("gguf: missing tensor token_embd.weight");
  if (emb->dims.size() != 2) {
    return absl::InvalidArgumentError("gguf: token_embd.weight must have 2 dimensions");
  }
  if (emb->dims[1] > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("gguf: token_embd.weight vocabulary too large");
  }
  c.vocab_size = static_cast<int32_t>(emb->dims[1]);
  // The id must tell apart two checkpoints of the same shape (a fine-tune and
  // its base) without reading gigabytes: hash the shape plus every norm
  // weight, which fine-tuning changes and which are a few KB in all.
  std::string name = "model";
  if (auto n = gguf.GetString("general.name"); n.ok()) name = *n;
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (t.name.find("norm") == std::string::npos) continue;
    XXH3_64bits_update(state, t.name.data(), t.name.size());
    XXH3_64bits_update(state, t.data, t.size_bytes);
  }
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  c.model_id = absl::StrFormat("gguf:%s:%dx%dx%dx%d:%016x", name, c.num_layers, c.dim, c.ffn_dim,
                               c.vocab_size, digest);
  TANDEM_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace tandem::model
