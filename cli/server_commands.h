// `tandem router`, `tandem prefill`, `tandem decode`: the cluster's server
// processes. Each prints one JSON line to stdout when it is serving (workers:
// once registered with the router) — {"role":..., "pid":..., "grpc":"host:port",
// ...} — and stops cleanly on SIGINT/SIGTERM.
//
// Configuration: flags, over an optional `--config FILE` (JSON in the
// tandem.v1.ClusterConfig schema, proto/tandem/v1/config.proto), over the
// defaults below. A flag given on the command line wins over the file.
// `--dry-run` parses and validates flags and file, prints the effective
// configuration as one ClusterConfig JSON line and exits 0 without serving
// (the Helm chart's tests use it to check the chart's arguments).
//
// TLS (off by default): `--tls-cert`/`--tls-key` serve TLS on the one gRPC
// port; `--tls-ca` also requires clients to present a certificate signed by
// that CA (mutual TLS). The same files secure this process's outgoing
// channels (worker -> router, router -> workers).
#ifndef TANDEM_CLI_SERVER_COMMANDS_H_
#define TANDEM_CLI_SERVER_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "cli/engine_flags.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/server_credentials.h"
#include "tandem/v1/config.pb.h"

namespace tandem::cli {

// TLS settings shared by every process (tandem.v1.TlsConfig).
struct TlsFlags {
  // Serve and dial with TLS. Implied by cert_file.
  bool enabled = false;
  std::string cert_file;  // PEM chain: served, and presented as client cert
  std::string key_file;   // PEM key of cert_file
  std::string ca_file;    // PEM CA bundle peers must chain to (empty: system roots)
  // With ca_file: refuse clients without a CA-signed certificate.
  bool require_client_auth = true;
  // Name checked in servers' certificates instead of the dialed host.
  std::string server_name;
};

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
  int32_t http_port = -1;             // --http-port: OpenAI-compatible HTTP API; 0: any free port; -1: off
  std::vector<std::string> api_keys;  // --api-key (repeatable) plus TANDEM_API_KEYS; empty: no auth
  TlsFlags tls;
  std::string config;    // --config FILE; empty: none
  bool dry_run = false;  // --dry-run
};

struct WorkerFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  std::string model = "synthetic:tiny";
  int32_t threads = 1;
  // --device, --cuda-fp32 (cli/engine_flags.h). CPU only for now: KV transfers
  // and tiers read the pool as host memory (see RunWorker).
  DeviceFlags device{.device = "cpu"};
  int32_t block_size = 16;
  int32_t kv_cache_mb = 256;
  int32_t max_running = 64;
  int32_t max_step_tokens = 512;
  std::string worker_id;    // default: role-host-pid
  KvTierFlags kv_tiers;     // --kv-dram-bytes, --kv-ssd-path, --kv-ssd-bytes (cli/engine_flags.h)
  bool kv_prefetch = true;  // --kv-prefetch: SSD -> DRAM ahead of admission (with an SSD tier)
  std::string kv_store;     // --kv-store: the shared KV store's address; empty: none
  std::string kv_store_transport = "ucx";  // --kv-store-transport: ucx | grpc
  int32_t metrics_port = -1;  // --metrics-port: /metrics and /health over HTTP; 0: any free port; -1: off
  TlsFlags tls;
  std::string config;    // --config FILE; empty: none
  bool dry_run = false;  // --dry-run
};

void RegisterRouter(CLI::App* cmd, RouterFlags* flags);
void RegisterPrefill(CLI::App* cmd, WorkerFlags* flags);
void RegisterDecode(CLI::App* cmd, WorkerFlags* flags);

// Reads a ClusterConfig from the JSON file at `path`. InvalidArgument naming
// the file and the offending field (unknown field, wrong type); NotFound when
// the file cannot be read.
absl::StatusOr<tandem::v1::ClusterConfig> LoadClusterConfig(const std::string& path);

// Adds --tls-cert, --tls-key, --tls-ca to `cmd`.
void AddTlsFlags(CLI::App* cmd, TlsFlags* tls);

// Credentials for a server from `tls` (insecure when !tls.enabled); reads the
// files now. InvalidArgument/NotFound name the file that failed.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& tls);

// Creates a channel to "host:port".
using ChannelFactory = std::function<std::shared_ptr<grpc::Channel>(const std::string& target)>;
// A factory for channels secured by `tls` (plaintext when !tls.enabled): the
// server is verified against ca_file (or the system roots) and, when
// cert_file is set, this process presents it as its client certificate.
// Reads the files now.
absl::StatusOr<ChannelFactory> MakeChannelFactory(const TlsFlags& tls);

int RunRouter(const RouterFlags& flags);
// `role` is "prefill" or "decode".
int RunWorker(const WorkerFlags& flags, const std::string& role);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_SERVER_COMMANDS_H_
