#include "router/openai_front.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"
#include "router/request_validation.h"
#include "router/shed_reason.h"

namespace tandem::router {
namespace {

using json = nlohmann::json;

// The OpenAI error answer for a status code.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::optional<std::string> param;
  std::optional<std::string> code;
  // Why the router refused (shed_reason.h), sent as x-tandem-shed-reason.
  std::string shed_reason;
};

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json ErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param ? json(*e.param) : json(nullptr)},
            {"code", e.code ? json(*e.code) : json(nullptr)}}}};
}

ApiError FromStatus(const absl::Status& s) {
  ApiError e;
  e.message = std::string(s.message());
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      e.status = 400;
      break;
    case absl::StatusCode::kNotFound:
      e.status = 404;
      e.code = "model_not_found";
      break;
    case absl::StatusCode::kUnauthenticated:
      e.status = 401;
      e.code = "invalid_api_key";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "rate_limit_exceeded";
      e.shed_reason = std::string(ShedReasonOf(s));
      break;
    case absl::StatusCode::kUnavailable:
      e.status = 503;
      e.type = "server_error";
      e.code = "service_unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.status = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    case absl::StatusCode::kCancelled:
      e.status = 499;  // the client closed the request (nginx's code); never seen by it
      e.type = "server_error";
      e.code = "cancelled";
      break;
    default:
      e.status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

http::Response ErrorHttp(const ApiError& e, int retry_after_seconds = 0) {
  http::Response r{.status = e.status, .body = Dump(ErrorJson(e))};
  if (e.status == 429 && retry_after_seconds > 0)
    r.headers.emplace_back("Retry-After", std::to_string(retry_after_seconds));
  if (e.status == 429 && !e.shed_reason.empty())
    r.headers.emplace_back("x-tandem-shed-reason", e.shed_reason);
  return r;
}

ApiError BadParam(std::string param, std::string message) {
  return ApiError{.status = 400, .message = std::move(message), .param = std::move(param)};
}

std::string NewId(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrFormat("%s-%016x%08x", std::string(prefix), rng(), static_cast<uint32_t>(rng()));
}

int64_t UnixSeconds() { return absl::ToUnixSeconds(absl::Now()); }

std::string FinishReason(tandem::v1::FinishReason r) {
  return r == tandem::v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

json UsageJson(const tandem::v1::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"total_tokens", u.prompt_tokens() + u.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens()}}}};
}

// ChatML, the default chat rendering.
std::string RenderChatMl(const std::vector<ChatTurn>& turns) {
  std::string out;
  for (const ChatTurn& t : turns) out += "<|im_start|>" + t.role + "\n" + t.content + "<|im_end|>\n";
  out += "<|im_start|>assistant\n";
  return out;
}

// A parsed request: what goes to the generator plus what shapes the answer.
struct Parsed {
  tandem::v1::GenerateRequest request;
  std::string model;
  bool stream = false;
  bool include_usage = false;
};

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
std::optional<ApiError> ParseStreaming(const json& body, Parsed* parsed) {
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

ChatRenderer MakeChatRenderer(std::string_view template_source, const model::Tokenizer* tokenizer) {
  ChatRenderer out;
  std::shared_ptr<const model::ChatTemplate> tmpl;
  if (!template_source.empty()) {
    absl::StatusOr<std::unique_ptr<model::ChatTemplate>> parsed =
        model::ChatTemplate::Create(template_source);
    if (parsed.ok()) {
      tmpl = *std::move(parsed);
      out.model_template = true;
    } else {
      out.template_error = parsed.status();
    }
  }
  if (tmpl == nullptr) tmpl = model::ChatTemplate::Default();
  model::ChatTemplateOptions render_options{.add_generation_prompt = true};
  if (tokenizer != nullptr) {
    if (tokenizer->bos_id() >= 0)
      render_options.bos_token = tokenizer->TokenToPiece(tokenizer->bos_id(), true);
    if (tokenizer->eos_id() >= 0)
      render_options.eos_token = tokenizer->TokenToPiece(tokenizer->eos_id(), true);
  }
  out.render = [tmpl = std::move(tmpl), render_options = std::move(render_options)](
                   const std::vector<ChatTurn>& turns) -> absl::StatusOr<std::string> {
    std::vector<model::ChatMessage> messages;
    messages.reserve(turns.size());
    for (const ChatTurn& t : turns) messages.push_back({.role = t.role, .content = t.content});
    return tmpl->Render(messages, render_options);
  };
  return out;
}

struct OpenAiFront::Metrics {
  explicit Metrics(MetricsRegistry* r)
      : requests(r->Counter("tandem_http_requests_total", "HTTP requests answered, by endpoint and status",
                            {"endpoint", "code"})),
        in_flight(
            r->Gauge("tandem_http_requests_in_flight", "Generation requests in progress", {"endpoint"})),
        rejections(r->Counter("tandem_http_rejections_total",
                              "Generation requests refused (4xx/5xx before the first token), by reason",
                              {"reason"})),
        ttft(r->Histogram("tandem_http_ttft_seconds", "Time to first token", {"endpoint"},
                          ExponentialBuckets(0.005, 2, 14))),
        tpot(r->Histogram("tandem_http_tpot_seconds",
                          "Mean time per output token after the first, per request", {"endpoint"},
                          ExponentialBuckets(0.001, 2, 14))),
        itl(r->Histogram("tandem_http_itl_seconds", "Time between streamed chunks", {"endpoint"},
                         ExponentialBuckets(0.001, 2, 14))),
        e2e(r->Histogram("tandem_http_e2e_seconds", "Whole request", {"endpoint"},
                         ExponentialBuckets(0.01, 2, 14))) {}
  CounterFamily* requests;
  GaugeFamily* in_flight;
  CounterFamily* rejections;
  HistogramFamily* ttft;
  HistogramFamily* tpot;
  HistogramFamily* itl;
  HistogramFamily* e2e;
};

namespace {

// Streams one request's progress back as SSE chunks or one JSON answer.
class Responder : public GenerationObserver {
 public:
  Responder(std::shared_ptr<http::ResponseWriter> writer, Parsed parsed, bool chat, std::string endpoint,
            std::shared_ptr<OpenAiFront::Metrics> metrics, int retry_after)
      : writer_(std::move(writer)),
        chat_(chat),
        stream_(parsed.stream),
        include_usage_(parsed.include_usage),
        model_(std::move(parsed.model)),
        endpoint_(std::move(endpoint)),
        id_(NewId(chat ? "chatcmpl" : "cmpl")),
        created_(UnixSeconds()),
        start_(absl::Now()),
        last_(start_),
        metrics_(std::move(metrics)),
        retry_after_(retry_after) {
    metrics_->in_flight->WithLabels({endpoint_})->Increment();
  }

  void OnChunk(const tandem::v1::TokenChunk& chunk) override {
    const absl::Time now = absl::Now();
    if (chunk.token_ids_size() > 0) {
      if (!first_token_) {
        first_token_ = now;
        metrics_->ttft->WithLabels({endpoint_})->Observe(absl::ToDoubleSeconds(now - start_));
      } else {
        metrics_->itl->WithLabels({endpoint_})->Observe(absl::ToDoubleSeconds(now - last_));
      }
      last_ = now;
    }
    if (!stream_) {
      text_ += chunk.text();
      return;
    }
    if (chunk.text().empty()) return;
    BeginStream();
    Event(Chunk(chunk.text(), nullptr));
  }

  void OnDone(const absl::Status& status, const tandem::v1::GenerateSummary& summary) override {
    const absl::Time now = absl::Now();
    metrics_->in_flight->WithLabels({endpoint_})->Decrement();
    const int completion = summary.usage().completion_tokens();
    if (status.ok() && first_token_ && completion > 1) {
      metrics_->tpot->WithLabels({endpoint_})
          ->Observe(absl::ToDoubleSeconds(now - *first_token_) / (completion - 1));
    }
    if (!status.ok()) {
      const ApiError e = FromStatus(status);
      if (!streaming_) metrics_->rejections->WithLabels({absl::StrCat(e.status)})->Increment();
      Count(e.status);
      if (streaming_) {
        Event(ErrorJson(e));
        writer_->End();
      } else {
        writer_->Send(ErrorHttp(e, retry_after_));
      }
      return;
    }
    metrics_->e2e->WithLabels({endpoint_})->Observe(absl::ToDoubleSeconds(now - start_));
    Count(200);
    const std::string finish = FinishReason(summary.finish_reason());
    if (stream_) {
      BeginStream();
      Event(Chunk("", finish));
      if (include_usage_) {
        json usage = Base(true);
        usage["choices"] = json::array();
        usage["usage"] = UsageJson(summary.usage());
        Event(usage);
      }
      writer_->Write("data: [DONE]\n\n");
      writer_->End();
      return;
    }
    json out = Base(false);
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
    if (chat_) {
      choice["message"] = {{"role", "assistant"}, {"content", text_}};
    } else {
      choice["text"] = text_;
    }
    out["choices"] = json::array({choice});
    out["usage"] = UsageJson(summary.usage());
    writer_->Send({.status = 200, .body = Dump(out)});
  }

 private:
  void Count(int code) { metrics_->requests->WithLabels({endpoint_, absl::StrCat(code)})->Increment(); }

  json Base(bool chunk) const {
    return {{"id", id_},
            {"object", chat_ ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"system_fingerprint", nullptr}};
  }

  // A streamed chunk carrying `text` and, at the end, the finish reason.
  json Chunk(const std::string& text, json finish) const {
    json out = Base(true);
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", std::move(finish)}};
    if (chat_) {
      choice["delta"] = text.empty() ? json::object() : json{{"content", text}};
    } else {
      choice["text"] = text;
    }
    out["choices"] = json::array({choice});
    return out;
  }

  void BeginStream() {
    if (streaming_) return;
    streaming_ = true;
    writer_->StartStream(200, "text/event-stream");
    if (chat_) {
      json first = Base(true);
      first["choices"] = json::array({{{"index", 0},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
      Event(first);
    }
  }

  void Event(const json& j) { writer_->Write("data: " + Dump(j) + "\n\n"); }

  const std::shared_ptr<http::ResponseWriter> writer_;
  const bool chat_;
  const bool stream_;
  const bool include_usage_;
  const std::string model_;
  const std::string endpoint_;
  const std::string id_;
  const int64_t created_;
  const absl::Time start_;
  absl::Time last_;
  std::optional<absl::Time> first_token_;
  bool streaming_ = false;
  std::string text_;
  const std::shared_ptr<OpenAiFront::Metrics> metrics_;
  const int retry_after_;
};

}  // namespace

OpenAiFront::OpenAiFront(OpenAiFrontOptions options, Generator* generator)
    : options_(std::move(options)),
      generator_(generator),
      registry_(options_.metrics != nullptr ? options_.metrics : &DefaultMetricsRegistry()),
      metrics_(std::make_shared<Metrics>(registry_)),
      created_(UnixSeconds()) {}

http::Response OpenAiFront::ErrorResponse(int status, std::string_view message) {
  ApiError e{.status = status, .message = std::string(message)};
  if (status == 404) e.code = "not_found";
  if (status >= 500) e.type = "server_error";
  return ErrorHttp(e);
}

bool OpenAiFront::Authorized(const http::Request& request) const {
  if (options_.api_keys.empty()) return true;
  std::optional<std::string> auth = request.Header("Authorization");
  if (!auth || auth->size() < 7 || !absl::EqualsIgnoreCase(auth->substr(0, 7), "bearer ")) return false;
  const std::string key(absl::StripAsciiWhitespace(auth->substr(7)));
  bool match = false;
  for (const std::string& k : options_.api_keys) {
    // Compare every byte of every key: the time taken does not say how much matched.
    unsigned diff = k.size() != key.size();
    for (size_t i = 0; i < k.size(); ++i)
      diff |= static_cast<unsigned char>(k[i] ^ (i < key.size() ? key[i] : 0));
    match |= diff == 0;
  }
  return match;
}

bool OpenAiFront::ModelAccepted(const std::string& name) const {
  if (name.empty() || options_.model_name.empty() || name == options_.model_name) return true;
  return std::find(options_.model_aliases.begin(), options_.model_aliases.end(), name) !=
         options_.model_aliases.end();
}

void OpenAiFront::Register(http::Server* server) {
  server->Handle("POST", "/v1/completions",
                 [this](const http::Request& r, std::shared_ptr<http::ResponseWriter> w) {
                   Generate(r, std::move(w), /*chat=*/false);
                 });
  server->Handle("POST", "/v1/chat/completions",
                 [this](const http::Request& r, std::shared_ptr<http::ResponseWriter> w) {
                   Generate(r, std::move(w), /*chat=*/true);
                 });
  server->Handle(
      "GET", "/v1/models", [this](const http::Request& r, std::shared_ptr<http::ResponseWriter> w) {
        if (!Authorized(r)) {
          w->Send(
              ErrorHttp({.status = 401, .message = "invalid or missing API key", .code = "invalid_api_key"}));
          return;
        }
        json data = json::array();
        if (!options_.model_name.empty()) {
          data.push_back({{"id", options_.model_name},
                          {"object", "model"},
                          {"created", created_},
                          {"owned_by", "tandem"}});
        }
        w->Send({.status = 200, .body = Dump({{"object", "list"}, {"data", data}})});
      });
  server->Handle("GET", "/health", [](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    w->Send({.status = 200, .content_type = "text/plain", .body = "ok\n"});
  });
  server->Handle("GET", "/ready", [this](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    const bool ready = !options_.ready || options_.ready();
    w->Send({.status = ready ? 200 : 503,
             .content_type = "text/plain",
             .body = ready ? "ready\n" : "not ready\n"});
  });
  server->Handle("GET", "/metrics", [this](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    w->Send({.status = 200,
             .content_type = "text/plain; version=0.0.4; charset=utf-8",
             .body = registry_->RenderPrometheus()});
  });
}

void OpenAiFront::Generate(const http::Request& http_request, std::shared_ptr<http::ResponseWriter> writer,
                           bool chat) {
  const std::string endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  auto fail = [&](const ApiError& e) {
    metrics_->requests->WithLabels({endpoint, absl::StrCat(e.status)})->Increment();
    metrics_->rejections->WithLabels({absl::StrCat(e.status)})->Increment();
    writer->Send(ErrorHttp(e, options_.retry_after_seconds));
  };
  if (!Authorized(http_request)) {
    return fail({.status = 401, .message = "invalid or missing API key", .code = "invalid_api_key"});
  }
  json body;
  try {
    body = json::parse(http_request.body);
  } catch (const json::exception& e) {
    return fail({.status = 400, .message = std::string("request body is not valid JSON: ") + e.what()});
  }
  if (!body.is_object()) return fail({.status = 400, .message = "request body must be a JSON object"});

  Parsed parsed;
  tandem::v1::GenerateRequest& req = parsed.request;
  try {
    if (!IsNull(body, "model") && !body["model"].is_string())
      return fail(BadParam("model", "'model' must be a string"));
    parsed.model = body.value("model", std::string());
    if (!ModelAccepted(parsed.model)) {
      return fail({.status = 404,
                   .message = "The model '" + parsed.model + "' does not exist; this server serves '" +
                              options_.model_name + "'",
                   .param = "model",
                   .code = "model_not_found"});
    }
    if (parsed.model.empty()) parsed.model = options_.model_name;
    // A name the front accepted is passed on only when the front does not
    // know the model itself (the generator checks it then).
    if (options_.model_name.empty()) req.set_model(parsed.model);

    if (chat) {
      std::vector<ChatTurn> turns;
      if (auto e = ParseMessages(body, &turns)) return fail(*e);
      absl::StatusOr<std::string> rendered = options_.render_chat
                                                 ? options_.render_chat(turns)
                                                 : absl::StatusOr<std::string>(RenderChatMl(turns));
      if (!rendered.ok())
        return fail(
            BadParam("messages", "cannot render the chat: " + std::string(rendered.status().message())));
      if (options_.tokenizer != nullptr) {
        for (int32_t id : options_.tokenizer->Encode(*rendered, /*add_bos=*/false, /*parse_special=*/true)) {
          req.mutable_prompt_token_ids()->add_ids(id);
        }
      } else {
        req.set_prompt(*std::move(rendered));
      }
    } else if (auto e = ParsePrompt(body, &req)) {
      return fail(*e);
    }

    const int32_t default_max_tokens =
        chat ? options_.chat_default_max_tokens : options_.completions_default_max_tokens;
    if (auto e = ParseLength(body, chat, default_max_tokens, &req)) return fail(*e);
    if (auto e = ParseSampling(body, &req)) return fail(*e);
    if (auto e = ParseStop(body, &req)) return fail(*e);
    if (auto e = ParseStreaming(body, &parsed)) return fail(*e);
    if (auto e = ParseTandemExtras(body, http_request, &req)) return fail(*e);
  } catch (const json::exception& e) {
    return fail({.status = 400, .message = std::string("invalid request: ") + e.what()});
  }

  const tandem::v1::GenerateRequest request = std::move(req);
  auto responder = std::make_shared<Responder>(writer, std::move(parsed), chat, endpoint, metrics_,
                                               options_.retry_after_seconds);
  std::shared_ptr<GenerationCall> call =
      generator_->Start(request, absl::Now() + options_.request_timeout, std::move(responder));
  if (call != nullptr) writer->SetCancelCallback([call] { call->Cancel(); });
}

}  // namespace tandem::router
