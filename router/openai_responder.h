// Answers one OpenAI request from the generator's progress: SSE chunks
// (stream: true; a chat stream opens with the assistant role and ends with
// "[DONE]", usage first when stream_options.include_usage) or one JSON
// answer, or an OpenAI error when the request failed; it counts the front's
// metrics on the way. Internal to the router's OpenAI front.
#ifndef TANDEM_ROUTER_OPENAI_RESPONDER_H_
#define TANDEM_ROUTER_OPENAI_RESPONDER_H_

#include <memory>
#include <string>

#include "common/metrics.h"
#include "http/server.h"
#include "router/generation.h"
#include "router/openai_front.h"
#include "router/openai_request.h"

namespace tandem::router {

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

namespace openai {

// The observer for one request: `chat` picks the chat shapes, `endpoint`
// labels the metrics, `retry_after_seconds` goes on a 429.
std::shared_ptr<GenerationObserver> MakeResponder(std::shared_ptr<http::ResponseWriter> writer,
                                                  ParsedRequest parsed, bool chat, std::string endpoint,
                                                  std::shared_ptr<OpenAiFront::Metrics> metrics,
                                                  int retry_after_seconds);

}  // namespace openai
}  // namespace tandem::router

#endif  // TANDEM_ROUTER_OPENAI_RESPONDER_H_
