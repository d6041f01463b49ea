#include "model/hf_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

using Json = nlohmann::json;

// A JSON value for an error message: short, and never throwing (invalid
// UTF-8 is replaced).
std::string Dump(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 40) + "...";
  return s;
}

absl::Status Bad(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", message));
}

// A positive integer that fits int32; `def` when absent or null (0: required).
absl::StatusOr<int32_t> Count(const Json& j, const char* key, int32_t def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (def > 0) return def;
    return absl::NotFoundError(absl::StrCat("config.json: missing key ", key));
  }
  if (!it->is_number_integer() || it->get<int64_t>() <= 0 ||
      it->get<int64_t>() > std::numeric_limits<int32_t>::max()) {
    return Bad(absl::StrCat(key, " = ", Dump(*it), " is not a positive 32-bit integer"));
  }
  return static_cast<int32_t>(it->get<int64_t>());
}

absl::StatusOr<double> Number(const Json& j, const char* key, double def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) return Bad(absl::StrCat(key, " = ", Dump(*it), " is not a number"));
  const double v = it->get<double>();
  if (!std::isfinite(v) || v <= 0) return Bad(absl::StrCat(key, " = ", Dump(*it), " must be positive"));
  return v;
}

absl::StatusOr<bool> Bool(const Json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) return Bad(absl::StrCat(key, " = ", Dump(*it), " is not a boolean"));
  return it->get<bool>();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfigFromHfJson(std::string_view text) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("not valid JSON");
  if (!j.is_object()) return Bad("not a JSON object");
  std::string arch;
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    arch = (*it)[0].get<std::string>();
  } else {
    return Bad("\"architectures\" is missing or not an array of strings");
  }
  bool known = false;
  for (std::string_view a : kHfArchitectures) known |= arch == a;
  if (!known) {
    std::vector<std::string> names(std::begin(kHfArchitectures), std::end(kHfArchitectures));
    return absl::UnimplementedError(
        absl::StrFormat("unsupported architecture '%s' (supported: %s)", arch, absl::StrJoin(names, ", ")));
  }
  const bool qwen2 = arch == "Qwen2ForCausalLM";
  ModelConfig c;
  c.architecture = arch;
  c.rope_style = kernels::RopeStyle::kNeox;
  TANDEM_ASSIGN_OR_RETURN(c.dim, Count(j, "hidden_size", 0));
  TANDEM_ASSIGN_OR_RETURN(c.num_layers, Count(j, "num_hidden_layers", 0));
  TANDEM_ASSIGN_OR_RETURN(c.num_heads, Count(j, "num_attention_heads", 0));
  TANDEM_ASSIGN_OR_RETURN(c.num_kv_heads, Count(j, "num_key_value_heads", c.num_heads));
  TANDEM_ASSIGN_OR_RETURN(c.ffn_dim, Count(j, "intermediate_size", 0));
  TANDEM_ASSIGN_OR_RETURN(c.vocab_size, Count(j, "vocab_size", 0));
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    TANDEM_ASSIGN_OR_RETURN(c.head_dim, Count(j, "head_dim", 0));
  } else {
    if (c.dim % c.num_heads != 0) {
      return Bad(
          absl::StrFormat("hidden_size %d is not a multiple of num_attention_heads %d", c.dim, c.num_heads));
    }
    c.head_dim = c.dim / c.num_heads;
  }
  c.rope_dims = c.head_dim;
  TANDEM_ASSIGN_OR_RETURN(double eps, Number(j, "rms_norm_eps", 1e-6));
  c.rms_eps = static_cast<float>(eps);
  TANDEM_ASSIGN_OR_RETURN(double theta, Number(j, "rope_theta", 10000.0));
  c.rope_freq_base = static_cast<float>(theta);
  TANDEM_ASSIGN_OR_RETURN(c.context_length, Count(j, "max_position_embeddings", 2048));
  TANDEM_ASSIGN_OR_RETURN(c.tied_embeddings, Bool(j, "tie_word_embeddings", false));
  TANDEM_ASSIGN_OR_RETURN(c.attention_bias, Bool(j, "attention_bias", false));
  if (qwen2) c.attention_bias = true;  // Qwen2's q/k/v projections always have biases.
  TANDEM_ASSIGN_OR_RETURN(bool mlp_bias, Bool(j, "mlp_bias", false));
  if (mlp_bias) return absl::UnimplementedError("config.json: mlp_bias is not supported");
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: hidden_act ", Dump(*it), " is not supported (only \"silu\")"));
    }
  }
  // Sliding-window attention equals full attention while the context fits
  // the window: cap the context there.
  bool sliding = !qwen2;
  if (qwen2) {
    TANDEM_ASSIGN_OR_RETURN(sliding, Bool(j, "use_sliding_window", false));
  }
  if (auto it = j.find("sliding_window"); sliding && it != j.end() && !it->is_null()) {
    TANDEM_ASSIGN_OR_RETURN(int32_t window, Count(j, "sliding_window", 0));
    c.context_length = std::min(c.context_length, window);
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    const Json& rs = *it;
    if (!rs.is_object()) return Bad("rope_scaling is not an object");
    std::string type;
    for (const char* k : {"rope_type", "type"}) {
      if (auto t = rs.find(k); t != rs.end() && t->is_string()) {
        type = t->get<std::string>();
        break;
      }
    }
    if (type != "llama3") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: rope_scaling type '", type, "' is not supported (supported: llama3)"));
    }
    RopeScaling& s = c.rope_scaling;
    s.type = RopeScaling::Type::kLlama3;
    auto req = [&](const char* key) -> absl::StatusOr<double> {
      if (!rs.contains(key))
        return absl::NotFoundError(absl::StrCat("config.json: rope_scaling has no ", key));
      return Number(rs, key, 0);
    };
    TANDEM_ASSIGN_OR_RETURN(double factor, req("factor"));
    TANDEM_ASSIGN_OR_RETURN(double low, req("low_freq_factor"));
    TANDEM_ASSIGN_OR_RETURN(double high, req("high_freq_factor"));
    if (!rs.contains("original_max_position_embeddings")) {
      return absl::NotFoundError("config.json: rope_scaling has no original_max_position_embeddings");
    }
    TANDEM_ASSIGN_OR_RETURN(s.original_max_position_embeddings,
                            Count(rs, "original_max_position_embeddings", 0));
    if (!(high > low)) {
      return Bad("rope_scaling high_freq_factor must be greater than low_freq_factor");
    }
    s.factor = static_cast<float>(factor);
    s.low_freq_factor = static_cast<float>(low);
    s.high_freq_factor = static_cast<float>(high);
  }
  TANDEM_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ModelConfig> ModelConfigFromHfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  auto c = ModelConfigFromHfJson(ss.str());
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

}  // namespace tandem::model
