#include "cli/worker_command.h"

#include <unistd.h>

#include <iostream>
#include <memory>
#include <utility>

#include "absl/strings/str_format.h"
#include "cli/config_merge.h"
#include "cli/process.h"
#include "worker/worker_process.h"
#include "worker_common/router_set.h"

namespace tandem::cli {
namespace {

void AddWorkerFlags(CLI::App* cmd, WorkerFlags* f) {
  cmd->add_option("--router", f->router,
                  "Router replicas' gRPC addresses: host:port, a comma-separated list, or a DNS name "
                  "standing for all its addresses (re-resolved every 5 s); each gets the registration, "
                  "heartbeats and KV events")
      ->capture_default_str();
  cmd->add_option("--host", f->host, "Address to bind and advertise")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port (0: any free port)")->capture_default_str();
  cmd->add_option("--model", f->model, "GGUF path or synthetic:NAME (must match the router's)")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU threads for the engine (0: one per core)")
      ->capture_default_str();
  AddEngineFlags(cmd, &f->block_size, &f->kv_cache_mb, &f->max_running, &f->max_step_tokens,
                 "Tokens per KV block (same on every worker)");
  AddDeviceFlags(cmd, &f->device);
  cmd->add_option(
         "--kv-staging-mb", f->kv_staging_mb,
         "Pinned host memory staging KV in and out of a device pool (--device cuda / cpu-guarded): a "
         "prefill worker's send buffers, a decode worker's landing slots")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option(
         "--kv-stream-chunks", f->kv_stream_chunks,
         "Prefill: send the KV of each prefill chunk (prompts over --max-step-tokens) while the next "
         "computes; false: all of it after the last chunk")
      ->capture_default_str();
  cmd->add_option("--worker-id", f->worker_id, "Worker id (default: ROLE-HOST-PID)");
  AddKvTierFlags(cmd, &f->kv_tiers);
  cmd->add_option(
         "--kv-prefetch", f->kv_prefetch,
         "With an SSD tier: promote a request's SSD blocks into DRAM when it arrives, ahead of admission")
      ->capture_default_str();
  cmd->add_option(
      "--kv-store", f->kv_store,
      "Shared KV store (tandem store) host:port: tier misses fall through to it, evicted blocks are "
      "offered to it (needs --kv-dram-bytes)");
  cmd->add_option(
         "--kv-store-transport", f->kv_store_transport,
         "How block bytes move to and from --kv-store: ucx (control over gRPC) or grpc (in the messages)")
      ->capture_default_str()
      ->check(CLI::IsMember({"ucx", "grpc"}));
  cmd->add_option(
         "--metrics-port", f->metrics_port,
         "HTTP port serving /metrics and /health; 0: any free port (printed in the ready line); -1: off")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
  AddTlsFlags(cmd, &f->tls);
  AddConfigFlags(cmd, &f->config, &f->dry_run);
}

// The flags as the worker's Options (credentials and channels made by the
// caller from the TLS flags).
worker::WorkerProcess::Options WorkerOptions(const WorkerFlags& f, const std::string& role) {
  worker::WorkerProcess::Options o;
  o.role = role == "decode" ? worker::WorkerProcess::Role::kDecode : worker::WorkerProcess::Role::kPrefill;
  o.model = f.model;
  o.host = f.host;
  o.port = f.port;
  o.worker_id = f.worker_id;
  o.device = f.device.device;
  o.cuda_fp32 = f.device.cuda_fp32;
  o.kv_dtype = f.device.kv_dtype;
  o.kv_staging_bytes = static_cast<size_t>(f.kv_staging_mb) << 20;
  o.kv_stream_chunks = f.kv_stream_chunks;
  o.threads = f.threads;
  o.block_size = f.block_size;
  o.kv_cache_bytes = static_cast<size_t>(f.kv_cache_mb) << 20;
  o.max_running = f.max_running;
  o.max_step_tokens = f.max_step_tokens;
  o.kv_dram_bytes = f.kv_tiers.dram_bytes;
  o.kv_ssd_path = f.kv_tiers.ssd_path;
  o.kv_ssd_bytes = f.kv_tiers.ssd_bytes;
  o.kv_prefetch = f.kv_prefetch;
  o.kv_store = f.kv_store;
  o.kv_store_transport = f.kv_store_transport;
  o.metrics_port = f.metrics_port;
  o.router = f.router;
  return o;
}

// The worker's ready line (keys sorted: nlohmann::json).
nlohmann::json ReadyLine(const WorkerFlags& f, const worker::WorkerProcess::Info& info) {
  return {{"role", info.role},
          {"pid", getpid()},
          {"grpc", info.address},
          {"worker_id", info.worker_id},
          {"router", f.router},
          {"tls", f.tls.enabled},
          {"model", info.model_id},
          {"kv_blocks", info.kv_blocks},
          {"kv_tiers", info.kv_tiers},
          {"kv_ssd_blocks_reopened", info.kv_ssd_blocks_reopened},
          {"kv_prefetch", info.kv_prefetch},
          {"kv_store", f.kv_store},
          {"kv_store_transport", info.kv_store_transport},
          {"device", info.device},
          {"kv_dtype", info.kv_dtype},
          {"metrics", info.metrics_port >= 0 ? absl::StrFormat("%s:%d", f.host, info.metrics_port) : ""}};
}

}  // namespace

void RegisterPrefill(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([cmd, f] {
    RunConfiguredCommand(cmd, f, "prefill", ResolveWorkerFlags,
                         [](const WorkerFlags& w) { return RunWorkerCommand(w, "prefill"); });
  });
}

void RegisterDecode(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([cmd, f] {
    RunConfiguredCommand(cmd, f, "decode", ResolveWorkerFlags,
                         [](const WorkerFlags& w) { return RunWorkerCommand(w, "decode"); });
  });
}

int RunWorkerCommand(const WorkerFlags& f, const std::string& role) {
  const std::string tag = "tandem " + role + ": ";
  TerminationSignals signals(tag);
  worker::WorkerProcess::Options options = WorkerOptions(f, role);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(f.tls);
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(f.tls, worker_common::AddFastReconnect);
  if (!credentials.ok() || !channels.ok()) {
    std::cerr << tag << (credentials.ok() ? channels.status() : credentials.status()).message() << "\n";
    return 1;
  }
  options.server_credentials = *std::move(credentials);
  options.channel_factory = *std::move(channels);
  absl::StatusOr<std::unique_ptr<worker::WorkerProcess>> worker =
      worker::WorkerProcess::Create(std::move(options));
  if (!worker.ok()) {
    std::cerr << tag << worker.status().message() << "\n";
    return 1;
  }
  PrintReadyLine(ReadyLine(f, (*worker)->info()));
  signals.Watch([w = worker->get()] { w->Stop(); });
  if (absl::Status s = (*worker)->Run(); !s.ok()) {
    std::cerr << tag << s.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace tandem::cli
