#include "router/openai_request.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "router/request_validation.h"

namespace tandem::router::openai {
namespace {

using json = nlohmann::json;

// ChatML, the default chat rendering.
std::string RenderChatMl(const std::vector<ChatTurn>& turns) {
  std::string out;
  for (const ChatTurn& t : turns) out += "<|im_start|>" + t.role + "\n" + t.content + "<|im_end|>\n";
  out += "<|im_start|>assistant\n";
  return out;
}

// Optional typed fields; a present field of the wrong type is an error.
bool IsNull(const json& body, const char* key) { return !body.contains(key) || body[key].is_null(); }

std::optional<ApiError> GetNumber(const json& body, const char* key, std::optional<double>* out) {
  if (IsNull(body, key)) return std::nullopt;
  if (!body[key].is_number()) return BadParam(key, absl::StrFormat("'%s' must be a number", key));
  *out = body[key].get<double>();
  return std::nullopt;
}

std::optional<ApiError> GetInt(const json& body, const char* key, std::optional<int64_t>* out) {
  if (IsNull(body, key)) return std::nullopt;
  const json& v = body[key];
  if (v.is_number_integer()) {
    *out = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX))
                                  : v.get<int64_t>();
    return std::nullopt;
  }
  if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>()))) {
    *out = static_cast<int64_t>(v.get<double>());
    return std::nullopt;
  }
  return BadParam(key, absl::StrFormat("'%s' must be an integer", key));
}

std::optional<ApiError> GetBool(const json& body, const char* key, std::optional<bool>* out) {
  if (IsNull(body, key)) return std::nullopt;
  if (!body[key].is_boolean()) return BadParam(key, absl::StrFormat("'%s' must be a boolean", key));
  *out = body[key].get<bool>();
  return std::nullopt;
}

std::optional<ApiError> ParseTokenIds(const json& arr, tandem::v1::GenerateRequest* r) {
  for (const json& t : arr) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX) {
      return BadParam("prompt", "'prompt' token ids must be non-negative integers");
    }
    r->mutable_prompt_token_ids()->add_ids(static_cast<int32_t>(t.get<int64_t>()));
  }
  return std::nullopt;
}

std::optional<ApiError> ParsePrompt(const json& body, tandem::v1::GenerateRequest* r) {
  if (IsNull(body, "prompt")) return BadParam("prompt", "'prompt' is required");
  const json& p = body["prompt"];
  if (p.is_string()) {
    r->set_prompt(p.get<std::string>());
    return std::nullopt;
  }
  if (!p.is_array() || p.empty()) {
    return BadParam("prompt", "'prompt' must be a string, an array of one string, or an array of token ids");
  }
  if (p[0].is_string() || p[0].is_array()) {
    if (p.size() != 1) return BadParam("prompt", "only one prompt per request is supported");
    if (p[0].is_string()) {
      r->set_prompt(p[0].get<std::string>());
      return std::nullopt;
    }
    if (p[0].empty()) return BadParam("prompt", "'prompt' token ids must not be empty");
    return ParseTokenIds(p[0], r);
  }
  return ParseTokenIds(p, r);
}

std::optional<ApiError> ParseMessages(const json& body, std::vector<ChatTurn>* turns) {
  if (IsNull(body, "messages")) return BadParam("messages", "'messages' is required");
  const json& m = body["messages"];
  if (!m.is_array() || m.empty()) return BadParam("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string where = absl::StrFormat("messages[%d]", i);
    if (!m[i].is_object() || !m[i].contains("role") || !m[i]["role"].is_string()) {
      return BadParam(where, where + " must be an object with a string 'role'");
    }
    ChatTurn turn{.role = m[i]["role"].get<std::string>()};
    static const char* const kRoles[] = {"system", "user", "assistant", "tool", "developer"};
    if (std::find(std::begin(kRoles), std::end(kRoles), turn.role) == std::end(kRoles)) {
      return BadParam(where + ".role", "unknown role '" + turn.role + "'");
    }
    const json content = m[i].value("content", json(nullptr));
    if (content.is_string()) {
      turn.content = content.get<std::string>();
    } else if (content.is_array()) {
      for (const json& part : content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return BadParam(where + ".content", "only text content parts are supported");
        }
        turn.content += part["text"].get<std::string>();
      }
    } else if (!content.is_null() || turn.role != "assistant") {
      return BadParam(where + ".content", where + ".content must be a string or an array of text parts");
    }
    turns->push_back(std::move(turn));
  }
  return std::nullopt;
}

std::optional<double> HeaderNumber(const http::Request& r, std::string_view name) {
  std::optional<std::string> v = r.Header(name);
  double d;
  if (v && absl::SimpleAtod(*v, &d)) return d;
  return std::nullopt;
}

// max_tokens (chat: also max_completion_tokens, which wins) and n.
std::optional<ApiError> ParseLength(const json& body, bool chat, int32_t default_max_tokens,
                                    tandem::v1::GenerateRequest* req) {
  std::optional<int64_t> max_tokens, n;
  if (auto e = GetInt(body, "max_tokens", &max_tokens)) return e;
  if (chat) {
    std::optional<int64_t> mct;
    if (auto e = GetInt(body, "max_completion_tokens", &mct)) return e;
    if (mct) max_tokens = mct;
  }
  if (max_tokens) {
    if (*max_tokens < 1 || *max_tokens > INT32_MAX) {
      return BadParam(chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
                      "max_tokens must be at least 1");
    }
    req->set_max_tokens(static_cast<int32_t>(*max_tokens));
  } else {
    req->set_max_tokens(std::max(0, default_max_tokens));
  }
  if (auto e = GetInt(body, "n", &n)) return e;
  if (n && *n != 1) return BadParam("n", "only n=1 is supported");
  return std::nullopt;
}

// temperature (OpenAI's [0, 2]), top_p, top_k (-1: off), seed.
std::optional<ApiError> ParseSampling(const json& body, tandem::v1::GenerateRequest* req) {
  std::optional<double> temperature, top_p;
  std::optional<int64_t> seed, top_k;
  tandem::v1::SamplingParams* sampling = req->mutable_sampling();
  if (auto e = GetNumber(body, "temperature", &temperature)) return e;
  if (temperature) {
    if (*temperature < 0 || *temperature > 2) return BadParam("temperature", "temperature must be in [0, 2]");
    sampling->set_temperature(static_cast<float>(*temperature));
  }
  if (auto e = GetNumber(body, "top_p", &top_p)) return e;
  if (top_p) {
    if (*top_p <= 0 || *top_p > 1) return BadParam("top_p", "top_p must be in (0, 1]");
    sampling->set_top_p(static_cast<float>(*top_p));
  }
  if (auto e = GetInt(body, "top_k", &top_k)) return e;
  if (top_k) {
    if (*top_k < -1 || *top_k > INT32_MAX) return BadParam("top_k", "top_k must be >= 0 (or -1: off)");
    sampling->set_top_k(*top_k < 0 ? 0 : static_cast<int32_t>(*top_k));
  }
  if (auto e = GetInt(body, "seed", &seed)) return e;
  if (seed) sampling->set_seed(static_cast<uint64_t>(*seed));
  return std::nullopt;
}

// stop: a string or an array of strings.
std::optional<ApiError> ParseStop(const json& body, tandem::v1::GenerateRequest* req) {
  if (IsNull(body, "stop")) return std::nullopt;
  const json& stop = body["stop"];
  if (stop.is_string()) {
    req->add_stop(stop.get<std::string>());
    return std::nullopt;
  }
  if (!stop.is_array()) return BadParam("stop", "'stop' must be a string or an array of strings");
  for (const json& s : stop) {
    if (!s.is_string()) return BadParam("stop", "'stop' must be a string or an array of strings");
    req->add_stop(s.get<std::string>());
  }
  return std::nullopt;
}

// stream and stream_options.include_usage.
std::optional<ApiError> ParseStreaming(const json& body, ParsedRequest* parsed) {
  std::optional<bool> stream;
  if (auto e = GetBool(body, "stream", &stream)) return e;
  parsed->stream = stream.value_or(false);
  if (IsNull(body, "stream_options")) return std::nullopt;
  if (!body["stream_options"].is_object()) {
    return BadParam("stream_options", "'stream_options' must be an object");
  }
  std::optional<bool> include_usage;
  if (auto e = GetBool(body["stream_options"], "include_usage", &include_usage)) return e;
  parsed->include_usage = include_usage.value_or(false);
  return std::nullopt;
}

// Flow control: X-Tandem-Priority (an integer in the core's range) and
// X-Tandem-Tenant, else the body's OpenAI "user" as the tenant.
std::optional<ApiError> ParseFlowControl(const json& body, const http::Request& http_request,
                                         tandem::v1::GenerateRequest* req) {
  if (std::optional<std::string> p = http_request.Header("X-Tandem-Priority")) {
    int32_t priority = 0;
    if (!absl::SimpleAtoi(*p, &priority) || priority < kMinPriority || priority > kMaxPriority) {
      return BadParam("x-tandem-priority",
                      absl::StrFormat("header X-Tandem-Priority must be an integer from %d "
                                      "to %d (higher goes first)",
                                      kMinPriority, kMaxPriority));
    }
    req->set_priority(priority);
  }
  std::optional<std::string> tenant = http_request.Header("X-Tandem-Tenant");
  if (!tenant && body.contains("user") && body["user"].is_string()) tenant = body["user"].get<std::string>();
  if (tenant) {
    if (tenant->size() > kMaxTenantBytes) {
      return BadParam("x-tandem-tenant", absl::StrFormat("the tenant (X-Tandem-Tenant or 'user') must be at "
                                                         "most %d bytes",
                                                         kMaxTenantBytes));
    }
    req->set_tenant(*tenant);
  }
  return std::nullopt;
}

// Tandem's extras: ignore_eos; slo_ttft_ms / slo_tpot_ms (body, else the
// X-Tandem-Slo-* headers), checked by the core's own rule (ValidateSlo); the
// X-Request-Id header.
std::optional<ApiError> ParseTandemExtras(const json& body, const http::Request& http_request,
                                          tandem::v1::GenerateRequest* req) {
  std::optional<bool> ignore_eos;
  if (auto e = GetBool(body, "ignore_eos", &ignore_eos)) return e;
  if (ignore_eos) req->set_stop_at_eos(!*ignore_eos);
  std::optional<double> slo_ttft, slo_tpot;
  if (auto e = GetNumber(body, "slo_ttft_ms", &slo_ttft)) return e;
  if (auto e = GetNumber(body, "slo_tpot_ms", &slo_tpot)) return e;
  if (!slo_ttft) slo_ttft = HeaderNumber(http_request, "X-Tandem-Slo-Ttft-Ms");
  if (!slo_tpot) slo_tpot = HeaderNumber(http_request, "X-Tandem-Slo-Tpot-Ms");
  if (slo_ttft) req->mutable_slo()->set_ttft_ms(*slo_ttft);
  if (slo_tpot) req->mutable_slo()->set_tpot_ms(*slo_tpot);
  if (absl::Status s = ValidateSlo(req->slo()); !s.ok()) {
    return BadParam(absl::StartsWith(s.message(), "slo.ttft_ms") ? "slo_ttft_ms" : "slo_tpot_ms",
                    std::string(s.message()));
  }
  if (std::optional<std::string> id = http_request.Header("X-Request-Id");
      id && id->size() <= kMaxRequestIdBytes) {
    req->set_request_id(*id);
  }
  return ParseFlowControl(body, http_request, req);
}

}  // namespace

std::optional<ApiError> ParseGenerateBody(const json& body, const http::Request& http_request, bool chat,
                                          const OpenAiFrontOptions& options, ParsedRequest* parsed) {
  tandem::v1::GenerateRequest& req = parsed->request;
  if (chat) {
    std::vector<ChatTurn> turns;
    if (auto e = ParseMessages(body, &turns)) return e;
    absl::StatusOr<std::string> rendered =
        options.render_chat ? options.render_chat(turns) : absl::StatusOr<std::string>(RenderChatMl(turns));
    if (!rendered.ok()) {
      return BadParam("messages", "cannot render the chat: " + std::string(rendered.status().message()));
    }
    if (options.tokenizer != nullptr) {
      for (int32_t id : options.tokenizer->Encode(*rendered, /*add_bos=*/false, /*parse_special=*/true)) {
        req.mutable_prompt_token_ids()->add_ids(id);
      }
    } else {
      req.set_prompt(*std::move(rendered));
    }
  } else if (auto e = ParsePrompt(body, &req)) {
    return e;
  }

  const int32_t default_max_tokens =
      chat ? options.chat_default_max_tokens : options.completions_default_max_tokens;
  if (auto e = ParseLength(body, chat, default_max_tokens, &req)) return e;
  if (auto e = ParseSampling(body, &req)) return e;
  if (auto e = ParseStop(body, &req)) return e;
  if (auto e = ParseStreaming(body, parsed)) return e;
  if (auto e = ParseTandemExtras(body, http_request, &req)) return e;
  return std::nullopt;
}

}  // namespace tandem::router::openai
