#include "worker/worker_process.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "decode_worker/decode_service.h"
#include "decode_worker/landing_area.h"
#include "engine/engine.h"
#include "engine/engine_runner.h"
#include "engine/kv_events.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "http/server.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "kvstore/block_format.h"
#include "kvstore/prefetcher.h"
#include "kvstore/store_client.h"
#include "kvstore/tiered_store.h"
#include "model/llama.h"
#include "model/loader.h"
#include "prefill_worker/prefill_service.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"
#include "worker_common/grpc_server.h"
#include "worker_common/kv_event_publisher.h"
#include "worker_common/router_set.h"
#include "worker_common/worker_status.h"

namespace tandem::worker {

using worker_common::KvEventPublisher;
using worker_common::RouterSet;
using worker_common::RunningGrpcServer;
using worker_common::StartGrpcServer;
using worker_common::ToWorkerLoad;

namespace {

// An engine behaviour that is on by default and off with NAME=0 in the
// environment (kept for A/B measurements, docs/PERFORMANCE.md).
bool TurnedOffByEnv(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::string_view(value) == "0";
}

// `status` with its message prefixed by `what` (the part that failed).
absl::Status Prefixed(const absl::Status& status, const std::string& what) {
  return absl::Status(status.code(), what + std::string(status.message()));
}

const char* RoleName(WorkerProcess::Role role) {
  return role == WorkerProcess::Role::kDecode ? "decode" : "prefill";
}

// Tier events of the DRAM and SSD tiers, as the engine's KV events (the
// router's index learns from both).
void LogTierEvent(engine::KvEventLog& log, const kvstore::TierEvent& e) {
  const engine::KvTier tier = e.tier == kvstore::Tier::kDram ? engine::KvTier::kDram : engine::KvTier::kSsd;
  for (BlockHash h : e.hashes) {
    if (e.kind == kvstore::TierEvent::Kind::kStored) {
      log.Stored(h, tier);
    } else {
      log.Removed(h, tier);
    }
  }
}

// /metrics: prefetches by who named the blocks (hint: the router's
// PrefetchHint; prompt: the worker hashed the prompt), as gauges of the
// prefetcher's running totals.
std::function<void(const kvstore::Prefetcher::Stats&)> PrefetchGauges(MetricsRegistry& r) {
  GaugeFamily* requests = r.Gauge("tandem_worker_kv_prefetch_requests",
                                  "KV prefetches queued, by who named the blocks (hint: the router; prompt: "
                                  "the worker hashed the prompt)",
                                  {"source"});
  GaugeFamily* promoted =
      r.Gauge("tandem_worker_kv_prefetch_promoted_blocks",
              "Blocks prefetch read from SSD or the shared store into DRAM, by source", {"source"});
  GaugeFamily* in_dram = r.Gauge("tandem_worker_kv_prefetch_dram_blocks",
                                 "Blocks prefetch found in DRAM already, by source", {"source"});
  Gauge* const dropped =
      r.Gauge("tandem_worker_kv_prefetch_dropped", "KV prefetches refused (queue full)")->WithLabels({});
  return [hint_requests = requests->WithLabels({"hint"}), prompt_requests = requests->WithLabels({"prompt"}),
          hint_promoted = promoted->WithLabels({"hint"}), prompt_promoted = promoted->WithLabels({"prompt"}),
          hint_dram = in_dram->WithLabels({"hint"}), prompt_dram = in_dram->WithLabels({"prompt"}),
          dropped](const kvstore::Prefetcher::Stats& s) {
    hint_requests->Set(static_cast<double>(s.hinted_requests));
    prompt_requests->Set(static_cast<double>(s.prompt_requests));
    hint_promoted->Set(static_cast<double>(s.hinted_promoted_blocks));
    prompt_promoted->Set(static_cast<double>(s.promoted_blocks - s.hinted_promoted_blocks));
    hint_dram->Set(static_cast<double>(s.hinted_dram_blocks));
    prompt_dram->Set(static_cast<double>(s.dram_blocks - s.hinted_dram_blocks));
    dropped->Set(static_cast<double>(s.dropped));
  };
}

// Prefix reuse by tier, computed prompt tokens, the bytes moved to and from
// the shared store and the KV bytes written to peers over UCX, as gauges of
// the engine's, tiers', store client's and transfer engine's running totals
// (the KV tiers' figures, docs/PERFORMANCE.md); refreshed on the engine
// thread's tick.
std::function<void(engine::Engine&)> EngineTickGauges(MetricsRegistry& r, kvstore::TieredStore* tiers,
                                                      kvstore::StoreClient* store,
                                                      transfer::TransferEngine* transfer) {
  GaugeFamily* hit_blocks = r.Gauge("tandem_worker_kv_hit_blocks",
                                    "Prompt blocks reused, by the tier they were found in", {"tier"});
  Gauge* const hits[4] = {hit_blocks->WithLabels({"hbm"}), hit_blocks->WithLabels({"dram"}),
                          hit_blocks->WithLabels({"ssd"}), hit_blocks->WithLabels({"store"})};
  Gauge* const computed =
      r.Gauge("tandem_worker_prompt_tokens_computed", "Prompt tokens computed (not reused)")->WithLabels({});
  // engine/engine_runner.h Options::preempt_prompt_steps: each costs the
  // stopped pass's computed layers (at most half a step).
  Gauge* const stopped = r.Gauge("tandem_worker_steps_stopped",
                                 "Prompt steps stopped early for a request that goes before their prompts "
                                 "(their rows computed again)")
                             ->WithLabels({});
  GaugeFamily* store_bytes =
      r.Gauge("tandem_worker_kv_store_bytes", "Block bytes fetched from and offered to the shared KV store",
              {"direction", "transport"});
  // How this worker's UCX writes (a prefill worker's KV sends to decode
  // workers; blocks offered to the shared store over UCX) moved their bytes:
  // "put" (into a peer's UCX-allocated shared segment, or over RDMA: no work
  // of the peer's CPU) or "active_message" (the peer's progress thread
  // places them). transfer/transfer_engine.h, WriteOp::kAuto.
  GaugeFamily* sent =
      r.Gauge("tandem_worker_kv_sent_bytes", "KV bytes this worker wrote to peers over UCX, by how", {"op"});
  Gauge* const sent_gauges[2] = {sent->WithLabels({"put"}), sent->WithLabels({"active_message"})};
  Gauge* const store_gauges[4] = {
      store_bytes->WithLabels({"fetch", "ucx"}), store_bytes->WithLabels({"put", "ucx"}),
      store_bytes->WithLabels({"fetch", "grpc"}), store_bytes->WithLabels({"put", "grpc"})};
  // The SSD tier's health (a full or failed device makes it read-only;
  // values that failed their checksum were dropped), only with one.
  Gauge* ssd_writable = nullptr;
  Gauge* ssd_corrupt = nullptr;
  if (tiers != nullptr && tiers->ssd() != nullptr) {
    ssd_writable = r.Gauge("tandem_kv_ssd_writable",
                           "1 while the SSD tier takes writes; 0 once a write failed on the device "
                           "(full, read-only): it then only serves what it holds")
                       ->WithLabels({});
    ssd_corrupt = r.Gauge("tandem_kv_ssd_corrupt_blocks",
                          "SSD tier values that failed verification on read (dropped, recomputed)")
                      ->WithLabels({});
    ssd_writable->Set(1);
    ssd_corrupt->Set(0);
  }
  return [hits, computed, stopped, store_gauges, sent_gauges, tiers, store, transfer, ssd_writable,
          ssd_corrupt](engine::Engine& e) {
    if (transfer != nullptr) {
      const transfer::TransferStats t = transfer->stats();
      sent_gauges[0]->Set(static_cast<double>(t.bytes_put));
      sent_gauges[1]->Set(static_cast<double>(t.bytes_active_message));
    }
    if (ssd_writable != nullptr) {
      ssd_writable->Set(tiers->ssd()->writable() ? 1 : 0);
      ssd_corrupt->Set(static_cast<double>(tiers->stats().corrupt_blocks));
    }
    if (store != nullptr) {
      const kvstore::StoreClient::Stats s = store->stats();
      store_gauges[0]->Set(static_cast<double>(s.ucx_fetch_bytes));
      store_gauges[1]->Set(static_cast<double>(s.ucx_put_bytes));
      store_gauges[2]->Set(static_cast<double>(s.grpc_fetch_bytes));
      store_gauges[3]->Set(static_cast<double>(s.grpc_put_bytes));
    }
    const engine::KvManager::Stats& kv_stats = e.kv_manager().stats();
    // KvManager counts blocks the tiers fetched from the shared store for it
    // with the SSD hits; the tiers tell them apart (blocks the prefetcher
    // fetched are DRAM hits by then).
    const int64_t store_hits = tiers != nullptr ? tiers->stats().remote_hits : 0;
    hits[0]->Set(static_cast<double>(kv_stats.hbm_hit_blocks));
    hits[1]->Set(static_cast<double>(kv_stats.dram_hit_blocks));
    hits[2]->Set(static_cast<double>(kv_stats.ssd_hit_blocks - store_hits));
    hits[3]->Set(static_cast<double>(store_hits));
    computed->Set(static_cast<double>(e.stats().prompt_tokens_computed));
    stopped->Set(static_cast<double>(e.stats().steps_stopped));
  };
}

// The engine's load as gauges, refreshed with every heartbeat.
std::function<void(const tandem::v1::WorkerLoad&)> LoadGauges(MetricsRegistry& r) {
  return
      [step_ms = r.Gauge("tandem_worker_decode_step_ms", "Recent mean engine step time with decode rows, ms")
                     ->WithLabels({}),
       batch =
           r.Gauge("tandem_worker_decode_batch", "Recent mean sequences decoded per step")->WithLabels({}),
       running = r.Gauge("tandem_worker_running", "Sequences in the running batch")->WithLabels({}),
       waiting = r.Gauge("tandem_worker_waiting", "Sequences queued for admission")->WithLabels({}),
       queued = r.Gauge("tandem_worker_queued_prefill_tokens", "Prompt tokens waiting to be computed")
                    ->WithLabels({}),
       used = r.Gauge("tandem_worker_kv_pool_used_blocks", "KV blocks in use, by tier", {"tier"})
                  ->WithLabels({"hbm"}),
       total = r.Gauge("tandem_worker_kv_pool_blocks", "KV blocks in the pool, by tier", {"tier"})
                   ->WithLabels({"hbm"})](const tandem::v1::WorkerLoad& l) {
        step_ms->Set(l.decode_step_ms());
        batch->Set(l.decode_batch());
        running->Set(l.running());
        waiting->Set(l.waiting());
        queued->Set(static_cast<double>(l.queued_prefill_tokens()));
        used->Set(l.used_blocks());
        total->Set(l.total_blocks());
      };
}

}  // namespace

struct WorkerProcess::RouterLink {
  std::unique_ptr<RouterSet> routers;
};

WorkerProcess::WorkerProcess(Options options)
    : options_(std::move(options)),
      metrics_(options_.metrics != nullptr ? *options_.metrics : DefaultMetricsRegistry()) {
  info_.role = RoleName(options_.role);
  info_.worker_id = options_.worker_id.empty()
                        ? absl::StrFormat("%s-%s-%d", info_.role, options_.host, getpid())
                        : options_.worker_id;
}

WorkerProcess::~WorkerProcess() { Shutdown(); }

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Create(Options options) {
  if (!options.channel_factory) {
    options.channel_factory = [](const std::string& target) {
      grpc::ChannelArguments args;
      worker_common::AddFastReconnect(&args);
      return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    };
  }
  auto worker = absl::WrapUnique(new WorkerProcess(std::move(options)));
  TANDEM_RETURN_IF_ERROR(worker->LoadModelAndBackend());
  TANDEM_RETURN_IF_ERROR(worker->StartTransferAndStore());
  TANDEM_RETURN_IF_ERROR(worker->BuildTiers());
  TANDEM_RETURN_IF_ERROR(worker->StartPrefetcher());
  TANDEM_RETURN_IF_ERROR(worker->StartEngine());
  TANDEM_RETURN_IF_ERROR(worker->StartServices());
  TANDEM_RETURN_IF_ERROR(worker->StartMetricsServer());
  TANDEM_RETURN_IF_ERROR(worker->JoinRouter());
  return worker;
}

absl::Status WorkerProcess::LoadModelAndBackend() {
  auto model = model::LoadModel(options_.model);
  if (!model.ok()) {
    return Prefixed(model.status(), absl::StrCat("cannot load model '", options_.model, "': "));
  }
  model_ = *std::move(model);
  info_.model_id = model_->config.model_id;
  TANDEM_ASSIGN_OR_RETURN(backend_, kernels::CreateBackend({.device = options_.device,
                                                            .num_threads = options_.threads,
                                                            .cuda_fp32 = options_.cuda_fp32}));
  info_.device = std::string(backend_->name());
  TANDEM_ASSIGN_OR_RETURN(kv_dtype_, kernels::ResolveKvDType(options_.kv_dtype, *backend_));
  info_.kv_dtype = std::string(DTypeName(kv_dtype_));
  TANDEM_ASSIGN_OR_RETURN(llama_, model::LlamaModel::Create(model_->config, model_->weights, backend_.get()));
  return absl::OkStatus();
}

absl::Status WorkerProcess::StartTransferAndStore() {
  kv_events_ = std::make_unique<engine::KvEventLog>();
  auto transfer = transfer::TransferEngine::Create({.name = info_.worker_id});
  if (!transfer.ok()) return Prefixed(transfer.status(), "transfer engine: ");
  transfer_ = *std::move(transfer);
  if (options_.kv_store.empty()) return absl::OkStatus();
  // The store client's landing slots (UCX path) are the transfer engine's.
  const model::ModelConfig& config = model_->config;
  kvstore::StoreClient::Options store_options{.model_id = config.model_id};
  if (options_.kv_store_transport == "ucx") {
    store_options.transfer = transfer_.get();
    store_options.slot_bytes = kvstore::EncodedBlockBytes(
        options_.block_size, config.KvLayoutFor(options_.block_size, kv_dtype_).BlockBytes());
  }
  auto client = kvstore::StoreClient::Create(store_options, options_.channel_factory(options_.kv_store));
  if (!client.ok()) return Prefixed(client.status(), "--kv-store: ");
  store_client_ = *std::move(client);
  info_.kv_store_transport = store_client_->transport();
  return absl::OkStatus();
}

absl::Status WorkerProcess::BuildTiers() {
  if (options_.kv_dram_bytes <= 0) {
    if (!options_.kv_ssd_path.empty()) {
      return absl::InvalidArgumentError("KV tiers: --kv-ssd-path needs --kv-dram-bytes");
    }
    return absl::OkStatus();
  }
  // The tiers report into the engine's log as tiers DRAM and SSD.
  const model::ModelConfig& config = model_->config;
  kvstore::TieredStore::Options options;
  options.model_id = config.model_id;
  options.block_tokens = options_.block_size;
  options.payload_bytes = config.KvLayoutFor(options_.block_size, kv_dtype_).BlockBytes();
  options.dram_bytes = static_cast<size_t>(options_.kv_dram_bytes);
  options.ssd_path = options_.kv_ssd_path;
  options.ssd_bytes = static_cast<size_t>(options_.kv_ssd_bytes);
  options.on_event = [log = kv_events_.get()](const kvstore::TierEvent& e) { LogTierEvent(*log, e); };
  options.remote = store_client_.get();
  auto tiers = kvstore::TieredStore::Create(options);
  if (!tiers.ok()) return Prefixed(tiers.status(), "KV tiers: ");
  tiers_ = *std::move(tiers);
  info_.kv_tiers = true;
  if (kvstore::SsdTier* ssd = tiers_->ssd(); ssd != nullptr) {
    // An unreadable SSD tier was moved aside and started empty (SsdTier
    // logged it): the worker serves, /metrics says so.
    metrics_
        .Counter("tandem_kv_ssd_quarantined_total",
                 "SSD tier directories found unreadable at start, moved aside and replaced by an empty one")
        ->WithLabels({})
        ->Increment(ssd->quarantined() ? 1 : 0);
  }
  // Blocks found on a reopened SSD tier are announced first, so the
  // router's index (and its snapshot) sees them.
  for (const auto& [hash, tier] : tiers_->Snapshot()) {
    if (tier != kvstore::Tier::kSsd) continue;
    kv_events_->Stored(hash, engine::KvTier::kSsd);
    ++info_.kv_ssd_blocks_reopened;
  }
  return absl::OkStatus();
}

absl::Status WorkerProcess::StartPrefetcher() {
  if (tiers_ == nullptr || !options_.kv_prefetch) return absl::OkStatus();
  if (tiers_->ssd() == nullptr && store_client_ == nullptr) return absl::OkStatus();  // DRAM only
  auto on_stats = PrefetchGauges(metrics_);
  on_stats({});
  auto prefetcher = kvstore::Prefetcher::Create(
      {.model_id = model_->config.model_id, .block_tokens = options_.block_size, .on_stats = on_stats},
      tiers_.get());
  if (!prefetcher.ok()) return Prefixed(prefetcher.status(), "KV prefetch: ");
  prefetcher_ = *std::move(prefetcher);
  info_.kv_prefetch = true;
  return absl::OkStatus();
}

absl::Status WorkerProcess::StartEngine() {
  TANDEM_ASSIGN_OR_RETURN(
      engine_, engine::Engine::Create(
                   {.block_size = options_.block_size,
                    .kv_cache_bytes = options_.kv_cache_bytes,
                    .kv_dtype = kv_dtype_,
                    .max_running = options_.max_running,
                    .max_step_tokens = options_.max_step_tokens > 0 ? options_.max_step_tokens
                                                                    : engine::DefaultMaxStepTokens(*backend_),
                    .kv_events = kv_events_.get(),
                    .tiers = tiers_.get()},
                   llama_.get(), backend_.get(), model_->tokenizer.get()));
  info_.kv_blocks = engine_->kv_view().num_blocks;
  engine::EngineRunner::Options runner_options;
  // A decode worker answers Reserve beside the decode step in progress
  // (host-memory pools only: its copies need no device context), so a
  // request's TTFT does not wait for a step of the whole batch. What paces
  // prefills to what the decode worker decodes is then the router's decode
  // admission (--decode-tpot-limit-ms, on by default): without it, prefills
  // outrun an overloaded decode worker and its batch grows until TPOT is
  // many times worse (docs/PERFORMANCE.md, "Sixth pass").
  // TANDEM_RESERVE_BESIDE_STEP=0 turns it off (Reserve waits for the step).
  runner_options.reserve_beside_step =
      backend_->host_accessible() && !TurnedOffByEnv("TANDEM_RESERVE_BESIDE_STEP");
  // A prompt step stops early for a request that goes before every prompt
  // in it (a light tenant's beside a heavy one's): its prefill waits for at
  // most half the step in progress (EngineRunner::Options::
  // preempt_prompt_steps; docs/PERFORMANCE.md, "Tenth pass").
  // TANDEM_PREEMPT_PROMPT_STEPS=0 turns it off.
  runner_options.preempt_prompt_steps = !TurnedOffByEnv("TANDEM_PREEMPT_PROMPT_STEPS");
  runner_options.on_tick = [this, gauges = EngineTickGauges(metrics_, tiers_.get(), store_client_.get(),
                                                            transfer_.get())](engine::Engine& e) {
    gauges(e);
    if (decode_on_engine_thread_ != nullptr) decode_on_engine_thread_->ExpireReservations(e);
    if (prefill_on_engine_thread_ != nullptr) prefill_on_engine_thread_->ExpireReservationWaits(absl::Now());
    CheckDevice();
  };
  runner_ = std::make_unique<engine::EngineRunner>(engine_.get(), runner_options);
  return absl::OkStatus();
}

void WorkerProcess::CheckDevice() {
  const absl::Status device = backend_->status();
  if (device.ok()) return;
  absl::MutexLock lock(&mu_);
  if (!device_error_.empty()) return;
  // Sticky: every later step fails too (Engine::Step checks it), so the
  // worker stops claiming to serve: /health answers 503 and the gRPC health
  // service NOT_SERVING, for the router's and Kubernetes' probes.
  device_error_ = std::string(device.message());
  LOG(ERROR) << "worker " << info_.worker_id << ": the " << backend_->name()
             << " backend failed; reporting unhealthy: " << device;
  if (grpc_server_for_health_ != nullptr)
    grpc_server_for_health_->GetHealthCheckService()->SetServingStatus(false);
}

absl::StatusOr<grpc::Service*> WorkerProcess::MakeService() {
  // Called by the services when a request arrives, before it waits for the
  // engine: never blocks (a full prefetch queue drops the prefetch). With
  // the router's hint, exactly the blocks it names (none when it names
  // none); without one, whatever the tiers hold of the hashed prompt.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
  if (prefetcher_ != nullptr) {
    on_prompt = [p = prefetcher_.get()](absl::Span<const int32_t> tokens,
                                        const tandem::v1::PrefetchHint* hint) {
      if (hint == nullptr) {
        (void)p->Enqueue(tokens);
      } else if (hint->block_hashes_size() > 0) {
        (void)p->EnqueueHashes(absl::MakeConstSpan(hint->block_hashes().data(), hint->block_hashes_size()),
                               hint->first_block(), tokens);
      }
    };
  }
  const kernels::KvCacheView& kv = engine_->kv_view();
  const size_t block_bytes = kv.layout.BlockBytes();
  const int32_t staging_blocks = static_cast<int32_t>(
      std::clamp<size_t>(options_.kv_staging_bytes / block_bytes, 1, static_cast<size_t>(kv.num_blocks)));
  if (options_.role == Role::kPrefill) {
    // Each sending thread stages its share of the staging memory.
    prefill_worker::PrefillServiceOptions prefill{.worker_id = info_.worker_id,
                                                  .model_id = info_.model_id,
                                                  .block_size = options_.block_size,
                                                  .block_bytes = block_bytes,
                                                  .kv_base = static_cast<const uint8_t*>(kv.base),
                                                  .backend = backend_.get(),
                                                  .on_prompt = on_prompt};
    prefill.staging_blocks = std::max(1, staging_blocks / prefill.send_threads);
    prefill.stream_kv = options_.kv_stream_chunks;
    prefill_service_ =
        std::make_unique<prefill_worker::PrefillService>(prefill, runner_.get(), transfer_.get());
    return prefill_service_.get();
  }
  decode_worker::DecodeServiceOptions decode{.worker_id = info_.worker_id,
                                             .model_id = info_.model_id,
                                             .kv_base = static_cast<uint8_t*>(kv.base),
                                             .ucx_worker_address = transfer_->worker_address(),
                                             .block_size = options_.block_size,
                                             .block_bytes = block_bytes,
                                             .on_prompt = on_prompt};
  if (backend_->host_accessible()) {
    // Prefill workers write prompts' KV straight into this pool over UCX.
    auto region = transfer_->Register(kv.base, static_cast<size_t>(kv.num_blocks) * block_bytes,
                                      transfer::MemoryKind::kHost);
    if (!region.ok()) return Prefixed(region.status(), "cannot register the KV pool: ");
    decode.kv_region = *region;
  } else {
    // ... or into pinned landing slots, copied into the pool before Activate.
    auto landing =
        decode_worker::LandingArea::Create(backend_.get(), transfer_.get(), block_bytes, staging_blocks);
    if (!landing.ok()) return Prefixed(landing.status(), "KV landing slots: ");
    landing_ = *std::move(landing);
    decode.landing = landing_.get();
  }
  decode_service_ =
      std::make_unique<decode_worker::DecodeService>(decode, runner_.get(), model_->tokenizer.get());
  return decode_service_.get();
}

absl::Status WorkerProcess::StartServices() {
  TANDEM_ASSIGN_OR_RETURN(grpc::Service * service, MakeService());
  // The engine thread's tick expires the decode service's reservations and
  // the prefill service's waits for one from now on (the pointers are only
  // touched on that thread).
  TANDEM_RETURN_IF_ERROR(runner_->Run(
      [this](engine::Engine&) {
        decode_on_engine_thread_ = decode_service_.get();
        prefill_on_engine_thread_ = prefill_service_.get();
        return absl::OkStatus();
      },
      absl::Now() + absl::Seconds(10)));
  snapshot_service_ = std::make_unique<KvSnapshotService>(
      kv_events_.get(), info_.worker_id, [runner = runner_.get()] { return ToWorkerLoad(runner->load()); });
  TANDEM_ASSIGN_OR_RETURN(RunningGrpcServer server,
                          StartGrpcServer({.host = options_.host,
                                           .port = options_.port,
                                           .credentials = options_.server_credentials,
                                           .interceptors = options_.server_interceptors},
                                          {service, snapshot_service_.get()}));
  grpc_server_ = std::move(server.server);
  {
    absl::MutexLock lock(&mu_);
    grpc_server_for_health_ = grpc_server_.get();
  }
  info_.grpc_port = server.port;
  info_.address = server.address;
  return absl::OkStatus();
}

absl::Status WorkerProcess::StartMetricsServer() {
  if (options_.metrics_port < 0) return absl::OkStatus();
  auto server = http::Server::Create({.host = options_.host, .port = options_.metrics_port});
  if (!server.ok()) return Prefixed(server.status(), "metrics: ");
  metrics_server_ = *std::move(server);
  metrics_server_->Handle(
      "GET", "/metrics",
      [&metrics = metrics_](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
        w->Send({.status = 200,
                 .content_type = "text/plain; version=0.0.4; charset=utf-8",
                 .body = metrics.RenderPrometheus()});
      });
  metrics_server_->Handle(
      "GET", "/health", [this](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
        std::string failed;
        {
          absl::MutexLock lock(&mu_);
          failed = device_error_;
        }
        if (failed.empty()) {
          w->Send({.status = 200, .content_type = "text/plain", .body = "ok\n"});
        } else {
          w->Send({.status = 503, .content_type = "text/plain", .body = "device failed: " + failed + "\n"});
        }
      });
  // Ready: serving, with the caches' state as detail (a read-only or
  // quarantined SSD tier degrades the worker, it does not stop it).
  metrics_server_->Handle(
      "GET", "/ready", [this](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
        std::string failed;
        {
          absl::MutexLock lock(&mu_);
          failed = device_error_;
        }
        std::string body = failed.empty() ? "ready\n" : "not ready: device failed: " + failed + "\n";
        if (tiers_ != nullptr && tiers_->ssd() != nullptr) body += tiers_->ssd()->HealthDetail() + "\n";
        w->Send(
            {.status = failed.empty() ? 200 : 503, .content_type = "text/plain", .body = std::move(body)});
      });
  if (absl::Status s = metrics_server_->Start(); !s.ok()) return Prefixed(s, "metrics: ");
  info_.metrics_port = metrics_server_->port();
  return absl::OkStatus();
}

absl::Status WorkerProcess::JoinRouter() {
  if (options_.router.empty()) return absl::OkStatus();
  tandem::v1::RegisterRequest reg;
  reg.set_worker_id(info_.worker_id);
  reg.set_role(options_.role == Role::kDecode ? tandem::v1::WORKER_ROLE_DECODE
                                              : tandem::v1::WORKER_ROLE_PREFILL);
  reg.set_address(info_.address);
  reg.set_model_id(info_.model_id);
  reg.set_block_size(options_.block_size);
  router_link_ = std::make_unique<RouterLink>();
  // Every router replica named (a list, or a DNS name standing for several)
  // gets the registration, heartbeats and KV events.
  router_link_->routers = std::make_unique<RouterSet>(
      RouterSet::Options{
          .routers = options_.router,
          .channel_factory = options_.channel_factory,
          .membership = {.registration = reg,
                         .load = [runner = runner_.get()] { return ToWorkerLoad(runner->load()); },
                         .on_heartbeat = LoadGauges(metrics_)}},
      kv_events_.get());
  if (absl::Status started = router_link_->routers->Start(); !started.ok()) return started;
  // Registration retries until some router answers (30 s).
  if (grpc::Status registered = router_link_->routers->AwaitRegistration(absl::Seconds(30));
      !registered.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot register with router ", options_.router, ": ", registered.error_message()));
  }
  return absl::OkStatus();
}

absl::Status WorkerProcess::Run() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&stop_requested_));
  }
  Shutdown();
  return absl::OkStatus();
}

void WorkerProcess::Stop() {
  absl::MutexLock lock(&mu_);
  stop_requested_ = true;
}

void WorkerProcess::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (router_link_ != nullptr) router_link_->routers->Stop();
  if (metrics_server_ != nullptr) metrics_server_->Shutdown(absl::Now() + absl::Seconds(1));
  if (grpc_server_ != nullptr) grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  if (runner_ != nullptr) runner_->Stop();
}

}  // namespace tandem::worker
