// Reads an OpenAI /v1/completions or /v1/chat/completions request body
// (and its Tandem headers) into the GenerateRequest the router runs, or the
// OpenAI error that says what is wrong with it. Internal to the router's
// OpenAI front; the fields are listed in openai_front.h.
#ifndef TANDEM_ROUTER_OPENAI_REQUEST_H_
#define TANDEM_ROUTER_OPENAI_REQUEST_H_

#include <optional>
#include <string>

#include "http/server.h"
#include "nlohmann/json_fwd.hpp"
#include "router/openai_front.h"
#include "router/openai_wire.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::router::openai {

// A parsed request: what goes to the generator plus what shapes the answer.
struct ParsedRequest {
  tandem::v1::GenerateRequest request;
  std::string model;
  bool stream = false;
  bool include_usage = false;
};

// Everything after the model check: the prompt (completions) or the
// messages (chat: rendered by options.render_chat, else ChatML, and
// tokenized by options.tokenizer when set), max_tokens and n, sampling,
// stop, streaming, Tandem's extras and the flow-control headers. May throw
// nlohmann::json::exception on a malformed body: the caller answers 400.
std::optional<ApiError> ParseGenerateBody(const nlohmann::json& body, const http::Request& http_request,
                                          bool chat, const OpenAiFrontOptions& options,
                                          ParsedRequest* parsed);

}  // namespace tandem::router::openai

#endif  // TANDEM_ROUTER_OPENAI_REQUEST_H_
