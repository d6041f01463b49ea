#include "cli/server_commands.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "cli/engine_flags.h"
#include "common/metrics.h"
#include "decode_worker/decode_service.h"
#include "engine/engine.h"
#include "engine/engine_runner.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "http/server.h"
#include "kernels/backend.h"
#include "kvstore/block_format.h"
#include "kvstore/prefetcher.h"
#include "kvstore/store_client.h"
#include "kvstore/tiered_store.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"
#include "prefill_worker/prefill_service.h"
#include "router/openai_front.h"
#include "router/placement.h"
#include "router/router_core.h"
#include "router/router_service.h"
#include "router/worker_registry.h"
#include "transfer/transfer_engine.h"
#include "worker_common/kv_event_publisher.h"
#include "worker_common/router_membership.h"
#include "worker_common/worker_status.h"

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

// Listens on host:port only (never on other addresses).
std::unique_ptr<grpc::Server> StartServer(const std::string& host, int32_t port,
                                          std::shared_ptr<grpc::ServerCredentials> credentials,
                                          const std::vector<grpc::Service*>& services, int* bound_port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrFormat("%s:%d", host, port), std::move(credentials), bound_port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server != nullptr) server->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot read '%s'", what, path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The merge of a config file into flags: a value the file sets replaces the
// flag's default unless the flag was given on the command line.
class Merger {
 public:
  explicit Merger(const CLI::App& cmd) : cmd_(cmd) {}

  template <typename T>
  void Set(const char* flag, bool present, const T& value, T* out) const {
    if (present && cmd_.count(flag) == 0) *out = value;
  }

 private:
  const CLI::App& cmd_;
};

// `name` is the config field ("router.port"), `flag` the flag ("--port").
absl::Status CheckRange(const std::string& source, const char* name, const char* flag, int64_t value,
                        int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: %s (%s) is %d; must be in [%d, %d]", source, name, flag, value, lo, hi));
}

// Where a merged value may have come from, for messages.
std::string Source(const std::string& config) {
  return config.empty() ? "flags" : absl::StrCat("flags or --config ", config);
}

void MergeTls(const Merger& m, const tandem::v1::TlsConfig& c, TlsFlags* t) {
  m.Set("--tls-cert", c.has_cert_file(), c.cert_file(), &t->cert_file);
  m.Set("--tls-key", c.has_key_file(), c.key_file(), &t->key_file);
  m.Set("--tls-ca", c.has_ca_file(), c.ca_file(), &t->ca_file);
  if (c.has_enabled()) t->enabled = c.enabled();
  if (c.has_require_client_auth()) t->require_client_auth = c.require_client_auth();
  if (c.has_server_name()) t->server_name = c.server_name();
}

absl::Status ValidateTls(const std::string& source, TlsFlags* t) {
  if (!t->cert_file.empty()) t->enabled = true;
  if (!t->enabled) return absl::OkStatus();
  if (t->cert_file.empty() || t->key_file.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: TLS is enabled but tls.cert_file (--tls-cert) and tls.key_file (--tls-key) are not both set",
        source));
  }
  return absl::OkStatus();
}

tandem::v1::TlsConfig TlsProto(const TlsFlags& t) {
  tandem::v1::TlsConfig c;
  c.set_enabled(t.enabled);
  c.set_cert_file(t.cert_file);
  c.set_key_file(t.key_file);
  c.set_ca_file(t.ca_file);
  c.set_require_client_auth(t.require_client_auth);
  c.set_server_name(t.server_name);
  return c;
}

std::string ToJson(const tandem::v1::ClusterConfig& c) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(c, &out, options);
  return out;
}

// Applies --config to `f` (flags given on the command line win) and
// validates the result.
absl::Status ResolveRouterFlags(const CLI::App& cmd, RouterFlags* f) {
  if (!f->config.empty()) {
    absl::StatusOr<tandem::v1::ClusterConfig> config = LoadClusterConfig(f->config);
    if (!config.ok()) return config.status();
    const Merger m(cmd);
    const tandem::v1::RouterConfig& r = config->router();
    m.Set("--host", r.has_host(), r.host(), &f->host);
    m.Set("--port", r.has_port(), r.port(), &f->port);
    m.Set("--model", r.has_model(), r.model(), &f->model);
    m.Set("--heartbeat-ms", r.has_heartbeat_ms(), r.heartbeat_ms(), &f->heartbeat_ms);
    m.Set("--heartbeat-misses", r.has_heartbeat_misses(), r.heartbeat_misses(), &f->heartbeat_misses);
    m.Set("--policy", r.has_policy(), r.policy(), &f->policy);
    m.Set("--slo-ttft-ms", r.has_slo_ttft_ms(), r.slo_ttft_ms(), &f->slo_ttft_ms);
    m.Set("--slo-tpot-ms", r.has_slo_tpot_ms(), r.slo_tpot_ms(), &f->slo_tpot_ms);
    m.Set("--aggregate-max-uncached-tokens", r.has_aggregate_max_uncached_tokens(),
          r.aggregate_max_uncached_tokens(), &f->aggregate_max_uncached_tokens);
    m.Set("--aggregate-when-queue-ms", r.has_aggregate_when_queue_ms(), r.aggregate_when_queue_ms(),
          &f->aggregate_when_queue_ms);
    MergeTls(m, config->tls(), &f->tls);
  }
  const std::string source = Source(f->config);
  if (f->host.empty()) return absl::InvalidArgumentError(source + ": router.host (--host) is empty");
  for (absl::Status s :
       {CheckRange(source, "router.port", "--port", f->port, 0, 65535),
        CheckRange(source, "router.heartbeat_ms", "--heartbeat-ms", f->heartbeat_ms, 1, 3600000),
        CheckRange(source, "router.heartbeat_misses", "--heartbeat-misses", f->heartbeat_misses, 1, 1000)}) {
    if (!s.ok()) return s;
  }
  if (!router::ParsePolicy(f->policy).ok()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: router.policy (--policy) is '%s'; must be one of: kv, round_robin, least_loaded, random", source,
        f->policy));
  }
  if (!(f->slo_ttft_ms >= 0) || !(f->slo_tpot_ms >= 0) || !(f->aggregate_when_queue_ms >= 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: router.slo_ttft_ms, slo_tpot_ms and aggregate_when_queue_ms must be >= 0", source));
  }
  if (f->aggregate_max_uncached_tokens < -1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: router.aggregate_max_uncached_tokens (--aggregate-max-uncached-tokens) must be >= -1", source));
  }
  return ValidateTls(source, &f->tls);
}

absl::Status ResolveWorkerFlags(const CLI::App& cmd, WorkerFlags* f) {
  if (!f->config.empty()) {
    absl::StatusOr<tandem::v1::ClusterConfig> config = LoadClusterConfig(f->config);
    if (!config.ok()) return config.status();
    const Merger m(cmd);
    const tandem::v1::WorkerConfig& w = config->worker();
    m.Set("--router", w.has_router(), w.router(), &f->router);
    m.Set("--host", w.has_host(), w.host(), &f->host);
    m.Set("--port", w.has_port(), w.port(), &f->port);
    m.Set("--model", w.has_model(), w.model(), &f->model);
    m.Set("--threads", w.has_threads(), w.threads(), &f->threads);
    m.Set("--block-size", w.has_block_size(), w.block_size(), &f->block_size);
    m.Set("--kv-cache-mb", w.has_kv_cache_mb(), w.kv_cache_mb(), &f->kv_cache_mb);
    m.Set("--max-running", w.has_max_running(), w.max_running(), &f->max_running);
    m.Set("--max-step-tokens", w.has_max_step_tokens(), w.max_step_tokens(), &f->max_step_tokens);
    m.Set("--kv-dram-bytes", w.has_kv_dram_bytes(), w.kv_dram_bytes(), &f->kv_tiers.dram_bytes);
    m.Set("--kv-ssd-path", w.has_kv_ssd_path(), w.kv_ssd_path(), &f->kv_tiers.ssd_path);
    m.Set("--kv-ssd-bytes", w.has_kv_ssd_bytes(), w.kv_ssd_bytes(), &f->kv_tiers.ssd_bytes);
    m.Set("--kv-prefetch", w.has_kv_prefetch(), w.kv_prefetch(), &f->kv_prefetch);
    m.Set("--kv-store", w.has_kv_store(), w.kv_store(), &f->kv_store);
    m.Set("--kv-store-transport", w.has_kv_store_transport(), w.kv_store_transport(), &f->kv_store_transport);
    MergeTls(m, config->tls(), &f->tls);
  }
  const std::string source = Source(f->config);
  if (f->host.empty()) return absl::InvalidArgumentError(source + ": worker.host (--host) is empty");
  if (f->router.empty()) return absl::InvalidArgumentError(source + ": worker.router (--router) is empty");
  for (absl::Status s :
       {CheckRange(source, "worker.port", "--port", f->port, 0, 65535),
        CheckRange(source, "worker.threads", "--threads", f->threads, 0, 4096),
        CheckRange(source, "worker.block_size", "--block-size", f->block_size, 1, 1 << 16),
        CheckRange(source, "worker.kv_cache_mb", "--kv-cache-mb", f->kv_cache_mb, 1, 1 << 30),
        CheckRange(source, "worker.max_running", "--max-running", f->max_running, 1, 1 << 20),
        CheckRange(source, "worker.max_step_tokens", "--max-step-tokens", f->max_step_tokens, 1, 1 << 24),
        CheckRange(source, "worker.kv_dram_bytes", "--kv-dram-bytes", f->kv_tiers.dram_bytes, 0,
                   int64_t{1} << 50),
        CheckRange(source, "worker.kv_ssd_bytes", "--kv-ssd-bytes", f->kv_tiers.ssd_bytes, 1,
                   int64_t{1} << 56)}) {
    if (!s.ok()) return s;
  }
  if (!f->kv_tiers.ssd_path.empty() && f->kv_tiers.dram_bytes == 0) {
    return absl::InvalidArgumentError(
        source + ": worker.kv_ssd_path (--kv-ssd-path) needs worker.kv_dram_bytes (--kv-dram-bytes) > 0");
  }
  if (f->kv_store_transport != "ucx" && f->kv_store_transport != "grpc") {
    return absl::InvalidArgumentError(source + ": worker.kv_store_transport (--kv-store-transport) is '" +
                                      f->kv_store_transport + "'; must be ucx or grpc");
  }
  if (!f->kv_store.empty() && f->kv_tiers.dram_bytes == 0) {
    return absl::InvalidArgumentError(
        source + ": worker.kv_store (--kv-store) needs worker.kv_dram_bytes (--kv-dram-bytes) > 0");
  }
  return ValidateTls(source, &f->tls);
}

tandem::v1::ClusterConfig EffectiveConfig(const RouterFlags& f) {
  tandem::v1::ClusterConfig c;
  tandem::v1::RouterConfig* r = c.mutable_router();
  r->set_host(f.host);
  r->set_port(f.port);
  r->set_model(f.model);
  r->set_heartbeat_ms(f.heartbeat_ms);
  r->set_heartbeat_misses(f.heartbeat_misses);
  r->set_policy(f.policy);
  *c.mutable_tls() = TlsProto(f.tls);
  return c;
}

tandem::v1::ClusterConfig EffectiveConfig(const WorkerFlags& f) {
  tandem::v1::ClusterConfig c;
  tandem::v1::WorkerConfig* w = c.mutable_worker();
  w->set_router(f.router);
  w->set_host(f.host);
  w->set_port(f.port);
  w->set_model(f.model);
  w->set_threads(f.threads);
  w->set_block_size(f.block_size);
  w->set_kv_cache_mb(f.kv_cache_mb);
  w->set_max_running(f.max_running);
  w->set_max_step_tokens(f.max_step_tokens);
  w->set_kv_dram_bytes(f.kv_tiers.dram_bytes);
  w->set_kv_ssd_path(f.kv_tiers.ssd_path);
  w->set_kv_ssd_bytes(f.kv_tiers.ssd_bytes);
  w->set_kv_prefetch(f.kv_prefetch);
  w->set_kv_store(f.kv_store);
  w->set_kv_store_transport(f.kv_store_transport);
  *c.mutable_tls() = TlsProto(f.tls);
  return c;
}

// The subcommand's callback: resolve, then dry-run or serve.
template <typename Flags, typename Resolve, typename Run>
void RunCommand(const CLI::App* cmd, Flags* f, const std::string& name, Resolve resolve, Run run) {
  if (absl::Status s = resolve(*cmd, f); !s.ok()) {
    std::cerr << "tandem " << name << ": " << s.message() << "\n";
    throw CLI::RuntimeError(2);
  }
  if (f->dry_run) {
    std::cout << ToJson(EffectiveConfig(*f)) << std::endl;
    return;
  }
  const int code = run(*f);
  if (code != 0) throw CLI::RuntimeError(code);
}

void AddConfigFlags(CLI::App* cmd, std::string* config, bool* dry_run) {
  cmd->add_option("--config", *config,
                  "Cluster configuration, JSON in the tandem.v1.ClusterConfig schema "
                  "(proto/tandem/v1/config.proto); flags given here override it");
  cmd->add_flag(
      "--dry-run", *dry_run,
      "Validate flags and --config, print the effective configuration as JSON, exit without serving");
}

}  // namespace

absl::StatusOr<tandem::v1::ClusterConfig> LoadClusterConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path, "--config");
  if (!text.ok()) return text.status();
  tandem::v1::ClusterConfig config;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(*text, &config, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--config %s: not a valid tandem.v1.ClusterConfig (proto/tandem/v1/config.proto): %s",
                        path, std::string(status.message())));
  }
  return config;
}

void AddTlsFlags(CLI::App* cmd, TlsFlags* t) {
  cmd->add_option("--tls-cert", t->cert_file,
                  "PEM certificate chain: turns on TLS; also this process's client certificate");
  cmd->add_option("--tls-key", t->key_file, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", t->ca_file,
                  "PEM CA bundle: verifies peers, and requires client certificates (mutual TLS)");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& t) {
  if (!t.enabled) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile(t.cert_file, "tls.cert_file (--tls-cert)");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(t.key_file, "tls.key_file (--tls-key)");
  if (!key.ok()) return key.status();
  std::string ca;
  if (!t.ca_file.empty()) {
    absl::StatusOr<std::string> read = ReadFile(t.ca_file, "tls.ca_file (--tls-ca)");
    if (!read.ok()) return read.status();
    ca = *std::move(read);
  }
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  if (!ca.empty()) {
    request = t.require_client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                    : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  grpc::SslServerCredentialsOptions options(request);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<ChannelFactory> MakeChannelFactory(const TlsFlags& t) {
  if (!t.enabled) {
    return ChannelFactory([](const std::string& target) {
      return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    });
  }
  grpc::SslCredentialsOptions options;
  for (auto [path, what, out] :
       {std::tuple{&t.ca_file, "tls.ca_file (--tls-ca)", &options.pem_root_certs},
        std::tuple{&t.cert_file, "tls.cert_file (--tls-cert)", &options.pem_cert_chain},
        std::tuple{&t.key_file, "tls.key_file (--tls-key)", &options.pem_private_key}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> read = ReadFile(*path, what);
    if (!read.ok()) return read.status();
    *out = *std::move(read);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(options);
  const std::string server_name = t.server_name;
  return ChannelFactory([credentials, server_name](const std::string& target) {
    grpc::ChannelArguments args;
    if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
    return grpc::CreateCustomChannel(target, credentials, args);
  });
}

namespace {}  // namespace

// The HTTP server on host:port with the OpenAI error shape for its own
// errors; null (after a message) if it cannot listen.
std::unique_ptr<http::Server> StartHttp(const std::string& tag, const std::string& host, int32_t port,
                                        const std::function<void(http::Server*)>& routes) {
  auto server = http::Server::Create(
      {.host = host, .port = port, .error_response = &router::OpenAiFront::ErrorResponse});
  if (!server.ok()) {
    std::cerr << tag << server.status().message() << "\n";
    return nullptr;
  }
  routes(server->get());
  if (absl::Status s = (*server)->Start(); !s.ok()) {
    std::cerr << tag << s.message() << "\n";
    return nullptr;
  }
  return *std::move(server);
}

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
  AddTlsFlags(cmd, &f->tls);
  AddConfigFlags(cmd, &f->config, &f->dry_run);
  cmd->callback([cmd, f] { RunCommand(cmd, f, "router", ResolveRouterFlags, RunRouter); });
}

static void AddWorkerFlags(CLI::App* cmd, WorkerFlags* f) {
  cmd->add_option("--router", f->router, "Router's gRPC address (host:port)")->capture_default_str();
  cmd->add_option("--host", f->host, "Address to bind and advertise")->capture_default_str();
  cmd->add_option("--port", f->port, "gRPC port (0: any free port)")->capture_default_str();
  cmd->add_option("--model", f->model, "GGUF path or synthetic:NAME (must match the router's)")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU threads for the engine (0: one per core)")
      ->capture_default_str();
  AddEngineFlags(cmd, &f->block_size, &f->kv_cache_mb, &f->max_running, &f->max_step_tokens,
                 "Tokens per KV block (same on every worker)");
  AddDeviceFlags(cmd, &f->device);
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

void RegisterPrefill(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([cmd, f] {
    RunCommand(cmd, f, "prefill", ResolveWorkerFlags,
               [](const WorkerFlags& w) { return RunWorker(w, "prefill"); });
  });
}

void RegisterDecode(CLI::App* cmd, WorkerFlags* f) {
  AddWorkerFlags(cmd, f);
  cmd->callback([cmd, f] {
    RunCommand(cmd, f, "decode", ResolveWorkerFlags,
               [](const WorkerFlags& w) { return RunWorker(w, "decode"); });
  });
}

int RunRouter(const RouterFlags& f) {
  const sigset_t signals = BlockTerminationSignals();
  auto model = model::LoadModel(f.model);
  if (!model.ok()) {
    std::cerr << "tandem router: cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(f.tls);
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(f.tls);
  if (!credentials.ok() || !channels.ok()) {
    std::cerr << "tandem router: " << (credentials.ok() ? channels.status() : credentials.status()).message()
              << "\n";
    return 1;
  }
  router::WorkerRegistry registry({.heartbeat_interval = absl::Milliseconds(f.heartbeat_ms),
                                   .misses_allowed = f.heartbeat_misses,
                                   .model_id = (*model)->config.model_id,
                                   .channel_factory = *channels});
  router::RouterOptions router_options;
  router_options.placement.policy = *router::ParsePolicy(f.policy);  // validated by ResolveRouterFlags
  router_options.placement.default_ttft_slo_ms = f.slo_ttft_ms;
  router_options.placement.default_tpot_slo_ms = f.slo_tpot_ms;
  router_options.placement.aggregate_max_uncached_tokens = f.aggregate_max_uncached_tokens;
  router_options.placement.aggregate_when_queue_ms = f.aggregate_when_queue_ms;
  router::RouterCore core(router_options, model->get(), &registry);
  core.StartBackground();
  router::GenerateService generate(&core);
  router::RegistryService registry_service(&registry, &core);
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      StartServer(f.host, f.port, *credentials, {&generate, &registry_service}, &port);
  if (server == nullptr || port == 0) {
    std::cerr << "tandem router: cannot listen on " << f.host << ":" << f.port << "\n";
    return 1;
  }
  std::vector<std::string> api_keys = f.api_keys;
  if (const char* env = std::getenv("TANDEM_API_KEYS"); env != nullptr) {
    for (absl::string_view k : absl::StrSplit(env, ',', absl::SkipWhitespace())) api_keys.emplace_back(k);
  }
  router::OpenAiFrontOptions front_options{
      .model_name = (*model)->config.model_id,
      .model_aliases = {f.model},
      .api_keys = api_keys,
      .ready = [&registry] { return registry.HasHealthy(tandem::v1::WORKER_ROLE_DECODE); }};
  // Chat: the model's template when it has one that parses, else ChatML
  // (router/README.md); rendered prompts are tokenized here with special
  // tokens parsed and no BOS added (the template writes it if the model wants it).
  const model::Tokenizer* tokenizer = (*model)->tokenizer.get();
  router::ChatRenderer chat = router::MakeChatRenderer((*model)->chat_template, tokenizer);
  if (chat.model_template) {
    std::cerr << "tandem router: chat template: the model's own\n";
  } else if (!chat.template_error.ok()) {
    std::cerr << "tandem router: warning: the model's chat template does not parse ("
              << chat.template_error.message() << "); using the default (ChatML)\n";
  } else {
    std::cerr << "tandem router: chat template: the default (ChatML); the model has none\n";
  }
  front_options.render_chat = std::move(chat.render);
  front_options.tokenizer = tokenizer;
  router::OpenAiFront front(front_options, &core);
  std::unique_ptr<http::Server> http_server;
  if (f.http_port >= 0) {
    http_server =
        StartHttp("tandem router: http: ", f.host, f.http_port, [&](http::Server* s) { front.Register(s); });
    if (http_server == nullptr) return 1;
  }
  PrintReady({{"role", "router"},
              {"pid", getpid()},
              {"http", http_server ? absl::StrFormat("%s:%d", f.host, http_server->port()) : ""},
              {"grpc", absl::StrFormat("%s:%d", f.host, port)},
              {"tls", f.tls.enabled},
              {"policy", f.policy},
              {"model", (*model)->config.model_id}});
  const int sig = WaitForTermination(signals);
  std::cerr << "tandem router: signal " << sig << ", shutting down\n";
  if (http_server != nullptr) http_server->Shutdown(absl::Now() + absl::Seconds(2));
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  core.Stop();
  return 0;
}

int RunWorker(const WorkerFlags& f, const std::string& role) {
  const sigset_t signals = BlockTerminationSignals();
  const std::string tag = "tandem " + role + ": ";
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(f.tls);
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(f.tls);
  if (!credentials.ok() || !channels.ok()) {
    std::cerr << tag << (credentials.ok() ? channels.status() : credentials.status()).message() << "\n";
    return 1;
  }
  auto model = model::LoadModel(f.model);
  if (!model.ok()) {
    std::cerr << tag << "cannot load model '" << f.model << "': " << model.status().message() << "\n";
    return 1;
  }
  const model::ModelConfig& config = (*model)->config;
  auto created = MakeBackend(f.device, f.threads);
  if (!created.ok()) {
    std::cerr << tag << created.status().message() << "\n";
    return 1;
  }
  std::unique_ptr<kernels::Backend> backend = std::move(*created);
  if (backend->name() != "cpu") {
    // The transfer engine and the KV tiers read the pool as host memory; a
    // device pool needs staged copies first (kernels/cuda/README.md).
    std::cerr << tag << "--device " << backend->name()
              << " is not supported by workers yet; use --device cpu\n";
    return 1;
  }
  auto llama = model::LlamaModel::Create(config, (*model)->weights, backend.get());
  if (!llama.ok()) {
    std::cerr << tag << llama.status().message() << "\n";
    return 1;
  }
  // Declared before the engine, which appends to it until destroyed.
  engine::KvEventLog kv_events;
  const std::string worker_id =
      f.worker_id.empty() ? absl::StrFormat("%s-%s-%d", role, f.host, getpid()) : f.worker_id;
  auto transfer = transfer::TransferEngine::Create({.name = worker_id});
  if (!transfer.ok()) {
    std::cerr << tag << "transfer engine: " << transfer.status().message() << "\n";
    return 1;
  }
  // The shared store's client (optional) outlives the tiers that call it;
  // the transfer engine (declared above) outlives the client, whose landing
  // slots it allocated.
  std::unique_ptr<kvstore::StoreClient> store_client;
  if (!f.kv_store.empty()) {
    kvstore::StoreClient::Options store_options{.model_id = config.model_id};
    if (f.kv_store_transport == "ucx") {
      store_options.transfer = transfer->get();
      store_options.slot_bytes =
          kvstore::EncodedBlockBytes(f.block_size, config.KvLayoutFor(f.block_size).BlockBytes());
    }
    auto client = kvstore::StoreClient::Create(store_options, (*channels)(f.kv_store));
    if (!client.ok()) {
      std::cerr << tag << "--kv-store: " << client.status().message() << "\n";
      return 1;
    }
    store_client = std::move(*client);
  }
  // The KV tiers (optional) report into the same log as tiers DRAM and SSD;
  // blocks found on a reopened SSD tier are announced first, so the router's
  // index (and its snapshot) sees them.
  auto tiers = MakeKvTiers(
      f.kv_tiers, config, f.block_size,
      [&kv_events](const kvstore::TierEvent& e) {
        const engine::KvTier tier =
            e.tier == kvstore::Tier::kDram ? engine::KvTier::kDram : engine::KvTier::kSsd;
        for (BlockHash h : e.hashes) {
          if (e.kind == kvstore::TierEvent::Kind::kStored) {
            kv_events.Stored(h, tier);
          } else {
            kv_events.Removed(h, tier);
          }
        }
      },
      store_client.get());
  if (!tiers.ok()) {
    std::cerr << tag << "KV tiers: " << tiers.status().message() << "\n";
    return 1;
  }
  int64_t reopened_ssd_blocks = 0;
  std::unique_ptr<kvstore::Prefetcher> prefetcher;
  if (*tiers != nullptr) {
    for (const auto& [hash, tier] : (*tiers)->Snapshot()) {
      if (tier != kvstore::Tier::kSsd) continue;
      kv_events.Stored(hash, engine::KvTier::kSsd);
      ++reopened_ssd_blocks;
    }
    if (f.kv_prefetch && ((*tiers)->ssd() != nullptr || store_client != nullptr)) {
      // /metrics: prefetches by who named the blocks (hint: the router's
      // PrefetchHint; prompt: the worker hashed the prompt), as gauges of
      // the prefetcher's running totals.
      MetricsRegistry& r = DefaultMetricsRegistry();
      GaugeFamily* requests =
          r.Gauge("tandem_worker_kv_prefetch_requests",
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
      auto on_stats =
          [hint_requests = requests->WithLabels({"hint"}), prompt_requests = requests->WithLabels({"prompt"}),
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
      on_stats({});
      auto p = kvstore::Prefetcher::Create(
          {.model_id = config.model_id, .block_tokens = f.block_size, .on_stats = on_stats}, tiers->get());
      if (!p.ok()) {
        std::cerr << tag << "KV prefetch: " << p.status().message() << "\n";
        return 1;
      }
      prefetcher = std::move(*p);
    }
  }
  // Called by the services when a request arrives, before it waits for
  // the engine: never blocks (a full prefetch queue drops the prefetch).
  // With the router's hint, exactly the blocks it names (none when it names
  // none); without one, whatever the tiers hold of the hashed prompt.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
  if (prefetcher != nullptr) {
    on_prompt = [p = prefetcher.get()](absl::Span<const int32_t> tokens,
                                       const tandem::v1::PrefetchHint* hint) {
      if (hint == nullptr) {
        (void)p->Enqueue(tokens);
      } else if (hint->block_hashes_size() > 0) {
        (void)p->EnqueueHashes(absl::MakeConstSpan(hint->block_hashes().data(), hint->block_hashes_size()),
                               hint->first_block(), tokens);
      }
    };
  }
  auto engine = engine::Engine::Create({.block_size = f.block_size,
                                        .kv_cache_bytes = static_cast<size_t>(f.kv_cache_mb) << 20,
                                        .max_running = f.max_running,
                                        .max_step_tokens = f.max_step_tokens,
                                        .kv_events = &kv_events,
                                        .tiers = tiers->get()},
                                       llama->get(), backend.get(), (*model)->tokenizer.get());
  if (!engine.ok()) {
    std::cerr << tag << engine.status().message() << "\n";
    return 1;
  }
  const kernels::KvCacheView& kv = (*engine)->kv_view();
  const size_t pool_bytes = static_cast<size_t>(kv.num_blocks) * kv.layout.BlockBytes();

  std::unique_ptr<decode_worker::DecodeService> decode_service;
  std::unique_ptr<prefill_worker::PrefillService> prefill_service;
  engine::EngineRunner::Options runner_options;
  decode_worker::DecodeService* decode_raw = nullptr;
  // Prefix reuse by tier and computed prompt tokens, as gauges of the
  // engine's running totals (the KV tiers' figures, docs/PERFORMANCE.md).
  GaugeFamily* hit_blocks = DefaultMetricsRegistry().Gauge(
      "tandem_worker_kv_hit_blocks", "Prompt blocks reused, by the tier they were found in", {"tier"});
  Gauge* const hits[4] = {hit_blocks->WithLabels({"hbm"}), hit_blocks->WithLabels({"dram"}),
                          hit_blocks->WithLabels({"ssd"}), hit_blocks->WithLabels({"store"})};
  Gauge* const computed =
      DefaultMetricsRegistry()
          .Gauge("tandem_worker_prompt_tokens_computed", "Prompt tokens computed (not reused)")
          ->WithLabels({});
  // Bytes moved to and from the shared store, by direction and data path.
  GaugeFamily* store_bytes = DefaultMetricsRegistry().Gauge(
      "tandem_worker_kv_store_bytes", "Block bytes fetched from and offered to the shared KV store",
      {"direction", "transport"});
  Gauge* const store_gauges[4] = {
      store_bytes->WithLabels({"fetch", "ucx"}), store_bytes->WithLabels({"put", "ucx"}),
      store_bytes->WithLabels({"fetch", "grpc"}), store_bytes->WithLabels({"put", "grpc"})};
  runner_options.on_tick = [&decode_raw, hits, computed, store_gauges, store_raw = store_client.get(),
                            tiers_raw = tiers->get()](engine::Engine& e) {
    if (store_raw != nullptr) {
      const kvstore::StoreClient::Stats s = store_raw->stats();
      store_gauges[0]->Set(static_cast<double>(s.ucx_fetch_bytes));
      store_gauges[1]->Set(static_cast<double>(s.ucx_put_bytes));
      store_gauges[2]->Set(static_cast<double>(s.grpc_fetch_bytes));
      store_gauges[3]->Set(static_cast<double>(s.grpc_put_bytes));
    }
    if (decode_raw != nullptr) decode_raw->ExpireReservations(e);
    const engine::KvManager::Stats& kv_stats = e.kv_manager().stats();
    // KvManager counts blocks the tiers fetched from the shared store for it
    // with the SSD hits; the tiers tell them apart (blocks the prefetcher
    // fetched are DRAM hits by then).
    const int64_t store_hits = tiers_raw != nullptr ? tiers_raw->stats().remote_hits : 0;
    hits[0]->Set(static_cast<double>(kv_stats.hbm_hit_blocks));
    hits[1]->Set(static_cast<double>(kv_stats.dram_hit_blocks));
    hits[2]->Set(static_cast<double>(kv_stats.ssd_hit_blocks - store_hits));
    hits[3]->Set(static_cast<double>(store_hits));
    computed->Set(static_cast<double>(e.stats().prompt_tokens_computed));
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
                                            .block_bytes = kv.layout.BlockBytes(),
                                            .on_prompt = on_prompt},
        runner.get(), (*model)->tokenizer.get());
    service = decode_service.get();
  } else {
    prefill_service = std::make_unique<prefill_worker::PrefillService>(
        prefill_worker::PrefillServiceOptions{.worker_id = worker_id,
                                              .model_id = config.model_id,
                                              .block_size = f.block_size,
                                              .block_bytes = kv.layout.BlockBytes(),
                                              .kv_base = reinterpret_cast<const uint8_t*>(kv.base),
                                              .on_prompt = on_prompt},
        runner.get(), transfer->get());
    service = prefill_service.get();
  }
  (void)runner->Run(
      [&](engine::Engine&) {
        decode_raw = decode_service.get();
        return absl::OkStatus();
      },
      absl::Now() + absl::Seconds(10));

  auto load_for_events = [&runner] { return worker_common::ToWorkerLoad(runner->load()); };
  worker_common::KvSnapshotService snapshot_service(&kv_events, worker_id, load_for_events);
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      StartServer(f.host, f.port, *credentials, {service, &snapshot_service}, &port);
  if (server == nullptr || port == 0) {
    std::cerr << tag << "cannot listen on " << f.host << ":" << f.port << "\n";
    return 1;
  }
  const std::string address = absl::StrFormat("%s:%d", f.host, port);

  // The workers' own metrics (recorded into the default registry) over HTTP.
  std::unique_ptr<http::Server> metrics_server;
  if (f.metrics_port >= 0) {
    metrics_server = StartHttp(tag + "metrics: ", f.host, f.metrics_port, [](http::Server* s) {
      s->Handle("GET", "/metrics", [](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
        w->Send({.status = 200,
                 .content_type = "text/plain; version=0.0.4; charset=utf-8",
                 .body = DefaultMetricsRegistry().RenderPrometheus()});
      });
      s->Handle("GET", "/health", [](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
        w->Send({.status = 200, .content_type = "text/plain", .body = "ok\n"});
      });
    });
    if (metrics_server == nullptr) return 1;
  }

  // Register with the router (retrying until it answers), then heartbeat.
  auto channel = (*channels)(f.router);
  auto registry = tandem::v1::WorkerRegistry::NewStub(channel);
  auto load_proto = [&] { return worker_common::ToWorkerLoad(runner->load()); };

  tandem::v1::RegisterRequest reg;
  reg.set_worker_id(worker_id);
  reg.set_role(role == "decode" ? tandem::v1::WORKER_ROLE_DECODE : tandem::v1::WORKER_ROLE_PREFILL);
  reg.set_address(address);
  reg.set_model_id(config.model_id);
  reg.set_block_size(f.block_size);
  // The worker's own /metrics (--metrics-port): engine load, refreshed with
  // every heartbeat.
  struct LoadGauges {
    Gauge* step_ms;
    Gauge* batch;
    Gauge* running;
    Gauge* waiting;
    Gauge* queued_prefill_tokens;
    Gauge* hbm_used_blocks;
    Gauge* hbm_total_blocks;
  };
  const LoadGauges gauges = [] {
    MetricsRegistry& r = DefaultMetricsRegistry();
    return LoadGauges{
        r.Gauge("tandem_worker_decode_step_ms", "Recent mean engine step time with decode rows, ms")
            ->WithLabels({}),
        r.Gauge("tandem_worker_decode_batch", "Recent mean sequences decoded per step")->WithLabels({}),
        r.Gauge("tandem_worker_running", "Sequences in the running batch")->WithLabels({}),
        r.Gauge("tandem_worker_waiting", "Sequences queued for admission")->WithLabels({}),
        r.Gauge("tandem_worker_queued_prefill_tokens", "Prompt tokens waiting to be computed")
            ->WithLabels({}),
        r.Gauge("tandem_worker_kv_pool_used_blocks", "KV blocks in use, by tier", {"tier"})
            ->WithLabels({"hbm"}),
        r.Gauge("tandem_worker_kv_pool_blocks", "KV blocks in the pool, by tier", {"tier"})
            ->WithLabels({"hbm"})};
  }();
  worker_common::RouterMembership membership(
      {.registration = reg,
       .load = load_proto,
       .on_heartbeat =
           [&gauges](const tandem::v1::WorkerLoad& l) {
             gauges.step_ms->Set(l.decode_step_ms());
             gauges.batch->Set(l.decode_batch());
             gauges.running->Set(l.running());
             gauges.waiting->Set(l.waiting());
             gauges.queued_prefill_tokens->Set(static_cast<double>(l.queued_prefill_tokens()));
             gauges.hbm_used_blocks->Set(l.used_blocks());
             gauges.hbm_total_blocks->Set(l.total_blocks());
           }},
      registry.get(), &kv_events);
  if (grpc::Status registered = membership.Register(); !registered.ok()) {
    std::cerr << tag << "cannot register with router " << f.router << ": " << registered.error_message()
              << "\n";
    server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return 1;
  }
  membership.Start();

  PrintReady({{"role", role},
              {"pid", getpid()},
              {"grpc", address},
              {"worker_id", worker_id},
              {"router", f.router},
              {"tls", f.tls.enabled},
              {"model", config.model_id},
              {"kv_blocks", kv.num_blocks},
              {"kv_tiers", *tiers != nullptr},
              {"kv_ssd_blocks_reopened", reopened_ssd_blocks},
              {"kv_prefetch", prefetcher != nullptr},
              {"kv_store", f.kv_store},
              {"kv_store_transport", store_client != nullptr ? store_client->transport() : ""},
              {"metrics", metrics_server ? absl::StrFormat("%s:%d", f.host, metrics_server->port()) : ""}});
  const int sig = WaitForTermination(signals);
  std::cerr << tag << "signal " << sig << ", shutting down\n";
  membership.Stop();
  if (metrics_server != nullptr) metrics_server->Shutdown(absl::Now() + absl::Seconds(1));
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  runner->Stop();
  return 0;
}

}  // namespace tandem::cli
