#include "cli/server_commands.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "decode_worker/decode_service.h"
#include "engine/engine.h"
#include "engine/engine_runner.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"
#include "prefill_worker/prefill_service.h"
#include "router/router_service.h"
#include "router/worker_registry.h"
#include "transfer/transfer_engine.h"

namespace tandem::cli {
namespace {

// SIGINT/SIGTERM are blocked in every thread (the mask is inherited by
// threads started later) and taken synchronously by WaitForTermination.
sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int WaitForTermination(const sigset_t& set) {
  for (;;) {
    timespec timeout{1, 0};  // wake every second so the wait has a bound
    const int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig > 0) return sig;
  }
}

void PrintReady(const nlohmann::json& line) {
  std::cout << line.dump() << std::endl;  // endl: flush, `tandem up` is reading
}

std::unique_ptr<grpc::Server> StartServer(const std::string& host, int32_t port,
                                          const std::vector<grpc::Service*>& services,
                                          int* bound_port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrFormat("%s:%d", host, port), grpc::InsecureServerCredentials(),
                           bound_port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server != nullptr) server->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

}  // namespace

void RegisterRouter(CLI::App* cmd, RouterFlags* f) {
  cmd->add_option("--host", f->host, "Address to bind")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port (0: any free port)")->capture_default_str();
  cmd->add_option("--model", f->model, "Model the cluster serves (GGUF path or synthetic:NAME)")
      ->capture_default_str();
  cmd->add_option("--heartbeat-ms", f->heartbeat_ms, "Worker heartbeat interval")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--heartbeat-misses", f->heartbeat_misses,
                  "Heartbeats a worker may miss before it leaves the rotation")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--policy", f->policy, "Routing policy")
      ->capture_default_str()
      ->check(CLI::IsMember({"round_robin"}));
  cmd->callback([f] {
    const int code = RunRouter(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

static void AddWorkerFlags(CLI::App* cmd, WorkerFlags* f) {
  cmd->add_option("--router", f->router, "Router's gRPC address (host:port)")->capture_default_str();
  cmd->add_option("--host", f->host, "Address to bind and advertise")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port (0: any free port)")->capture_default_str();
  cmd->add_option("--model", f->model, "GGUF path or synthetic:NAME (must match the router's)")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU threads for the engine (0: one per core)")
      ->capture_default_str();
  cmd->add_option("--block-size", f->block_size, "Tokens per KV block (same on every worker)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-cache-mb", f->kv_cache_mb, "KV cache size in MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-running", f->max_running, "Most sequences in the running batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-step-tokens", f->max_step_tokens, "Most tokens in one forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--worker-id", f->worker_id, "Worker id (default: ROLE-HOST-PID)");
}

void RegisterPrefill(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([f] {
    const int code = RunWorker(*f, "prefill");
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

void RegisterDecode(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([f] {
    const int code = RunWorker(*f, "decode");
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

int RunRouter(const RouterFlags& f) {
  const sigset_t signals = BlockTerminationSignals();
  auto model = model::LoadModel(f.model);
  if (!model.ok()) {
    std::cerr << "tandem router: cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  router::WorkerRegistry registry({.heartbeat_interval = absl::Milliseconds(f.heartbeat_ms),
                                   .misses_allowed = f.heartbeat_misses,
                                   .model_id = (*model)->config.model_id});
  router::GenerateService generate({}, model->get(), &registry);
  router::RegistryService registry_service(&registry);
  int port = 0;
  std::unique_ptr<grpc::Server> server = StartServer(f.host, f.port, {&generate, &registry_service}, &port);
  if (server == nullptr || port == 0) {
    std::cerr << "tandem router: cannot listen on " << f.host << ":" << f.port << "\n";
    return 1;
  }
  PrintReady({{"role", "router"},
              {"pid", getpid()},
              {"grpc", absl::StrFormat("%s:%d", f.host, port)},
              {"model", (*model)->config.model_id}});
  const int sig = WaitForTermination(signals);
  std::cerr << "tandem router: signal " << sig << ", shutting down\n";
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  return 0;
}

int RunWorker(const WorkerFlags& f, const std::string& role) {
  const sigset_t signals = BlockTerminationSignals();
  const std::string tag = "tandem " + role + ": ";
  auto model = model::LoadModel(f.model);
  if (!model.ok()) {
    std::cerr << tag << "cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  const model::ModelConfig& config = (*model)->config;
  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend({.num_threads = f.threads});
  auto llama = model::LlamaModel::Create(config, (*model)->weights, backend.get());
  if (!llama.ok()) {
    std::cerr << tag << llama.status().message() << "\n";
    return 1;
  }
  auto engine = engine::Engine::Create({.block_size = f.block_size,
                                        .kv_cache_bytes = static_cast<size_t>(f.kv_cache_mb) << 20,
                                        .max_running = f.max_running,
                                        .max_step_tokens = f.max_step_tokens},
                                       llama->get(), backend.get(), (*model)->tokenizer.get());
  if (!engine.ok()) {
    std::cerr << tag << engine.status().message() << "\n";
    return 1;
  }
  const std::string worker_id =
      f.worker_id.empty() ? absl::StrFormat("%s-%s-%d", role, f.host, getpid()) : f.worker_id;
  auto transfer = transfer::TransferEngine::Create({.name = worker_id});
  if (!transfer.ok()) {
    std::cerr << tag << "transfer engine: " << transfer.status().message() << "\n";
    return 1;
  }
  const kernels::KvCacheView& kv = (*engine)->kv_view();
  const size_t pool_bytes = static_cast<size_t>(kv.num_blocks) * kv.layout.BlockBytes();

  std::unique_ptr<decode_worker::DecodeService> decode_service;
  std::unique_ptr<prefill_worker::PrefillService> prefill_service;
  engine::EngineRunner::Options runner_options;
  decode_worker::DecodeService* decode_raw = nullptr;
  runner_options.on_tick = [&decode_raw](engine::Engine& e) {
    if (decode_raw != nullptr) decode_raw->ExpireReservations(e);
  };
  // The runner comes first (the services borrow it); its tick reaches the
  // decode service through decode_raw, which is only read and written on the
  // engine thread (written by the command below).
  auto runner = std::make_unique<engine::EngineRunner>(engine->get(), runner_options);
  grpc::Service* service = nullptr;
  if (role == "decode") {
    auto region = (*transfer)->Register(kv.base, pool_bytes, transfer::MemoryKind::kHost);
    if (!region.ok()) {
      std::cerr << tag << "cannot register the KV pool: " << region.status().message() << "\n";
      return 1;
    }
    decode_service = std::make_unique<decode_worker::DecodeService>(
        decode_worker::DecodeServiceOptions{.worker_id = worker_id,
                                            .model_id = config.model_id,
                                            .kv_region = *region,
                                            .ucx_worker_address = (*transfer)->worker_address(),
                                            .block_size = f.block_size,
                                            .block_bytes = kv.layout.BlockBytes()},
        runner.get(), (*model)->tokenizer.get());
    service = decode_service.get();
  } else {
    prefill_service = std::make_unique<prefill_worker::PrefillService>(
        prefill_worker::PrefillServiceOptions{.worker_id = worker_id,
                                              .model_id = config.model_id,
                                              .block_size = f.block_size,
                                              .block_bytes = kv.layout.BlockBytes(),
                                              .kv_base = reinterpret_cast<const uint8_t*>(kv.base)},
        runner.get(), transfer->get());
    service = prefill_service.get();
  }
  (void)runner->Run(
      [&](engine::Engine&) {
        decode_raw = decode_service.get();
        return absl::OkStatus();
      },
      absl::Now() + absl::Seconds(10));

  int port = 0;
  std::unique_ptr<grpc::Server> server = StartServer(f.host, f.port, {service}, &port);
  if (server == nullptr || port == 0) {
    std::cerr << tag << "cannot listen on " << f.host << ":" << f.port << "\n";
    return 1;
  }
  const std::string address = absl::StrFormat("%s:%d", f.host, port);

  // Register with the router (retrying until it answers), then heartbeat.
  auto channel = grpc::CreateChannel(f.router, grpc::InsecureChannelCredentials());
  auto registry = tandem::v1::WorkerRegistry::NewStub(channel);
  auto load_proto = [&] {
    const engine::EngineLoad l = runner->load();
    tandem::v1::WorkerLoad p;
    p.set_running(l.running);
    p.set_waiting(l.waiting);
    p.set_free_blocks(l.free_blocks);
    p.set_total_blocks(l.total_blocks);
    p.set_used_blocks(l.used_blocks);
    p.set_queued_prefill_tokens(l.queued_prefill_tokens);
    return p;
  };
  tandem::v1::RegisterRequest reg;
  reg.set_worker_id(worker_id);
  reg.set_role(role == "decode" ? tandem::v1::WORKER_ROLE_DECODE : tandem::v1::WORKER_ROLE_PREFILL);
  reg.set_address(address);
  reg.set_model_id(config.model_id);
  reg.set_block_size(f.block_size);
  auto do_register = [&]() -> grpc::Status {
    *reg.mutable_load() = load_proto();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    ctx.set_wait_for_ready(true);
    tandem::v1::RegisterResponse resp;
    return registry->Register(&ctx, reg, &resp);
  };
  const absl::Time register_deadline = absl::Now() + absl::Seconds(30);
  grpc::Status registered = do_register();
  while (!registered.ok() && registered.error_code() != grpc::StatusCode::INVALID_ARGUMENT &&
         absl::Now() < register_deadline) {
    registered = do_register();
  }
  if (!registered.ok()) {
    std::cerr << tag << "cannot register with router " << f.router << ": " << registered.error_message() << "\n";
    server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return 1;
  }
  absl::Notification stop_heartbeat;
  std::thread heartbeat([&] {
    const absl::Duration interval = absl::Milliseconds(250);
    while (!stop_heartbeat.WaitForNotificationWithTimeout(interval)) {
      tandem::v1::HeartbeatRequest hb;
      hb.set_worker_id(worker_id);
      *hb.mutable_load() = load_proto();
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
      tandem::v1::HeartbeatResponse resp;
      grpc::Status s = registry->Heartbeat(&ctx, hb, &resp);
      if (s.ok() && !resp.known()) (void)do_register();  // the router restarted
    }
  });

  PrintReady({{"role", role},
              {"pid", getpid()},
              {"grpc", address},
              {"worker_id", worker_id},
              {"router", f.router},
              {"model", config.model_id},
              {"kv_blocks", kv.num_blocks}});
  const int sig = WaitForTermination(signals);
  std::cerr << tag << "signal " << sig << ", shutting down\n";
  stop_heartbeat.Notify();
  heartbeat.join();
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  runner->Stop();
  return 0;
}

}  // namespace tandem::cli
