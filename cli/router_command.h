// `tandem router`: the cluster's front. Serves tandem.v1.Generate and the
// workers' tandem.v1.WorkerRegistry on one gRPC port and, with --http-port,
// the OpenAI-compatible HTTP API; prints one JSON ready line once serving —
// {"grpc":"host:port","http":...,"model":...,"pid":...,"policy":...,
// "role":"router","tls":...} — and stops cleanly on SIGINT/SIGTERM.
//
//   tandem router --port 50051 --model synthetic:tiny --http-port 8000
//
// Configuration: flags, over an optional `--config FILE` (cli/config_merge.h),
// over the defaults below; TLS with --tls-* (cli/tls.h).
#ifndef TANDEM_CLI_ROUTER_COMMAND_H_
#define TANDEM_CLI_ROUTER_COMMAND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/tls.h"

namespace tandem::cli {

struct RouterFlags {
  std::string host = "127.0.0.1";
  int32_t port = 50051;
  std::string model = "synthetic:tiny";
  int32_t heartbeat_ms = 500;
  int32_t heartbeat_misses = 3;
  std::string policy = "kv";
  double slo_ttft_ms = 0;
  double slo_tpot_ms = 0;
  int32_t aggregate_max_uncached_tokens = 16;
  double aggregate_when_queue_ms = 0;
  // RouterOptions::stream_stall_timeout (0: off), stream_stall_steps and
  // stalled_worker_hold: gray-failure detection (router/router_core.h).
  int32_t stream_stall_timeout_ms = 2000;
  int32_t stream_stall_steps = 20;
  int32_t stalled_worker_hold_ms = 10000;
  int32_t max_migrations = 3;
  // --max-queued-prefills: RouterOptions::max_queued_prefills_per_worker.
  int32_t max_queued_prefills = 64;
  // Flow control (router/flow_queue.h): --max-inflight-prefills
  // (RouterOptions::max_inflight_prefills_per_worker; 0: off), --queue-ttl-ms
  // (0: none), --tenant-weight NAME=W (repeatable).
  int32_t max_inflight_prefills = 4;
  int32_t queue_ttl_ms = 30000;
  // --decode-tpot-limit-ms: RouterOptions::decode_tpot_limit_ms (0: off).
  double decode_tpot_limit_ms = 20;
  std::vector<std::string> tenant_weights;
  int32_t http_port = -1;             // --http-port: OpenAI-compatible HTTP API; 0: any free port; -1: off
  std::vector<std::string> api_keys;  // --api-key (repeatable) plus TANDEM_API_KEYS; empty: no auth
  TlsFlags tls;
  std::string config;    // --config FILE; empty: none
  bool dry_run = false;  // --dry-run
};

void RegisterRouter(CLI::App* cmd, RouterFlags* flags);
// Serves until SIGINT/SIGTERM; the exit code (1: could not start).
int RunRouter(const RouterFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_ROUTER_COMMAND_H_
