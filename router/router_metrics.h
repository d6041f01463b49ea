// The router's own Prometheus metrics (the HTTP front records per-endpoint
// ones), registered once in DefaultMetricsRegistry().
//
//   RouterMetrics& m = RouterMetrics::Get();
//   m.requests->WithLabels({RequestOutcome(status)})->Increment();
//   m.ttft->WithLabels({"kv"})->Observe(seconds);
//
// Thread safety: Get() and every metric are safe from any thread.
#ifndef TANDEM_ROUTER_ROUTER_METRICS_H_
#define TANDEM_ROUTER_ROUTER_METRICS_H_

#include "absl/status/status.h"
#include "common/metrics.h"

namespace tandem::router {

struct RouterMetrics {
  HistogramFamily* ttft;  // {policy}
  HistogramFamily* tpot;  // {policy}
  HistogramFamily* e2e;   // {policy}
  // {policy}: the placement's predicted TTFT against the measured one,
  // signed seconds (measured - predicted: > 0 slower than predicted), over
  // requests that finished OK with a first token.
  HistogramFamily* ttft_prediction_error;
  // {worker}: the learned per-token prefill cost of each prefill worker
  // (seconds per computed prompt token), set when it reports a prefill.
  GaugeFamily* prefill_cost;
  CounterFamily* requests;       // {outcome}: RequestOutcome
  CounterFamily* prompt_tokens;  // {}
  CounterFamily* cached_tokens;  // {where}: "prefill" or "decode"
  CounterFamily* kv_bytes;       // {}
  Gauge* in_flight;
  Counter* retries;
  // Releases re-sent to a decode worker that did not answer the first one
  // (RouterCore::RetryReleases).
  Counter* releases_resent;
  // {outcome}: "moved" (a stream continued on another decode worker after
  // its own died or stalled mid-stream) or "failed" (no worker could take it).
  CounterFamily* migrations;
  GaugeFamily* workers;  // {role}: prefill, decode, store
  // {tier}: hbm, dram, ssd. (hash, worker) pairs in the KV index: shows the
  // index catching up with the workers' KV events.
  GaugeFamily* kv_index_entries;
  // Flow control (flow_queue.h): {priority} requests waiting at the router;
  // requests dispatched and not past their first token; {reason}
  // (shed_reason.h) refusals and sheds.
  GaugeFamily* queue_depth;
  Gauge* queue_running;
  // Decode admission (RouterOptions::decode_tpot_limit_ms): requests the
  // healthy decode workers take before their predicted TPOT passes the
  // limit (-1: no bound — off, or a worker has reported no step yet); at 0
  // requests wait at the router for decode room.
  Gauge* decode_room;
  CounterFamily* shed;

  // The process's instance, registered on first use; never destroyed.
  static RouterMetrics& Get();
};

// The `outcome` label of a finished request: ok, rejected (SLO), invalid,
// unavailable, cancelled or error.
const char* RequestOutcome(const absl::Status& status);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_METRICS_H_
