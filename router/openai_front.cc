#include "router/openai_front.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"
#include "router/openai_request.h"
#include "router/openai_responder.h"
#include "router/openai_wire.h"

// The front: authentication, routes, the model check and metrics. Reading
// a request body is openai_request.cc; answering it openai_responder.cc;
// the shapes both use openai_wire.cc.
namespace tandem::router {

using json = nlohmann::json;
using openai::ApiError;
using openai::BadParam;
using openai::Dump;
using openai::ErrorHttp;
using openai::MakeResponder;
using openai::ParsedRequest;
using openai::UnixSeconds;

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

  ParsedRequest parsed;
  tandem::v1::GenerateRequest& req = parsed.request;
  try {
    if (body.contains("model") && !body["model"].is_null() && !body["model"].is_string())
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

    if (auto e = ParseGenerateBody(body, http_request, chat, options_, &parsed)) return fail(*e);
  } catch (const json::exception& e) {
    return fail({.status = 400, .message = std::string("invalid request: ") + e.what()});
  }

  const tandem::v1::GenerateRequest request = std::move(req);
  std::shared_ptr<GenerationObserver> responder =
      MakeResponder(writer, std::move(parsed), chat, endpoint, metrics_, options_.retry_after_seconds);
  std::shared_ptr<GenerationCall> call =
      generator_->Start(request, absl::Now() + options_.request_timeout, std::move(responder));
  if (call != nullptr) writer->SetCancelCallback([call] { call->Cancel(); });
}

}  // namespace tandem::router
