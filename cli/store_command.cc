#include "cli/store_command.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "cli/config_merge.h"
#include "cli/process.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "engine/kv_events.h"
#include "grpcpp/security/server_credentials.h"
#include "http/server.h"
#include "kvstore/store_service.h"
#include "kvstore/tiered_store.h"
#include "model/model_info.h"
#include "proto/grpc_status.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"
#include "worker_common/grpc_server.h"
#include "worker_common/router_set.h"

namespace tandem::cli {
namespace {

constexpr const char* kTag = "tandem store: ";

// The workers' KV element type (--kv-dtype; the flag's check admits only these).
DType StoreKvDType(const StoreFlags& f) {
  return f.kv_dtype == "bf16" ? DType::kBF16 : f.kv_dtype == "f16" ? DType::kF16 : DType::kF32;
}

// The store's tiers, reporting into `kv_events` as tiers DRAM and SSD; their
// DRAM pool is registered with `transfer` (may be null: gRPC bytes only).
absl::StatusOr<std::unique_ptr<kvstore::TieredStore>> CreateTiers(const StoreFlags& f,
                                                                  const model::ModelConfig& config,
                                                                  transfer::TransferEngine* transfer,
                                                                  engine::KvEventLog* kv_events) {
  kvstore::TieredStore::Options options;
  options.model_id = config.model_id;
  options.block_tokens = f.block_size;
  options.payload_bytes = config.KvLayoutFor(f.block_size, StoreKvDType(f)).BlockBytes();
  options.dram_bytes = static_cast<size_t>(f.dram_bytes);
  options.ssd_path = f.ssd_path;
  options.ssd_bytes = static_cast<size_t>(f.ssd_bytes);
  options.transfer = transfer;
  options.on_event = [kv_events](const kvstore::TierEvent& e) {
    const engine::KvTier tier = e.tier == kvstore::Tier::kDram ? engine::KvTier::kDram : engine::KvTier::kSsd;
    for (BlockHash h : e.hashes) {
      if (e.kind == kvstore::TierEvent::Kind::kStored) {
        kv_events->Stored(h, tier);
      } else {
        kv_events->Removed(h, tier);
      }
    }
  };
  return kvstore::TieredStore::Create(options);
}

// Announces the blocks found on a reopened SSD tier; how many.
int64_t AnnounceReopenedBlocks(const kvstore::TieredStore& store, engine::KvEventLog* kv_events) {
  int64_t reopened = 0;
  for (const auto& [hash, tier] : store.Snapshot()) {
    if (tier != kvstore::Tier::kSsd) continue;
    kv_events->Stored(hash, engine::KvTier::kSsd);
    ++reopened;
  }
  return reopened;
}

// The store's "load": its DRAM slots as blocks (it never runs sequences).
std::function<tandem::v1::WorkerLoad()> DramLoad(const kvstore::DramTier* dram) {
  return [dram] {
    const int64_t dram_blocks = static_cast<int64_t>(dram->num_slots());
    tandem::v1::WorkerLoad l;
    const int64_t used = static_cast<int64_t>(dram->used_bytes() / dram->slot_bytes());
    l.set_total_blocks(static_cast<int32_t>(std::min<int64_t>(dram_blocks, INT32_MAX)));
    l.set_free_blocks(static_cast<int32_t>(std::clamp<int64_t>(dram_blocks - used, 0, INT32_MAX)));
    return l;
  };
}

tandem::v1::RegisterRequest Registration(const StoreFlags& f, const std::string& store_id,
                                         const std::string& address, const model::ModelConfig& config) {
  tandem::v1::RegisterRequest reg;
  reg.set_worker_id(store_id);
  reg.set_role(tandem::v1::WORKER_ROLE_STORE);
  reg.set_address(address);
  reg.set_model_id(config.model_id);
  reg.set_block_size(f.block_size);
  return reg;
}

// The store's /metrics (read from the tiers at each scrape), /health and
// /ready on --metrics-port. A degraded SSD tier (read-only after a device
// error, quarantined at start) keeps the store ready: /ready says so in its
// detail, and /metrics counts it.
absl::StatusOr<std::unique_ptr<http::Server>> StartStoreHttp(const StoreFlags& f, kvstore::TieredStore* store,
                                                             MetricsRegistry* metrics) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<http::Server> server,
                          http::Server::Create({.host = f.host, .port = f.metrics_port}));
  Gauge* dram_bytes =
      metrics->Gauge("tandem_store_dram_used_bytes", "Bytes of blocks in the DRAM tier")->WithLabels({});
  Gauge* ssd_blocks = metrics->Gauge("tandem_store_ssd_blocks", "Blocks in the SSD tier")->WithLabels({});
  Gauge* writable = metrics
                        ->Gauge("tandem_kv_ssd_writable",
                                "1 while the SSD tier takes writes; 0 once a write failed on the device "
                                "(full, read-only): it then only serves what it holds")
                        ->WithLabels({});
  Gauge* corrupt = metrics
                       ->Gauge("tandem_kv_ssd_corrupt_blocks",
                               "SSD tier values that failed verification on read (dropped)")
                       ->WithLabels({});
  Counter* quarantined =
      metrics
          ->Counter(
              "tandem_kv_ssd_quarantined_total",
              "SSD tier directories found unreadable at start, moved aside and replaced by an empty one")
          ->WithLabels({});
  if (store->ssd() != nullptr && store->ssd()->quarantined()) quarantined->Increment();
  server->Handle("GET", "/metrics", [=](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    dram_bytes->Set(static_cast<double>(store->dram().used_bytes()));
    if (kvstore::SsdTier* ssd = store->ssd(); ssd != nullptr) {
      ssd_blocks->Set(static_cast<double>(ssd->num_blocks()));
      writable->Set(ssd->writable() ? 1 : 0);
      corrupt->Set(static_cast<double>(store->stats().corrupt_blocks));
    }
    w->Send({.status = 200,
             .content_type = "text/plain; version=0.0.4; charset=utf-8",
             .body = metrics->RenderPrometheus()});
  });
  server->Handle("GET", "/health", [](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    w->Send({.status = 200, .content_type = "text/plain", .body = "ok\n"});
  });
  server->Handle("GET", "/ready", [store](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
    std::string body = "ready\n";
    if (store->ssd() != nullptr) body += store->ssd()->HealthDetail() + "\n";
    w->Send({.status = 200, .content_type = "text/plain", .body = std::move(body)});
  });
  TANDEM_RETURN_IF_ERROR(server->Start());
  return server;
}

}  // namespace

void RegisterStore(CLI::App* cmd, StoreFlags* f) {
  cmd->add_option("--router", f->router,
                  "Router replicas' gRPC addresses: host:port, a comma-separated list, or a DNS name "
                  "standing for all its addresses (re-resolved every 5 s); each gets the registration, "
                  "heartbeats and KV events")
      ->capture_default_str();
  cmd->add_option("--host", f->host, "Address to bind and advertise")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--model", f->model, "GGUF path or synthetic:NAME (must match the workers')")
      ->capture_default_str();
  cmd->add_option("--block-size", f->block_size, "Tokens per KV block (the workers')")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-dtype", f->kv_dtype, "KV element type (the workers'): f32, bf16 or f16")
      ->capture_default_str()
      ->envname("TANDEM_KV_DTYPE")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  cmd->add_option("--dram-bytes", f->dram_bytes, "DRAM tier budget in bytes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ssd-path", f->ssd_path, "RocksDB directory of the SSD tier; empty = DRAM only");
  cmd->add_option("--ssd-bytes", f->ssd_bytes, "SSD tier budget in bytes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--store-id", f->store_id, "Id registered with the router (default: store-HOST-PID)");
  cmd->add_option("--ucx", f->ucx,
                  "Serve the UCX data path (block bytes over UCX, control over gRPC); false: gRPC bytes only")
      ->capture_default_str();
  cmd->add_option("--staging-bytes", f->staging_bytes, "Registered staging memory for workers' UCX puts")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--metrics-port", f->metrics_port,
                  "HTTP port for /metrics, /health and /ready (0: any free port; -1: off)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
  AddTlsFlags(cmd, &f->tls);
  AddConfigFlags(cmd, &f->config, &f->dry_run);
  cmd->callback([cmd, f] { RunConfiguredCommand(cmd, f, "store", ResolveStoreFlags, RunStore); });
}

int RunStore(const StoreFlags& f) {
  TerminationSignals signals(kTag);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(f.tls);
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(f.tls, worker_common::AddFastReconnect);
  if (!credentials.ok() || !channels.ok()) {
    std::cerr << kTag << (credentials.ok() ? channels.status() : credentials.status()).message() << "\n";
    return 1;
  }
  // The store needs the model's id and KV geometry only: no weights.
  auto model = model::LoadModelInfo(f.model);
  if (!model.ok()) {
    std::cerr << kTag << "cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  const model::ModelConfig& config = (*model)->config;
  const std::string store_id =
      f.store_id.empty() ? absl::StrFormat("store-%s-%d", f.host, getpid()) : f.store_id;

  // The transfer engine outlives the tiers (their DRAM pool is registered
  // with it, so the pool is UCX memory) and the service (staging region).
  std::unique_ptr<transfer::TransferEngine> transfer;
  if (f.ucx) {
    auto created = transfer::TransferEngine::Create({.name = store_id});
    if (!created.ok()) {
      std::cerr << kTag << "transfer engine: " << created.status().message() << "\n";
      return 1;
    }
    transfer = std::move(*created);
  }
  engine::KvEventLog kv_events;  // before the store, which reports into it until destroyed
  auto store = CreateTiers(f, config, transfer.get(), &kv_events);
  if (!store.ok()) {
    std::cerr << kTag << store.status().message() << "\n";
    return 1;
  }
  const int64_t reopened = AnnounceReopenedBlocks(**store, &kv_events);
  const auto load = DramLoad(&(*store)->dram());
  auto service = kvstore::StoreService::Create({.model_id = config.model_id,
                                                .transfer = transfer.get(),
                                                .staging_bytes = static_cast<size_t>(f.staging_bytes)},
                                               store->get());
  if (!service.ok()) {
    std::cerr << kTag << service.status().message() << "\n";
    return 1;
  }
  worker_common::KvSnapshotService snapshot_service(&kv_events, store_id, load);
  MetricsRegistry metrics;  // outlives the HTTP server that renders it
  std::unique_ptr<http::Server> http;
  if (f.metrics_port >= 0) {
    auto started = StartStoreHttp(f, store->get(), &metrics);
    if (!started.ok()) {
      std::cerr << kTag << "metrics: " << started.status().message() << "\n";
      return 1;
    }
    http = *std::move(started);
  }
  auto server = worker_common::StartGrpcServer(
      {.host = f.host, .port = f.port, .credentials = *credentials, .max_message_bytes = 256 << 20},
      {service->get(), &snapshot_service});
  if (!server.ok()) {
    std::cerr << kTag << server.status().message() << "\n";
    return 1;
  }

  // Register with every router replica named (retrying until one answers),
  // publish events, heartbeat.
  worker_common::RouterSet routers(
      {.routers = f.router,
       .channel_factory = *channels,
       .membership = {.registration = Registration(f, store_id, server->address, config), .load = load}},
      &kv_events);
  absl::Status joined = routers.Start();
  if (joined.ok()) joined = FromGrpc(routers.AwaitRegistration(absl::Seconds(30)));
  if (!joined.ok()) {
    std::cerr << kTag << "cannot register with router " << f.router << ": " << joined.message() << "\n";
    routers.Stop();
    server->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return 1;
  }

  PrintReadyLine({{"role", "store"},
                  {"pid", getpid()},
                  {"grpc", server->address},
                  {"worker_id", store_id},
                  {"router", f.router},
                  {"model", config.model_id},
                  {"dram_blocks", static_cast<int64_t>((*store)->dram().num_slots())},
                  {"ssd", !f.ssd_path.empty()},
                  {"transport", transfer != nullptr ? "ucx" : "grpc"},
                  {"ssd_blocks_reopened", reopened},
                  {"metrics", http != nullptr ? absl::StrFormat("%s:%d", f.host, http->port()) : ""}});
  signals.WaitForSignal();
  routers.Stop();
  server->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  return 0;
}

}  // namespace tandem::cli
