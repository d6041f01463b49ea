#include "router/openai_wire.h"

#include <random>
#include <utility>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "router/shed_reason.h"

namespace tandem::router::openai {

using json = nlohmann::json;

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

http::Response ErrorHttp(const ApiError& e, int retry_after_seconds) {
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

}  // namespace tandem::router::openai
