// What a load run measured, per request and in summary, by vLLM's
// benchmark_serving definitions:
//   TTFT  send -> first chunk carrying a token;
//   TPOT  (E2E - TTFT) / (output tokens - 1), for requests with > 1 token;
//   ITL   the gaps between consecutive token-carrying chunks (pooled over
//         requests);
//   E2E   send -> the stream's end.
// Percentiles interpolate linearly between closest ranks (numpy's default).
// Goodput: completed requests meeting every SLO given, per second of the run.
// Prefix hit rate: sum of usage.cached_tokens / sum of prompt tokens over
// completed requests.
//
//   RunSummary s = Summarize(results, {.ttft_ms = 500}, /*duration_s=*/12.5);
//   std::cout << SummaryToJson(s, results, /*samples=*/true).dump(2);
//
// Plain functions on values; thread-compatible.
#ifndef TANDEM_LOADGEN_METRICS_H_
#define TANDEM_LOADGEN_METRICS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tandem::loadgen {

enum class Outcome {
  kCompleted,  // OK status and a summary
  kRejected,   // RESOURCE_EXHAUSTED: SLO admission turned it away
  kError,      // anything else
};

struct RequestResult {
  Outcome outcome = Outcome::kError;
  // The tenant that sent it (LoadRequest::tenant); "" when none.
  std::string tenant;
  // For kError: the gRPC code's name (e.g. "UNAVAILABLE") and message.
  std::string error_code;
  std::string error_message;
  // When it was first sent, in milliseconds from the run's start (a
  // benchmark that changes the load mid-run, or discards a warm-up, selects
  // samples by it).
  double sent_ms = 0;
  // Milliseconds after the send. ttft_ms is unset when no token came.
  std::optional<double> ttft_ms;
  double e2e_ms = 0;
  // Gaps between consecutive token-carrying chunks, ms.
  std::vector<double> itl_ms;
  int32_t output_tokens = 0;
  // From the summary (completed requests).
  int32_t prompt_tokens = 0;
  int32_t cached_tokens = 0;
  // The router's predicted TTFT for the placement that served the request
  // and the TTFT the router measured (Timings.predicted_ttft_ms and
  // first_token_ms); unset when the router did not report them.
  std::optional<double> predicted_ttft_ms;
  std::optional<double> router_ttft_ms;
  // Where the router's TTFT went (Timings.queue_ms, prefill_ms,
  // transfer_ms): waiting for a worker, computing the prompt, writing its
  // KV to the decode worker; unset when the router did not report them.
  std::optional<double> queue_ms, prefill_ms, transfer_ms;
  // Parts of queue_ms (Timings.admission_ms, reserve_ms): the router's flow
  // queue and the decode worker's Reserve; unset when not reported.
  std::optional<double> admission_ms, reserve_ms;
  // Times it was sent again to another router replica after UNAVAILABLE
  // (Runner::Options::replicas).
  int32_t retries = 0;
};

// Latency targets; unset: not checked.
struct Slo {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
};

// (e2e - ttft) / (output_tokens - 1); unset with fewer than 2 tokens or no TTFT.
std::optional<double> TpotMs(const RequestResult& r);

// The router's TTFT prediction error, router_ttft_ms - predicted_ttft_ms
// (positive: slower than predicted); unset unless both are set.
std::optional<double> TtftPredictionErrorMs(const RequestResult& r);

// Whether a completed request met every target in `slo`. A request without
// a TTFT misses a TTFT target; one without a TPOT (a single token) meets any
// TPOT target.
bool MeetsSlo(const RequestResult& r, const Slo& slo);

// The q-th percentile (q in [0, 100]) of `values`, linear interpolation
// between closest ranks; unset when `values` is empty.
std::optional<double> Percentile(std::vector<double> values, double q);

struct Percentiles {
  std::optional<double> p50, p90, p99, mean;
};
Percentiles ComputePercentiles(const std::vector<double>& values);

struct RunSummary {
  int64_t requests = 0;  // completed + rejected + errors
  int64_t completed = 0;
  int64_t rejected = 0;
  int64_t errors = 0;
  std::map<std::string, int64_t> errors_by_code;
  // The first error message seen for each code.
  std::map<std::string, std::string> first_error_by_code;
  double duration_s = 0;
  int64_t good = 0;  // completed and within every SLO
  double goodput_rps = 0;
  double throughput_rps = 0;  // completed per second
  int64_t prompt_tokens = 0;  // over completed requests
  int64_t cached_tokens = 0;
  int64_t output_tokens = 0;
  double output_tokens_per_s = 0;
  double prefix_hit_rate = 0;  // 0 when no prompt tokens
  // The workload's sequential infinite-cache hit-rate bound
  // (workload.h: InfiniteCacheHitRateBound), set by the caller; unset: not
  // computed.
  std::optional<double> hit_rate_bound;
  Percentiles ttft_ms, tpot_ms, itl_ms, e2e_ms;
  // Send -> refusal (RESOURCE_EXHAUSTED) over rejected requests: how fast
  // the cluster says no.
  Percentiles rejected_ms;
  double rejected_max_ms = 0;
  // Requests sent again to another router replica (RequestResult::retries > 0).
  int64_t retried = 0;
  // Over completed requests with a prediction (TtftPredictionErrorMs):
  // signed error (measured - predicted) and its absolute value, ms.
  int64_t predicted = 0;
  Percentiles ttft_prediction_error_ms, ttft_prediction_abs_error_ms;
  Slo slo;
};

// REQUIRES: duration_s > 0 (rates are 0 otherwise).
RunSummary Summarize(const std::vector<RequestResult>& results, const Slo& slo, double duration_s);

// Summarize over each tenant's requests (RequestResult::tenant), over the
// same duration; empty when no request names a tenant.
std::map<std::string, RunSummary> SummarizeByTenant(const std::vector<RequestResult>& results, const Slo& slo,
                                                    double duration_s);

// {"requests","completed","rejected","prefix_hit_rate","hit_rate_bound","goodput_rps","ttft_ms":{"p50","p90","p99","mean"},
//  "tpot_ms","itl_ms","e2e_ms", then
//  "errors","errors_by_code","first_error_by_code","duration_s","throughput_rps",
//  "output_tokens_per_s","prompt_tokens","cached_tokens","output_tokens","slo":{"ttft_ms","tpot_ms"},
//  "rejected_ms":{"p50","p90","p99","mean"},"rejected_max_ms","predicted_requests",
//  "ttft_prediction_error_ms":{...},"ttft_prediction_abs_error_ms":{...}}.
// Missing values are null. With `samples`, also "samples": one object per
// completed request in send order: {"ttft_ms","tpot_ms","e2e_ms","prompt_tokens",
// "cached_tokens","output_tokens","met_slo","predicted_ttft_ms","router_ttft_ms",
// "queue_ms","prefill_ms","transfer_ms","admission_ms",
// "reserve_ms"}, and "tenant" when it has one.
nlohmann::ordered_json SummaryToJson(const RunSummary& summary, const std::vector<RequestResult>& results,
                                     bool samples);

}  // namespace tandem::loadgen

#endif  // TANDEM_LOADGEN_METRICS_H_
