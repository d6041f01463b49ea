#include "router/router_metrics.h"

#include <vector>

namespace tandem::router {

RouterMetrics& RouterMetrics::Get() {
  static RouterMetrics* m = [] {
    MetricsRegistry& r = DefaultMetricsRegistry();
    auto* out = new RouterMetrics;
    const std::vector<double> latency = ExponentialBuckets(0.001, 2, 18);  // 1 ms .. 131 s
    out->ttft = r.Histogram("tandem_router_ttft_seconds", "Time to first token as the router saw it",
                            {"policy"}, latency);
    out->tpot = r.Histogram("tandem_router_tpot_seconds",
                            "Time per output token after the first ((e2e - ttft) / (tokens - 1))", {"policy"},
                            ExponentialBuckets(0.0001, 2, 18));
    out->e2e = r.Histogram("tandem_router_e2e_seconds", "Whole request", {"policy"}, latency);
    // Signed: -65.5 s .. -1 ms, 0, 1 ms .. 65.5 s (powers of 2).
    std::vector<double> signed_latency = ExponentialBuckets(0.001, 2, 17);
    for (const double b : ExponentialBuckets(0.001, 2, 17)) signed_latency.push_back(-b);
    signed_latency.push_back(0);
    out->ttft_prediction_error =
        r.Histogram("tandem_router_ttft_prediction_error_seconds",
                    "Measured TTFT minus the placement's predicted TTFT (signed; > 0: slower than predicted)",
                    {"policy"}, signed_latency);
    out->prefill_cost =
        r.Gauge("tandem_router_prefill_seconds_per_token",
                "Learned prefill cost of each prefill worker, seconds per computed prompt token", {"worker"});
    out->requests =
        r.Counter("tandem_router_requests_total",
                  "Requests by outcome (ok, rejected, invalid, unavailable, cancelled, error)", {"outcome"});
    out->prompt_tokens =
        r.Counter("tandem_router_prompt_tokens_total", "Prompt tokens of finished requests", {});
    out->cached_tokens =
        r.Counter("tandem_router_cached_tokens_total",
                  "Prompt tokens served from a KV cache, by where the prefill ran", {"where"});
    out->kv_bytes = r.Counter("tandem_router_kv_transfer_bytes_total",
                              "KV bytes prefill workers wrote into decode workers", {});
    out->in_flight =
        r.Gauge("tandem_router_requests_in_flight", "Requests started and not finished", {})->WithLabels({});
    out->workers =
        r.Gauge("tandem_router_workers",
                "Healthy workers registered with this router, by role (prefill, decode, store)", {"role"});
    out->kv_index_entries =
        r.Gauge("tandem_router_kv_index_entries",
                "(block, worker) pairs the router's KV index holds, by tier (hbm, dram, ssd)", {"tier"});
    out->retries = r.Counter("tandem_router_retries_total", "Placements retried after a worker failed", {})
                       ->WithLabels({});
    out->releases_resent =
        r.Counter("tandem_router_reservation_releases_resent_total",
                  "Decode reservations released again after the first Release did not reach the worker "
                  "(it was stopped or unreachable), once it was back in the rotation",
                  {})
            ->WithLabels({});
    out->migrations = r.Counter("tandem_router_stream_migrations_total",
                                "Streams whose decode worker died or stalled mid-stream, by outcome "
                                "(moved: resumed on another decode worker; failed: none could take it)",
                                {"outcome"});
    out->queue_depth =
        r.Gauge("tandem_router_queue_depth",
                "Requests waiting at the router for a worker's room, by priority", {"priority"});
    out->queue_running = r.Gauge("tandem_router_queue_running",
                                 "Requests dispatched to workers and not yet past their first token", {})
                             ->WithLabels({});
    out->decode_room = r.Gauge("tandem_router_decode_room",
                               "Requests the decode workers take before their predicted TPOT passes "
                               "--decode-tpot-limit-ms (-1: no bound); at 0, requests wait at the router",
                               {})
                           ->WithLabels({});
    out->shed = r.Counter("tandem_router_shed_total",
                          "Requests refused or shed (RESOURCE_EXHAUSTED), by reason (queue_full, "
                          "lower_priority, queue_ttl, slo, decode_full)",
                          {"reason"});
    return out;
  }();
  return *m;
}

const char* RequestOutcome(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return "ok";
    case absl::StatusCode::kResourceExhausted:
      return "rejected";
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
      return "invalid";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    case absl::StatusCode::kCancelled:
      return "cancelled";
    default:
      return "error";
  }
}

}  // namespace tandem::router
