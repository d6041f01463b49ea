#include "cli/router_command.h"

#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/config_merge.h"
#include "cli/process.h"
#include "grpcpp/security/server_credentials.h"
#include "http/server.h"
#include "model/model_info.h"
#include "router/openai_front.h"
#include "router/placement.h"
#include "router/router_core.h"
#include "router/router_service.h"
#include "router/worker_registry.h"
#include "worker_common/grpc_server.h"

namespace tandem::cli {
namespace {

constexpr const char* kTag = "tandem router: ";

// The HTTP server on host:port with the OpenAI error shape for its own
// errors; null (after a message) if it cannot listen.
std::unique_ptr<http::Server> StartHttp(const std::string& host, int32_t port, router::OpenAiFront* front) {
  auto server = http::Server::Create(
      {.host = host, .port = port, .error_response = &router::OpenAiFront::ErrorResponse});
  if (!server.ok()) {
    std::cerr << kTag << "http: " << server.status().message() << "\n";
    return nullptr;
  }
  front->Register(server->get());
  if (absl::Status s = (*server)->Start(); !s.ok()) {
    std::cerr << kTag << "http: " << s.message() << "\n";
    return nullptr;
  }
  return *std::move(server);
}

router::RouterOptions MakeRouterOptions(const RouterFlags& f) {
  router::RouterOptions options;
  options.placement.policy = *router::ParsePolicy(f.policy);  // validated by ResolveRouterFlags
  options.placement.default_ttft_slo_ms = f.slo_ttft_ms;
  options.placement.default_tpot_slo_ms = f.slo_tpot_ms;
  options.placement.aggregate_max_uncached_tokens = f.aggregate_max_uncached_tokens;
  options.placement.aggregate_when_queue_ms = f.aggregate_when_queue_ms;
  options.max_queued_prefills_per_worker = f.max_queued_prefills;
  options.stream_stall_timeout = absl::Milliseconds(f.stream_stall_timeout_ms);
  options.stream_stall_steps = f.stream_stall_steps;
  options.stalled_worker_hold = absl::Milliseconds(f.stalled_worker_hold_ms);
  options.max_migrations = f.max_migrations;
  options.max_inflight_prefills_per_worker = f.max_inflight_prefills;
  options.queue_ttl = absl::Milliseconds(f.queue_ttl_ms);
  options.decode_tpot_limit_ms = f.decode_tpot_limit_ms;
  // Reserve while the prompt computes (RouterOptions::reserve_during_prefill);
  // only for comparing against the old order, hence no flag.
  if (const char* before = std::getenv("TANDEM_RESERVE_BEFORE_PREFILL"); before != nullptr) {
    options.reserve_during_prefill = std::string_view(before) != "1";
  }
  options.tenant_weights = *ParseTenantWeights(f.tenant_weights);  // validated by ResolveRouterFlags
  return options;
}

// The HTTP API's options: keys from --api-key and TANDEM_API_KEYS; chat
// rendered with the model's template when it has one that parses, else
// ChatML (router/README.md); rendered prompts are tokenized here with
// special tokens parsed and no BOS added (the template writes it if the
// model wants it).
router::OpenAiFrontOptions MakeFrontOptions(const RouterFlags& f, const model::ModelInfo& model,
                                            router::WorkerRegistry* registry) {
  std::vector<std::string> api_keys = f.api_keys;
  if (const char* env = std::getenv("TANDEM_API_KEYS"); env != nullptr) {
    for (absl::string_view k : absl::StrSplit(env, ',', absl::SkipWhitespace())) api_keys.emplace_back(k);
  }
  router::OpenAiFrontOptions options{
      .model_name = model.config.model_id,
      .model_aliases = {f.model},
      .api_keys = api_keys,
      .ready = [registry] { return registry->HasHealthy(tandem::v1::WORKER_ROLE_DECODE); }};
  const model::Tokenizer* tokenizer = model.tokenizer.get();
  router::ChatRenderer chat = router::MakeChatRenderer(model.chat_template, tokenizer);
  if (chat.model_template) {
    std::cerr << kTag << "chat template: the model's own\n";
  } else if (!chat.template_error.ok()) {
    std::cerr << kTag << "warning: the model's chat template does not parse ("
              << chat.template_error.message() << "); using the default (ChatML)\n";
  } else {
    std::cerr << kTag << "chat template: the default (ChatML); the model has none\n";
  }
  options.render_chat = std::move(chat.render);
  options.tokenizer = tokenizer;
  return options;
}

}  // namespace

void RegisterRouter(CLI::App* cmd, RouterFlags* f) {
  cmd->add_option("--http-port", f->http_port,
                  "OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /metrics) port; "
                  "0: any free port (printed in the ready line); -1: off")
      ->capture_default_str()
      ->check(CLI::Range(-1, 65535));
  cmd->add_option(
      "--api-key", f->api_keys,
      "Bearer key accepted on the HTTP API's /v1/* (repeatable; also TANDEM_API_KEYS, comma-separated)");
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
  cmd->add_option("--policy", f->policy,
                  "Routing policy: kv (KV-aware cost model), round_robin, least_loaded, random")
      ->capture_default_str()
      ->check(CLI::IsMember({"kv", "round_robin", "least_loaded", "random"}));
  cmd->add_option(
         "--slo-ttft-ms", f->slo_ttft_ms,
         "Default TTFT target (ms) for requests that set none; predicted misses are rejected (0: none)")
      ->capture_default_str();
  cmd->add_option("--slo-tpot-ms", f->slo_tpot_ms, "Default TPOT target (ms) likewise (0: none)")
      ->capture_default_str();
  cmd->add_option("--aggregate-max-uncached-tokens", f->aggregate_max_uncached_tokens,
                  "kv policy: the decode worker prefills by itself when at most this many prompt tokens are "
                  "uncached there (-1: never)")
      ->capture_default_str();
  cmd->add_option("--aggregate-when-queue-ms", f->aggregate_when_queue_ms,
                  "kv policy: ...or when every prefill worker's predicted queue exceeds this (ms; 0: off)")
      ->capture_default_str();
  cmd->add_option(
         "--max-queued-prefills", f->max_queued_prefills,
         "Requests waiting for their first token per prefill worker (per decode worker when none "
         "prefills); beyond it a request is refused at once (RESOURCE_EXHAUSTED, HTTP 429); 0: no bound")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stream-stall-timeout-ms", f->stream_stall_timeout_ms,
                  "A stream whose decode worker sends no token (on any stream) for max(this, "
                  "--stream-stall-steps x its time per token) is cancelled and retried or failed "
                  "(UNAVAILABLE), and the worker leaves the rotation; 0: off")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stream-stall-steps", f->stream_stall_steps,
                  "Decode steps (predicted time per token) a stream may wait without a token, when longer "
                  "than --stream-stall-timeout-ms")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stalled-worker-hold-ms", f->stalled_worker_hold_ms,
                  "How long a worker whose streams stalled stays out of the rotation although it heartbeats")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-migrations", f->max_migrations,
                  "Times a stream may move to another decode worker when its own dies or stalls after "
                  "tokens reached the client (re-prefilled, resumed token-exact); 0: such a stream fails "
                  "with UNAVAILABLE")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-inflight-prefills", f->max_inflight_prefills,
                  "Flow control: requests dispatched to workers and not yet past their first token, per "
                  "prefill worker; more wait at the router and go highest X-Tandem-Priority first, fair "
                  "across tenants; 0: off (dispatched at once, queued on the workers)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--decode-tpot-limit-ms", f->decode_tpot_limit_ms,
                  "Decode admission: dispatch a request only while a decode worker would decode it at a "
                  "predicted TPOT (its reported step time and batch) within this many ms; the rest wait at "
                  "the router in priority and fair-share order (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600000.0));
  cmd->add_option("--queue-ttl-ms", f->queue_ttl_ms,
                  "Longest a request waits at the router before a worker takes it; then it is refused "
                  "(RESOURCE_EXHAUSTED queue_ttl, HTTP 429); 0: none")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--tenant-weight", f->tenant_weights,
                  "NAME=W: tenant NAME's weight in its priority's fair share (repeatable; others weigh 1)");
  AddTlsFlags(cmd, &f->tls);
  AddConfigFlags(cmd, &f->config, &f->dry_run);
  cmd->callback([cmd, f] { RunConfiguredCommand(cmd, f, "router", ResolveRouterFlags, RunRouter); });
}

int RunRouter(const RouterFlags& f) {
  TerminationSignals signals(kTag);
  // Config, tokenizer and chat template only: the router runs no forward
  // pass, so it loads no weights and creates no backend (no GPU touched).
  auto model = model::LoadModelInfo(f.model);
  if (!model.ok()) {
    std::cerr << kTag << "cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(f.tls);
  // Keepalive on every channel to a worker (router/worker_registry.h).
  const router::WorkerRegistry::Options keepalive;
  absl::StatusOr<ChannelFactory> channels =
      MakeChannelFactory(f.tls, [keepalive](grpc::ChannelArguments* args) {
        router::AddWorkerChannelArgs(keepalive.keepalive_time, keepalive.keepalive_timeout, args);
      });
  if (!credentials.ok() || !channels.ok()) {
    std::cerr << kTag << (credentials.ok() ? channels.status() : credentials.status()).message() << "\n";
    return 1;
  }
  router::WorkerRegistry registry({.heartbeat_interval = absl::Milliseconds(f.heartbeat_ms),
                                   .misses_allowed = f.heartbeat_misses,
                                   .model_id = (*model)->config.model_id,
                                   .channel_factory = *channels});
  router::RouterCore core(MakeRouterOptions(f), model->get(), &registry);
  core.StartBackground();
  router::GenerateService generate(&core);
  router::RegistryService registry_service(&registry, &core);
  auto grpc_server = worker_common::StartGrpcServer(
      {.host = f.host, .port = f.port, .credentials = *credentials}, {&generate, &registry_service});
  if (!grpc_server.ok()) {
    std::cerr << kTag << grpc_server.status().message() << "\n";
    return 1;
  }
  router::OpenAiFront front(MakeFrontOptions(f, **model, &registry), &core);
  std::unique_ptr<http::Server> http_server;
  if (f.http_port >= 0) {
    http_server = StartHttp(f.host, f.http_port, &front);
    if (http_server == nullptr) return 1;
  }
  PrintReadyLine({{"role", "router"},
                  {"pid", getpid()},
                  {"http", http_server ? absl::StrFormat("%s:%d", f.host, http_server->port()) : ""},
                  {"grpc", grpc_server->address},
                  {"tls", f.tls.enabled},
                  {"policy", f.policy},
                  {"model", (*model)->config.model_id}});
  signals.WaitForSignal();
  if (http_server != nullptr) http_server->Shutdown(absl::Now() + absl::Seconds(2));
  grpc_server->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  core.Stop();
  return 0;
}

}  // namespace tandem::cli
