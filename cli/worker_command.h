// `tandem prefill` and `tandem decode`: a worker process. The flags below
// (over an optional `--config FILE`, cli/config_merge.h; TLS with --tls-*,
// cli/tls.h) map onto worker::WorkerProcess::Options; the worker
// itself is assembled there (worker/worker_process.h). Prints one
// JSON ready line once registered with the router —
// {"grpc":"host:port","kv_blocks":...,"metrics":...,"role":"decode",
// "worker_id":...,...} — and stops cleanly on SIGINT/SIGTERM.
//
//   tandem decode --router 127.0.0.1:50051 --model synthetic:tiny --metrics-port 0
#ifndef TANDEM_CLI_WORKER_COMMAND_H_
#define TANDEM_CLI_WORKER_COMMAND_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/engine_flags.h"
#include "cli/tls.h"

namespace tandem::cli {

struct WorkerFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  std::string model = "synthetic:tiny";
  int32_t threads = 1;
  // --device, --cuda-fp32 (cli/engine_flags.h). CPU only for now: KV
  // transfers and tiers read the pool as host memory (WorkerProcess).
  DeviceFlags device{.device = "cpu"};
  int32_t block_size = 16;
  int32_t kv_cache_mb = 256;
  int32_t kv_staging_mb = 64;
  bool kv_stream_chunks = true;  // --kv-stream-chunks  // --kv-staging-mb: pinned staging for a device pool
  int32_t max_running = 64;
  int32_t max_step_tokens = 0;  // 0: per backend (engine::DefaultMaxStepTokens)
  std::string worker_id;        // default: role-host-pid
  KvTierFlags kv_tiers;         // --kv-dram-bytes, --kv-ssd-path, --kv-ssd-bytes (cli/engine_flags.h)
  bool kv_prefetch = true;      // --kv-prefetch: SSD -> DRAM ahead of admission (with an SSD tier)
  std::string kv_store;         // --kv-store: the shared KV store's address; empty: none
  std::string kv_store_transport = "ucx";  // --kv-store-transport: ucx | grpc
  int32_t metrics_port = -1;  // --metrics-port: /metrics and /health over HTTP; 0: any free port; -1: off
  TlsFlags tls;
  std::string config;    // --config FILE; empty: none
  bool dry_run = false;  // --dry-run
};

void RegisterPrefill(CLI::App* cmd, WorkerFlags* flags);
void RegisterDecode(CLI::App* cmd, WorkerFlags* flags);

// Serves until SIGINT/SIGTERM; the exit code (1: could not start). `role` is
// "prefill" or "decode".
int RunWorkerCommand(const WorkerFlags& flags, const std::string& role);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_WORKER_COMMAND_H_
