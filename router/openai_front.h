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
//   OpenAiFront front(options, generator);   // generator borrowed
//   front.Register(server.get());            // before server->Start()
//
// Request fields: model, prompt / messages, max_tokens (chat also
// max_completion_tokens; unset: the router's default), temperature, top_p,
// seed, stop (string or array), n (1 only), stream,
// stream_options.include_usage, user (ignored). Tandem extras in the body:
// top_k, ignore_eos (bool), slo_ttft_ms, slo_tpot_ms (> 0); or as headers
// X-Tandem-Slo-Ttft-Ms / X-Tandem-Slo-Tpot-Ms; X-Request-Id names the
// request. Other fields are ignored, as OpenAI-compatible servers do.
//
// Responses are OpenAI's shapes (text_completion, chat.completion,
// chat.completion.chunk with usage.prompt_tokens_details.cached_tokens);
// streams are SSE `data: {json}\n\n` ending in `data: [DONE]\n\n`. Errors are
// `{"error":{"message","type","param","code"}}`: 400 invalid request, 401
// bad API key, 404 unknown model or path, 413 body too large, 429 (with
// Retry-After) when the router sheds load (RESOURCE_EXHAUSTED), 503
// UNAVAILABLE, 504 deadline. The HTTP status of a stream is decided by its
// first event: a request that fails before its first token gets a plain
// error answer; one that fails later gets an SSE error event.
//
// A client that disconnects cancels its generation (GenerationCall::Cancel).
//
// Thread safety: handlers run on the server's I/O threads and never block;
// generation progress arrives on the generator's threads. The front must
// outlive the server's Shutdown.
#ifndef TANDEM_ROUTER_OPENAI_FRONT_H_
#define TANDEM_ROUTER_OPENAI_FRONT_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
  // Renders chat messages into the prompt text (the model's chat template,
  // model::ChatTemplate). Default (unset): ChatML.
  std::function<absl::StatusOr<std::string>(const std::vector<ChatTurn>&)> render_chat;
  // If set (borrowed), rendered chat prompts are tokenized here with special
  // tokens parsed (the template writes them as text) and no BOS added (the
  // template writes it), and sent as token ids. Unset: sent as text.
  const model::Tokenizer* tokenizer = nullptr;
};

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
