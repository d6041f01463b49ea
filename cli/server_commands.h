// `tandem router`, `tandem prefill`, `tandem decode`: the cluster's server
// processes. Each prints one JSON line to stdout when it is serving (workers:
// once registered with the router) — {"role":..., "pid":..., "grpc":"host:port",
// ...} — and stops cleanly on SIGINT/SIGTERM.
#ifndef TANDEM_CLI_SERVER_COMMANDS_H_
#define TANDEM_CLI_SERVER_COMMANDS_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"

namespace tandem::cli {

struct RouterFlags {
  std::string host = "127.0.0.1";
  int32_t port = 50051;
  std::string model = "synthetic:tiny";
  int32_t heartbeat_ms = 500;
  int32_t heartbeat_misses = 3;
  std::string policy = "round_robin";
};

struct WorkerFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  std::string model = "synthetic:tiny";
  int32_t threads = 1;
  int32_t block_size = 16;
  int32_t kv_cache_mb = 256;
  int32_t max_running = 64;
  int32_t max_step_tokens = 512;
  std::string worker_id;  // default: role-host-pid
};

void RegisterRouter(CLI::App* cmd, RouterFlags* flags);
void RegisterPrefill(CLI::App* cmd, WorkerFlags* flags);
void RegisterDecode(CLI::App* cmd, WorkerFlags* flags);

int RunRouter(const RouterFlags& flags);
// `role` is "prefill" or "decode".
int RunWorker(const WorkerFlags& flags, const std::string& role);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_SERVER_COMMANDS_H_
