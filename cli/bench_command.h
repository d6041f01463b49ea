// `tandem bench`: replay a load trace (or a synthetic workload) against a
// cluster's router and report TTFT, TPOT, ITL, E2E percentiles, goodput under
// SLOs, prefix hit rate, rejections and errors.
//
//   tandem bench --target 127.0.0.1:50051 --trace ../shared/data/traces/mooncake_conversation.jsonl
//       --max-requests 200 --block-tokens 16 --max-tokens-cap 32 --time-scale 0.1 --slo-ttft 500
//       --json out.json
//   tandem bench --target 127.0.0.1:50051 --synthetic --num-requests 100 --rate 5
//   tandem bench --target 127.0.0.1:50051 --synthetic --num-requests 2200 --rate 110
//       --tenant heavy:10 --tenant light:1      # two tenants, 100 and 10 requests/s
//
// Progress (sent/completed/rejected/errors/in-flight) goes to stderr every
// second; the final table to stdout; --json FILE writes the report
// (loadgen/metrics.h SummaryToJson, with "samples" per completed request for
// bench/plot_bench.py). The library work is in loadgen/.
#ifndef TANDEM_CLI_BENCH_COMMAND_H_
#define TANDEM_CLI_BENCH_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/tls.h"

namespace tandem::cli {

struct BenchFlags {
  std::string target;  // router host:port
  // Workload: exactly one of trace / synthetic.
  std::string trace;
  bool synthetic = false;
  int32_t num_requests = 100;  // synthetic
  int32_t input_len = 256;     // synthetic
  int32_t output_len = 32;     // synthetic
  double prefix_fraction = 0.5;
  int32_t num_prefixes = 4;
  // Schedule: at most one of rate / time_scale; neither: the trace's own
  // timestamps (time scale 1), or for --synthetic all at once.
  std::optional<double> rate;
  std::optional<double> time_scale;
  uint64_t seed = 0;
  int64_t max_requests = 0;  // 0: all
  std::optional<double> slo_ttft_ms;
  std::optional<double> slo_tpot_ms;
  std::string json;
  std::string label;
  // Tokens per hash block in the prompts; 0: 512 for --trace (no scaling),
  // for --synthetic the cluster's KV block size (16 if it cannot say).
  int32_t block_tokens = 0;
  int32_t max_tokens_cap = 0;
  int32_t max_input_tokens = 0;
  int32_t context_length = 0;  // override; 0: the cluster's (GetClusterInfo)
  int32_t concurrency_limit = 0;
  std::string model;
  int32_t vocab_size = 256;
  int32_t first_token_id = 3;
  int32_t bos_id = 1;
  int32_t timeout_s = 300;
  bool quiet = false;  // no progress lines
  // --tenant NAME:SHARE[:PRIORITY] (repeatable): requests are split across
  // tenants by share (seeded), each sent with its tenant and priority, and
  // the report adds TTFT and outcomes per tenant. Empty: no tenant sent.
  std::vector<std::string> tenants;
  TlsFlags tls;
};

// Adds the flags to `cmd` and makes it run RunBench.
void RegisterBench(CLI::App* cmd, BenchFlags* flags);

// Returns the process exit code: 0 the run finished with at least one
// request completed or rejected, 1 a runtime error (unreadable trace,
// unwritable --json, or every request failed: no cluster there), 2 a usage
// error.
int RunBench(const BenchFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_BENCH_COMMAND_H_
