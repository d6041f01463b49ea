#include "cli/config_merge.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/router_command.h"
#include "cli/store_command.h"
#include "cli/tls.h"
#include "cli/worker_command.h"
#include "google/protobuf/util/json_util.h"
#include "router/placement.h"
#include "router/request_validation.h"

namespace tandem::cli {
namespace {

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

tandem::v1::ClusterConfig EffectiveConfig(const RouterFlags& f) {
  tandem::v1::ClusterConfig c;
  tandem::v1::RouterConfig* r = c.mutable_router();
  r->set_host(f.host);
  r->set_port(f.port);
  r->set_model(f.model);
  r->set_heartbeat_ms(f.heartbeat_ms);
  r->set_heartbeat_misses(f.heartbeat_misses);
  r->set_policy(f.policy);
  r->set_slo_ttft_ms(f.slo_ttft_ms);
  r->set_slo_tpot_ms(f.slo_tpot_ms);
  r->set_aggregate_max_uncached_tokens(f.aggregate_max_uncached_tokens);
  r->set_aggregate_when_queue_ms(f.aggregate_when_queue_ms);
  r->set_max_queued_prefills(f.max_queued_prefills);
  r->set_stream_stall_timeout_ms(f.stream_stall_timeout_ms);
  r->set_stream_stall_steps(f.stream_stall_steps);
  r->set_stalled_worker_hold_ms(f.stalled_worker_hold_ms);
  r->set_max_migrations(f.max_migrations);
  r->set_max_inflight_prefills(f.max_inflight_prefills);
  r->set_queue_ttl_ms(f.queue_ttl_ms);
  r->set_decode_tpot_limit_ms(f.decode_tpot_limit_ms);
  if (absl::StatusOr<absl::flat_hash_map<std::string, double>> w = ParseTenantWeights(f.tenant_weights);
      w.ok()) {
    for (const auto& [tenant, weight] : *w) (*r->mutable_tenant_weights())[tenant] = weight;
  }
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
  w->set_device(f.device.device);
  w->set_kv_dtype(f.device.kv_dtype);
  w->set_kv_staging_mb(f.kv_staging_mb);
  w->set_kv_stream_chunks(f.kv_stream_chunks);
  w->set_metrics_port(f.metrics_port);
  *c.mutable_tls() = TlsProto(f.tls);
  return c;
}

tandem::v1::ClusterConfig EffectiveConfig(const StoreFlags& f) {
  tandem::v1::ClusterConfig c;
  tandem::v1::StoreConfig* s = c.mutable_store();
  s->set_router(f.router);
  s->set_host(f.host);
  s->set_port(f.port);
  s->set_model(f.model);
  s->set_block_size(f.block_size);
  s->set_kv_dtype(f.kv_dtype);
  s->set_dram_bytes(f.dram_bytes);
  s->set_ssd_path(f.ssd_path);
  s->set_ssd_bytes(f.ssd_bytes);
  s->set_ucx(f.ucx);
  s->set_metrics_port(f.metrics_port);
  *c.mutable_tls() = TlsProto(f.tls);
  return c;
}

}  // namespace

absl::StatusOr<tandem::v1::ClusterConfig> LoadClusterConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFlagFile(path, "--config");
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

void AddConfigFlags(CLI::App* cmd, std::string* config, bool* dry_run) {
  cmd->add_option("--config", *config,
                  "Cluster configuration, JSON in the tandem.v1.ClusterConfig schema "
                  "(proto/tandem/v1/config.proto); flags given here override it");
  cmd->add_flag(
      "--dry-run", *dry_run,
      "Validate flags and --config, print the effective configuration as JSON, exit without serving");
}

absl::StatusOr<absl::flat_hash_map<std::string, double>> ParseTenantWeights(
    const std::vector<std::string>& values) {
  absl::flat_hash_map<std::string, double> out;
  for (const std::string& v : values) {
    const size_t eq = v.rfind('=');
    double w = 0;
    if (eq == std::string::npos || eq == 0 || !absl::SimpleAtod(v.substr(eq + 1), &w) || !(w > 0) ||
        !std::isfinite(w)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("'%s' is not NAME=WEIGHT with a positive weight (e.g. acme=2)", v));
    }
    const std::string name = v.substr(0, eq);
    if (name.size() > router::kMaxTenantBytes) {
      return absl::InvalidArgumentError(absl::StrFormat("tenant '%s...' is longer than %d bytes",
                                                        name.substr(0, 16), router::kMaxTenantBytes));
    }
    if (!out.emplace(name, w).second) {
      return absl::InvalidArgumentError(absl::StrFormat("tenant '%s' is weighted twice", name));
    }
  }
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
    m.Set("--max-queued-prefills", r.has_max_queued_prefills(), r.max_queued_prefills(),
          &f->max_queued_prefills);
    m.Set("--stream-stall-timeout-ms", r.has_stream_stall_timeout_ms(), r.stream_stall_timeout_ms(),
          &f->stream_stall_timeout_ms);
    m.Set("--stream-stall-steps", r.has_stream_stall_steps(), r.stream_stall_steps(), &f->stream_stall_steps);
    m.Set("--stalled-worker-hold-ms", r.has_stalled_worker_hold_ms(), r.stalled_worker_hold_ms(),
          &f->stalled_worker_hold_ms);
    m.Set("--max-migrations", r.has_max_migrations(), r.max_migrations(), &f->max_migrations);
    m.Set("--max-inflight-prefills", r.has_max_inflight_prefills(), r.max_inflight_prefills(),
          &f->max_inflight_prefills);
    m.Set("--queue-ttl-ms", r.has_queue_ttl_ms(), r.queue_ttl_ms(), &f->queue_ttl_ms);
    m.Set("--decode-tpot-limit-ms", r.has_decode_tpot_limit_ms(), r.decode_tpot_limit_ms(),
          &f->decode_tpot_limit_ms);
    if (r.tenant_weights_size() > 0 && cmd.count("--tenant-weight") == 0) {
      f->tenant_weights.clear();
      for (const auto& [tenant, weight] : r.tenant_weights()) {
        f->tenant_weights.push_back(absl::StrCat(tenant, "=", weight));
      }
    }
    MergeTls(m, config->tls(), &f->tls);
  }
  const std::string source = Source(f->config);
  if (f->host.empty()) return absl::InvalidArgumentError(source + ": router.host (--host) is empty");
  for (absl::Status s :
       {CheckRange(source, "router.port", "--port", f->port, 0, 65535),
        CheckRange(source, "router.heartbeat_ms", "--heartbeat-ms", f->heartbeat_ms, 1, 3600000),
        CheckRange(source, "router.heartbeat_misses", "--heartbeat-misses", f->heartbeat_misses, 1, 1000),
        CheckRange(source, "router.max_queued_prefills", "--max-queued-prefills", f->max_queued_prefills, 0,
                   1 << 24),
        CheckRange(source, "router.stream_stall_timeout_ms", "--stream-stall-timeout-ms",
                   f->stream_stall_timeout_ms, 0, 3600000),
        CheckRange(source, "router.stream_stall_steps", "--stream-stall-steps", f->stream_stall_steps, 0,
                   1 << 20),
        CheckRange(source, "router.stalled_worker_hold_ms", "--stalled-worker-hold-ms",
                   f->stalled_worker_hold_ms, 0, 3600000),
        CheckRange(source, "router.max_migrations", "--max-migrations", f->max_migrations, 0, 1000),
        CheckRange(source, "router.max_inflight_prefills", "--max-inflight-prefills",
                   f->max_inflight_prefills, 0, 1 << 20),
        CheckRange(source, "router.queue_ttl_ms", "--queue-ttl-ms", f->queue_ttl_ms, 0, 86400000)}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = ParseTenantWeights(f->tenant_weights).status(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": router.tenant_weights (--tenant-weight): ", s.message()));
  }
  if (!router::ParsePolicy(f->policy).ok()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: router.policy (--policy) is '%s'; must be one of: kv, round_robin, least_loaded, random", source,
        f->policy));
  }
  if (!(f->slo_ttft_ms >= 0) || !(f->slo_tpot_ms >= 0) || !(f->aggregate_when_queue_ms >= 0) ||
      !(f->decode_tpot_limit_ms >= 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: router.slo_ttft_ms, slo_tpot_ms, aggregate_when_queue_ms and decode_tpot_limit_ms must be >= 0",
        source));
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
    m.Set("--device", w.has_device(), w.device(), &f->device.device);
    m.Set("--kv-dtype", w.has_kv_dtype(), w.kv_dtype(), &f->device.kv_dtype);
    m.Set("--kv-staging-mb", w.has_kv_staging_mb(), w.kv_staging_mb(), &f->kv_staging_mb);
    m.Set("--kv-stream-chunks", w.has_kv_stream_chunks(), w.kv_stream_chunks(), &f->kv_stream_chunks);
    m.Set("--metrics-port", w.has_metrics_port(), w.metrics_port(), &f->metrics_port);
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
        CheckRange(source, "worker.max_step_tokens", "--max-step-tokens", f->max_step_tokens, 0, 1 << 24),
        CheckRange(source, "worker.kv_dram_bytes", "--kv-dram-bytes", f->kv_tiers.dram_bytes, 0,
                   int64_t{1} << 50),
        CheckRange(source, "worker.kv_ssd_bytes", "--kv-ssd-bytes", f->kv_tiers.ssd_bytes, 1,
                   int64_t{1} << 56),
        CheckRange(source, "worker.kv_staging_mb", "--kv-staging-mb", f->kv_staging_mb, 1, 1 << 20),
        CheckRange(source, "worker.metrics_port", "--metrics-port", f->metrics_port, -1, 65535)}) {
    if (!s.ok()) return s;
  }
  if (!f->kv_tiers.ssd_path.empty() && f->kv_tiers.dram_bytes == 0) {
    return absl::InvalidArgumentError(
        source + ": worker.kv_ssd_path (--kv-ssd-path) needs worker.kv_dram_bytes (--kv-dram-bytes) > 0");
  }
  // --config bypasses the flags' own checks (CLI::IsMember).
  for (const auto& [field, value, allowed] :
       {std::tuple<const char*, const std::string*, std::vector<std::string>>{
            "worker.device (--device)", &f->device.device, {"auto", "cpu", "cuda", "cpu-guarded"}},
        {"worker.kv_dtype (--kv-dtype)", &f->device.kv_dtype, {"auto", "f32", "bf16", "f16"}}}) {
    if (std::find(allowed.begin(), allowed.end(), *value) == allowed.end()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: %s is '%s'; must be one of: %s", source, field,
                                                        *value, absl::StrJoin(allowed, ", ")));
    }
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

std::string EffectiveConfigJson(const RouterFlags& f) { return ToJson(EffectiveConfig(f)); }

std::string EffectiveConfigJson(const WorkerFlags& f) { return ToJson(EffectiveConfig(f)); }

std::string EffectiveConfigJson(const StoreFlags& f) { return ToJson(EffectiveConfig(f)); }

absl::Status ResolveStoreFlags(const CLI::App& cmd, StoreFlags* f) {
  if (!f->config.empty()) {
    absl::StatusOr<tandem::v1::ClusterConfig> config = LoadClusterConfig(f->config);
    if (!config.ok()) return config.status();
    const Merger m(cmd);
    const tandem::v1::StoreConfig& s = config->store();
    m.Set("--router", s.has_router(), s.router(), &f->router);
    m.Set("--host", s.has_host(), s.host(), &f->host);
    m.Set("--port", s.has_port(), s.port(), &f->port);
    m.Set("--model", s.has_model(), s.model(), &f->model);
    m.Set("--block-size", s.has_block_size(), s.block_size(), &f->block_size);
    m.Set("--kv-dtype", s.has_kv_dtype(), s.kv_dtype(), &f->kv_dtype);
    m.Set("--dram-bytes", s.has_dram_bytes(), s.dram_bytes(), &f->dram_bytes);
    m.Set("--ssd-path", s.has_ssd_path(), s.ssd_path(), &f->ssd_path);
    m.Set("--ssd-bytes", s.has_ssd_bytes(), s.ssd_bytes(), &f->ssd_bytes);
    m.Set("--ucx", s.has_ucx(), s.ucx(), &f->ucx);
    m.Set("--metrics-port", s.has_metrics_port(), s.metrics_port(), &f->metrics_port);
    MergeTls(m, config->tls(), &f->tls);
  }
  const std::string source = Source(f->config);
  if (f->host.empty()) return absl::InvalidArgumentError(source + ": store.host (--host) is empty");
  if (f->router.empty()) return absl::InvalidArgumentError(source + ": store.router (--router) is empty");
  for (absl::Status s :
       {CheckRange(source, "store.port", "--port", f->port, 0, 65535),
        CheckRange(source, "store.block_size", "--block-size", f->block_size, 1, 1 << 16),
        CheckRange(source, "store.dram_bytes", "--dram-bytes", f->dram_bytes, 1, int64_t{1} << 50),
        CheckRange(source, "store.ssd_bytes", "--ssd-bytes", f->ssd_bytes, 1, int64_t{1} << 56),
        CheckRange(source, "store.metrics_port", "--metrics-port", f->metrics_port, -1, 65535)}) {
    if (!s.ok()) return s;
  }
  if (f->kv_dtype != "f32" && f->kv_dtype != "bf16" && f->kv_dtype != "f16") {
    return absl::InvalidArgumentError(source + ": store.kv_dtype (--kv-dtype) is '" + f->kv_dtype +
                                      "'; must be one of: f32, bf16, f16");
  }
  return ValidateTls(source, &f->tls);
}

}  // namespace tandem::cli
