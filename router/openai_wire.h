// The OpenAI wire shapes the HTTP front shares between reading requests
// (openai_request.h) and answering them (openai_responder.h): the error
// answer and its HTTP status, ids, finish reasons, usage. Internal to the
// router's OpenAI front.
#ifndef TANDEM_ROUTER_OPENAI_WIRE_H_
#define TANDEM_ROUTER_OPENAI_WIRE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "http/server.h"
#include "nlohmann/json_fwd.hpp"
#include "tandem/v1/tandem.pb.h"

namespace tandem::router::openai {

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

// JSON text; invalid UTF-8 is replaced, never thrown on.
std::string Dump(const nlohmann::json& j);
// {"error": {"message", "type", "param", "code"}}.
nlohmann::json ErrorJson(const ApiError& e);
// The answer for a status the generator returned (429 carries its shed reason).
ApiError FromStatus(const absl::Status& s);
// The error as an HTTP response; a 429 gets Retry-After (when > 0) and
// x-tandem-shed-reason.
http::Response ErrorHttp(const ApiError& e, int retry_after_seconds = 0);
// A 400 naming the offending parameter.
ApiError BadParam(std::string param, std::string message);
// "PREFIX-<random hex>": completion ids.
std::string NewId(std::string_view prefix);
int64_t UnixSeconds();
// "length" or "stop".
std::string FinishReason(tandem::v1::FinishReason r);
// OpenAI's usage object, cached tokens in prompt_tokens_details.
nlohmann::json UsageJson(const tandem::v1::Usage& u);

}  // namespace tandem::router::openai

#endif  // TANDEM_ROUTER_OPENAI_WIRE_H_
