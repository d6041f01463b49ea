#include "router/openai_responder.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "router/openai_wire.h"

namespace tandem::router::openai {
namespace {

using json = nlohmann::json;

// Streams one request's progress back as SSE chunks or one JSON answer.
class Responder : public GenerationObserver {
 public:
  Responder(std::shared_ptr<http::ResponseWriter> writer, ParsedRequest parsed, bool chat,
            std::string endpoint, std::shared_ptr<OpenAiFront::Metrics> metrics, int retry_after)
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

std::shared_ptr<GenerationObserver> MakeResponder(std::shared_ptr<http::ResponseWriter> writer,
                                                  ParsedRequest parsed, bool chat, std::string endpoint,
                                                  std::shared_ptr<OpenAiFront::Metrics> metrics,
                                                  int retry_after_seconds) {
  return std::make_shared<Responder>(std::move(writer), std::move(parsed), chat, std::move(endpoint),
                                     std::move(metrics), retry_after_seconds);
}

}  // namespace tandem::router::openai
