// The router's OpenAI-compatible HTTP API, served by http::Server and backed
// by a Generator (router/generation.h):
//
//   POST /v1/completions        prompt: string | [string] | [int...] | [[int...]] (one prompt)
//   POST /v1/chat/completions   messages: [{role, content: string | [{type: "text", text}]}]
//   GET  /v1/models             the served model
//   GET  /health                200 while the process is up
//   GET  /ready                 200 when options.ready() (a healthy decode worker), else 503
//   GET  /metrics               Prometheus text of options.metrics
//
//   ChatRenderer chat = MakeChatRenderer(model->chat_template, model->tokenizer.get());
//   options.render_chat = chat.render;
//   options.tokenizer = model->tokenizer.get();   // chat prompts go as token ids
//   OpenAiFront front(options, generator);   // generator borrowed
//   front.Register(server.get());            // before server->Start()
//
// Request fields: model, prompt / messages, max_tokens (chat also
// max_completion_tokens; unset: see the options' *_default_max_tokens),
// temperature, top_p,
// seed, stop (string or array), n (1 only), stream,
// stream_options.include_usage, user (the tenant, below). Tandem extras in the body:
// top_k, ignore_eos (bool), slo_ttft_ms, slo_tpot_ms (> 0 when given: the
// core's rule, ValidateSlo in request_validation.h); or as headers
// X-Tandem-Slo-Ttft-Ms / X-Tandem-Slo-Tpot-Ms; X-Request-Id names the
// request; flow control (router_core.h): X-Tandem-Priority (-100 to 100,
// higher first; default 0) and X-Tandem-Tenant (at most 128 bytes; unset:
// the body's "user"; neither: the shared tenant ""). Other fields are
// ignored, as OpenAI-compatible servers do.
//
// Responses are OpenAI's shapes (text_completion, chat.completion,
// chat.completion.chunk with usage.prompt_tokens_details.cached_tokens);
// streams are SSE `data: {json}\n\n` ending in `data: [DONE]\n\n`. Errors are
// `{"error":{"message","type","param","code"}}`: 400 invalid request, 401
// bad API key, 404 unknown model or path, 413 body too large, 429 when the
// router refuses or sheds the request (RESOURCE_EXHAUSTED: nothing was
// computed for it; retry after Retry-After seconds), with
// x-tandem-shed-reason: queue_full (the queue is full of requests of its
// priority or higher), lower_priority (it waited and a higher-priority
// request took its place), over_share (it waited and a tenant below its
// fair share took its place), queue_ttl (it waited the router's queue TTL),
// slo (predicted to miss its SLO target), decode_full (no decode worker has
// room); 503 UNAVAILABLE (no worker can serve it); 504 deadline. The HTTP status of a stream is decided by
// its first event: a request that fails before its first token gets a plain error answer; one that fails
// later gets an SSE error event.
//
// A client that disconnects cancels its generation (GenerationCall::Cancel).
//
// Thread safety: handlers run on the server's I/O threads and never block;
// generation progress arrives on the generator's threads. The front must
// outlive the server's Shutdown.
#ifndef TANDEM_ROUTER_OPENAI_FRONT_H_
#define TANDEM_ROUTER_OPENAI_FRONT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "http/server.h"
#include "model/tokenizer.h"
#include "router/generation.h"

namespace tandem::router {

// One chat message as the front hands it to the chat renderer.
struct ChatTurn {
  std::string role;
  std::string content;
};

struct OpenAiFrontOptions {
  // The model name reported by /v1/models and accepted in requests' "model".
  // Empty: any name is accepted and passed to the generator. Default: "".
  std::string model_name;
  // Other names accepted for the model (e.g. its spec or file name); they are
  // not reported. Default: none.
  std::vector<std::string> model_aliases;
  // Bearer tokens accepted on /v1/*; empty turns authentication off.
  // Default: off.
  std::vector<std::string> api_keys;
  // Whether the router can serve (at least one healthy decode worker), for
  // /ready. Default (unset): always ready.
  std::function<bool()> ready;
  // Registry /metrics renders and the front records into (borrowed).
  // Default: DefaultMetricsRegistry().
  MetricsRegistry* metrics = nullptr;
  // Deadline of each request, from its arrival. Default: 10 minutes.
  absl::Duration request_timeout = absl::Minutes(10);
  // Seconds sent in Retry-After with a 429. Default: 1.
  int retry_after_seconds = 1;
  // max_tokens of a /v1/completions request that sets none: 16, OpenAI's
  // documented default for completions. 0: the generator's default.
  // Default: 16.
  int32_t completions_default_max_tokens = 16;
  // max_tokens of a /v1/chat/completions request that sets neither
  // max_tokens nor max_completion_tokens. OpenAI's default is "until the
  // context ends"; an unbounded default lets one careless client hold a
  // decode slot for the whole context, so the default is bounded: 0 sends no
  // max_tokens and the generator applies its own default (the router's
  // RouterOptions::default_max_tokens, 64). Default: 0.
  int32_t chat_default_max_tokens = 0;
  // Renders chat messages into the prompt text (the model's chat template,
  // model::ChatTemplate; see MakeChatRenderer). Default (unset): ChatML.
  std::function<absl::StatusOr<std::string>(const std::vector<ChatTurn>&)> render_chat;
  // If set (borrowed), rendered chat prompts are tokenized here with special
  // tokens parsed (the template writes them as text) and no BOS added (the
  // template writes it), and sent as token ids. Unset: sent as text.
  const model::Tokenizer* tokenizer = nullptr;
};

// The chat rendering a served model gets (what RunRouter sets as
// OpenAiFrontOptions::render_chat):
//  - the model's own template (`template_source`: LoadedModel::chat_template,
//    from GGUF tokenizer.chat_template or tokenizer_config.json) when it is
//    non-empty and parses;
//  - else model::ChatTemplate::Default() (ChatML); `template_error` then says
//    why the model's template was not used, if it had one.
// The template sees bos_token and eos_token as the tokenizer's BOS/EOS text
// (`tokenizer` borrowed, may be null: empty strings) and
// add_generation_prompt=true. A render error (e.g. a template's
// raise_exception on roles that do not alternate) is InvalidArgument, which
// the front answers with 400.
struct ChatRenderer {
  std::function<absl::StatusOr<std::string>(const std::vector<ChatTurn>&)> render;
  bool model_template = false;  // true: the model's template; false: ChatML
  absl::Status template_error;  // the model's template's parse error; OK if none
};
ChatRenderer MakeChatRenderer(std::string_view template_source, const model::Tokenizer* tokenizer);

class OpenAiFront {
 public:
  // `generator` is borrowed and must outlive the front.
  OpenAiFront(OpenAiFrontOptions options, Generator* generator);

  // Adds the routes above to `server`. REQUIRES: before server->Start().
  void Register(http::Server* server);

  // An OpenAI error answer (for Server::Options::error_response, so the
  // server's own 400/404/413/... answers have the same shape).
  static http::Response ErrorResponse(int status, std::string_view message);

  struct Metrics;  // the front's metric families (openai_front.cc)

 private:
  void Generate(const http::Request& request, std::shared_ptr<http::ResponseWriter> writer, bool chat);
  bool Authorized(const http::Request& request) const;
  bool ModelAccepted(const std::string& name) const;

  const OpenAiFrontOptions options_;
  Generator* const generator_;
  MetricsRegistry* const registry_;
  std::shared_ptr<Metrics> metrics_;
  const int64_t created_;  // unix seconds, reported as the model's "created"
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_OPENAI_FRONT_H_
