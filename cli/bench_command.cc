#include "cli/bench_command.h"

#include <grpcpp/grpcpp.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "loadgen/metrics.h"
#include "loadgen/runner.h"
#include "loadgen/trace.h"
#include "loadgen/workload.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/tandem.grpc.pb.h"

namespace tandem::cli {
namespace {

constexpr const char* kPrefix = "tandem bench";

std::string Cell(const std::optional<double>& v) {
  return v.has_value() ? absl::StrFormat("%10.2f", *v) : absl::StrFormat("%10s", "-");
}

void PrintTable(const BenchFlags& f, const loadgen::RunSummary& s) {
  std::cout << absl::StrFormat("tandem bench%s: %d requests to %s in %.2f s\n",
                               f.label.empty() ? "" : " [" + f.label + "]", s.requests, f.target,
                               s.duration_s);
  std::cout << absl::StrFormat("  completed %d  rejected %d  errors %d", s.completed, s.rejected, s.errors);
  for (const auto& [code, n] : s.errors_by_code) std::cout << absl::StrFormat("  (%s: %d)", code, n);
  if (s.retried > 0) std::cout << absl::StrFormat("  retried on another router %d", s.retried);
  std::cout << "\n";
  for (const auto& [code, message] : s.first_error_by_code) {
    std::cout << absl::StrFormat("  first %s: %s\n", code, message);
  }
  std::string slo;
  if (s.slo.ttft_ms) slo += absl::StrFormat(" TTFT <= %g ms", *s.slo.ttft_ms);
  if (s.slo.tpot_ms) slo += absl::StrFormat(" TPOT <= %g ms", *s.slo.tpot_ms);
  if (s.rejected > 0) {
    std::cout << absl::StrFormat("  refused after (ms) p50 %s  p99 %s  max %.2f\n", Cell(s.rejected_ms.p50),
                                 Cell(s.rejected_ms.p99), s.rejected_max_ms);
  }
  std::cout << absl::StrFormat("  goodput %.3f req/s (%d within SLO:%s)\n", s.goodput_rps, s.good,
                               slo.empty() ? " none given" : slo);
  std::cout << absl::StrFormat("  throughput %.3f req/s, %.1f output tokens/s\n", s.throughput_rps,
                               s.output_tokens_per_s);
  std::cout << absl::StrFormat("  prefix hit rate %.4f (%d of %d prompt tokens cached)", s.prefix_hit_rate,
                               s.cached_tokens, s.prompt_tokens);
  if (s.hit_rate_bound.has_value()) {
    // The bound counts every request sent, the measured rate completed ones.
    std::cout << absl::StrFormat("; sequential infinite-cache bound %.4f", *s.hit_rate_bound);
    if (*s.hit_rate_bound > 0) {
      std::cout << absl::StrFormat(" (%.0f%% of it)", 100 * s.prefix_hit_rate / *s.hit_rate_bound);
    }
  }
  std::cout << "\n";
  std::cout << absl::StrFormat("  %-10s%10s%10s%10s%10s\n", "ms", "p50", "p90", "p99", "mean");
  const std::pair<const char*, const loadgen::Percentiles*> rows[] = {
      {"TTFT", &s.ttft_ms}, {"TPOT", &s.tpot_ms}, {"ITL", &s.itl_ms}, {"E2E", &s.e2e_ms}};
  for (const auto& [name, p] : rows) {
    std::cout << absl::StrFormat("  %-10s", name) << Cell(p->p50) << Cell(p->p90) << Cell(p->p99)
              << Cell(p->mean) << "\n";
  }
  if (s.predicted > 0) {
    // The router's TTFT prediction against the TTFT the router measured.
    std::cout << absl::StrFormat("  TTFT prediction error (router-measured - predicted, %d requests)\n",
                                 s.predicted);
    const std::pair<const char*, const loadgen::Percentiles*> errors[] = {
        {"signed", &s.ttft_prediction_error_ms}, {"|error|", &s.ttft_prediction_abs_error_ms}};
    for (const auto& [name, p] : errors) {
      std::cout << absl::StrFormat("  %-10s", name) << Cell(p->p50) << Cell(p->p90) << Cell(p->p99)
                << Cell(p->mean) << "\n";
    }
  }
  std::cout << std::flush;
}

// Each tenant's outcomes and TTFT (--tenant).
void PrintTenants(const std::map<std::string, loadgen::RunSummary>& tenants) {
  if (tenants.empty()) return;
  std::cout << absl::StrFormat("  %-12s%10s%10s%10s%10s%10s%10s%10s\n", "tenant", "completed", "rejected",
                               "errors", "TTFT p50", "p90", "p99", "mean");
  for (const auto& [name, s] : tenants) {
    std::cout << absl::StrFormat("  %-12s%10d%10d%10d", name.empty() ? "(none)" : name, s.completed,
                                 s.rejected, s.errors)
              << Cell(s.ttft_ms.p50) << Cell(s.ttft_ms.p90) << Cell(s.ttft_ms.p99) << Cell(s.ttft_ms.mean)
              << "\n";
  }
  std::cout << std::flush;
}

// --tenant values; InvalidArgument names a bad one.
absl::StatusOr<std::vector<loadgen::TenantShare>> ParseTenants(const std::vector<std::string>& values) {
  std::vector<loadgen::TenantShare> out;
  for (const std::string& v : values) {
    const std::vector<std::string> parts = absl::StrSplit(v, ':');
    loadgen::TenantShare t;
    bool ok = (parts.size() == 2 || parts.size() == 3) && !parts[0].empty() &&
              absl::SimpleAtod(parts[1], &t.share) && t.share > 0 && std::isfinite(t.share);
    if (ok && parts.size() == 3) ok = absl::SimpleAtoi(parts[2], &t.priority);
    if (!ok)
      return absl::InvalidArgumentError("--tenant '" + v + "': expected NAME:SHARE[:PRIORITY], SHARE > 0");
    t.name = parts[0];
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

void RegisterBench(CLI::App* cmd, BenchFlags* f) {
  cmd->add_option("--target", f->target,
                  "Router address host:port, or router replicas of one cluster as a comma-separated list: "
                  "requests go to each in turn, and one whose router is unreachable or dies is sent again "
                  "to the next (counted as retried)")
      ->required();
  auto* trace = cmd->add_option("--trace", f->trace, "Mooncake-format trace (JSON Lines) to replay");
  auto* synthetic = cmd->add_flag("--synthetic", f->synthetic, "Generate a synthetic workload instead");
  trace->excludes(synthetic);
  cmd->add_option("--num-requests", f->num_requests, "--synthetic: requests")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--input-len", f->input_len, "--synthetic: prompt tokens")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output-len", f->output_len, "--synthetic: output tokens")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--prefix-fraction", f->prefix_fraction,
                  "--synthetic: fraction of each prompt (whole blocks) that is a shared prefix")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--num-prefixes", f->num_prefixes, "--synthetic: distinct shared prefixes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  auto* rate = cmd->add_option("--rate", f->rate, "Send at a Poisson rate of R requests/s (seeded)")
                   ->check(CLI::PositiveNumber);
  auto* scale = cmd->add_option("--time-scale", f->time_scale,
                                "Multiply the trace's timestamps by X (0.1: ten times faster)")
                    ->check(CLI::NonNegativeNumber);
  rate->excludes(scale);
  cmd->add_option("--seed", f->seed, "Seed of the Poisson schedule and the synthetic workload")
      ->capture_default_str();
  cmd->add_option("--max-requests", f->max_requests, "Send at most N requests (the first N); 0: all")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--slo-ttft", f->slo_ttft_ms, "TTFT target, ms (sent in each request; goodput)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--slo-tpot", f->slo_tpot_ms, "TPOT target, ms (sent in each request; goodput)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--json", f->json, "Write the report (with per-request samples) to FILE");
  cmd->add_option("--label", f->label, "Label of this run in the report (e.g. the routing policy)");
  cmd->add_option("--block-tokens", f->block_tokens,
                  "Tokens per trace block (shrinks the trace's 512; 0: 512 for --trace, the cluster's KV "
                  "block size for --synthetic)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-tokens-cap", f->max_tokens_cap, "Cap every request's output length; 0: none")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-input-tokens", f->max_input_tokens, "Cut prompts to N tokens (front kept); 0: none")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option(
         "--context-length", f->context_length,
         "Override the model's context (asked of the cluster otherwise): prompts are cut so prompt + "
         "max_tokens - 1 fits; 0: the cluster's")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--concurrency-limit", f->concurrency_limit, "At most N requests in flight; 0: no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--model", f->model, "Model id or spec sent in each request (the cluster checks it)");
  cmd->add_option("--vocab-size", f->vocab_size, "Prompt token ids are drawn below this")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--first-token-id", f->first_token_id, "Lowest id drawn (skips unk/BOS/EOS)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--bos-id", f->bos_id, "First token of every prompt; -1: none")->capture_default_str();
  cmd->add_option("--timeout-s", f->timeout_s, "Deadline of each request, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", f->quiet, "No progress lines on stderr");
  cmd->add_option("--tenant", f->tenants,
                  "NAME:SHARE[:PRIORITY]: send SHARE parts of the requests as tenant NAME with that priority "
                  "(repeatable; shares are relative, e.g. --tenant heavy:10 --tenant light:1); the report "
                  "adds each tenant's outcomes and TTFT");
  AddTlsFlags(cmd, &f->tls);
  cmd->callback([f] {
    const int code = RunBench(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

namespace {

// Trace records to replay: --synthetic's generated ones or --trace's. On
// error, the message is printed and *exit_code set.
std::optional<std::vector<loadgen::TraceRequest>> LoadRecords(const BenchFlags& f, int32_t block_tokens,
                                                              int* exit_code) {
  if (f.synthetic) {
    const int32_t n = f.max_requests > 0 && f.max_requests < f.num_requests
                          ? static_cast<int32_t>(f.max_requests)
                          : f.num_requests;
    absl::StatusOr<std::vector<loadgen::TraceRequest>> made =
        loadgen::GenerateSyntheticTrace({.num_requests = n,
                                         .input_length = f.input_len,
                                         .output_length = f.output_len,
                                         .shared_prefix_fraction = f.prefix_fraction,
                                         .num_prefixes = f.num_prefixes,
                                         .block_tokens = block_tokens,
                                         .seed = f.seed});
    if (!made.ok()) {
      std::cerr << kPrefix << ": " << made.status().message() << "\n";
      *exit_code = 2;
      return std::nullopt;
    }
    return *std::move(made);
  }
  absl::StatusOr<std::vector<loadgen::TraceRequest>> read =
      loadgen::ReadMooncakeTrace(f.trace, f.max_requests);
  if (!read.ok()) {
    std::cerr << kPrefix << ": " << read.status().message() << "\n";
    *exit_code = 1;
    return std::nullopt;
  }
  return *std::move(read);
}

// When each record is sent: --rate's Poisson schedule, all at once for
// --synthetic, else the trace's timestamps scaled by --time-scale.
std::vector<absl::Duration> SendTimes(const BenchFlags& f,
                                      const std::vector<loadgen::TraceRequest>& records) {
  if (f.rate.has_value()) {
    return loadgen::PoissonSchedule(static_cast<int64_t>(records.size()), *f.rate, f.seed);
  }
  if (f.synthetic) return std::vector<absl::Duration>(records.size(), absl::ZeroDuration());
  return loadgen::TraceSchedule(records, f.time_scale.value_or(1.0));
}

// The runner's options: the channel (TLS from the flags), limits, SLO and
// progress lines on stderr unless --quiet.
absl::StatusOr<loadgen::Runner::Options> RunnerOptions(const BenchFlags& f, size_t total) {
  TlsFlags tls = f.tls;
  tls.enabled = !tls.ca_file.empty() || !tls.cert_file.empty();
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(tls);
  if (!channels.ok()) return channels.status();
  loadgen::Runner::Options options;
  // --target a,b,...: router replicas of one cluster; requests go to each
  // in turn, and one whose router is unreachable or dies is sent to the next.
  const std::vector<std::string> targets = absl::StrSplit(f.target, ',', absl::SkipWhitespace());
  if (targets.empty()) return absl::InvalidArgumentError("--target: no router address");
  options.channel = (*channels)(targets.front());
  for (size_t i = 1; i < targets.size(); ++i) options.replicas.push_back((*channels)(targets[i]));
  options.concurrency_limit = f.concurrency_limit;
  options.request_timeout = absl::Seconds(f.timeout_s);
  options.slo = {.ttft_ms = f.slo_ttft_ms, .tpot_ms = f.slo_tpot_ms};
  options.model = f.model;
  if (!f.quiet) {
    options.on_progress = [total](const loadgen::Runner::Progress& p) {
      std::fprintf(stderr,
                   "[%6.1f s] sent %lld/%zu  completed %lld  rejected %lld  errors %lld  in-flight %lld\n",
                   absl::ToDoubleSeconds(p.elapsed), static_cast<long long>(p.sent), total,
                   static_cast<long long>(p.completed), static_cast<long long>(p.rejected),
                   static_cast<long long>(p.errors), static_cast<long long>(p.in_flight));
    };
  }
  return options;
}

// What the router says the cluster serves (tandem.v1.Tandem/GetClusterInfo),
// or unset with a warning on stderr when it cannot say (a router without
// the call, or none there: the run reports that itself).
std::optional<tandem::v1::ClusterInfo> AskCluster(const BenchFlags& f) {
  TlsFlags tls = f.tls;
  tls.enabled = !tls.ca_file.empty() || !tls.cert_file.empty();
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(tls);
  if (!channels.ok()) return std::nullopt;
  // The first replica of --target that answers.
  grpc::Status s(grpc::StatusCode::INVALID_ARGUMENT, "no router address");
  tandem::v1::ClusterInfo info;
  for (absl::string_view target : absl::StrSplit(f.target, ',', absl::SkipWhitespace())) {
    std::unique_ptr<tandem::v1::Tandem::Stub> stub =
        tandem::v1::Tandem::NewStub((*channels)(std::string(target)));
    grpc::ClientContext ctx;
    // Not wait_for_ready: with no router there, the run's own error says so
    // at once rather than after this deadline.
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    s = stub->GetClusterInfo(&ctx, tandem::v1::ClusterInfoRequest(), &info);
    if (s.ok()) break;
  }
  if (!s.ok()) {
    std::cerr << kPrefix << ": warning: could not ask " << f.target
              << " for the model's context length and block size (" << s.error_message()
              << "); using --context-length and --block-tokens as given\n";
    return std::nullopt;
  }
  return info;
}

// --json FILE: the summary with per-request samples and the run's settings.
bool WriteJsonReport(const BenchFlags& f, const loadgen::RunSummary& summary,
                     const std::map<std::string, loadgen::RunSummary>& by_tenant,
                     const loadgen::Runner::RunResult& run, const std::vector<absl::Duration>& times,
                     int32_t block_tokens, int32_t context_length) {
  nlohmann::ordered_json j = loadgen::SummaryToJson(summary, run.results, /*samples=*/true);
  j["label"] = f.label;
  j["workload"] = f.synthetic ? "synthetic" : f.trace;
  j["rate_rps"] = f.rate.has_value() ? nlohmann::ordered_json(*f.rate) : nlohmann::ordered_json(nullptr);
  j["time_scale"] = f.rate.has_value() || f.synthetic ? nlohmann::ordered_json(nullptr)
                                                      : nlohmann::ordered_json(f.time_scale.value_or(1.0));
  const double span = times.empty() ? 0 : absl::ToDoubleSeconds(times.back() - times.front());
  j["offered_rps"] = span > 0 ? nlohmann::ordered_json(static_cast<double>(times.size() - 1) / span)
                              : nlohmann::ordered_json(nullptr);
  j["block_tokens"] = block_tokens;
  j["context_length"] = context_length;
  j["concurrency_limit"] = f.concurrency_limit;
  if (!by_tenant.empty()) {
    nlohmann::ordered_json& tenants = j["tenants"];
    for (const auto& [name, s] : by_tenant) tenants[name] = loadgen::SummaryToJson(s, {}, /*samples=*/false);
  }
  std::ofstream out(f.json);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) {
    std::cerr << kPrefix << ": cannot write " << f.json << "\n";
    return false;
  }
  return true;
}

}  // namespace

int RunBench(const BenchFlags& f) {
  if (f.trace.empty() == !f.synthetic) {
    std::cerr << kPrefix << ": give --trace FILE or --synthetic\n";
    return 2;
  }
  if (f.synthetic && f.time_scale.has_value()) {
    std::cerr << kPrefix << ": --time-scale applies to a trace's timestamps; use --rate with --synthetic\n";
    return 2;
  }
  if (f.tls.cert_file.empty() != f.tls.key_file.empty()) {
    std::cerr << kPrefix << ": --tls-cert and --tls-key go together\n";
    return 2;
  }

  // --- The cluster's context length and block size; the flags override.
  const std::optional<tandem::v1::ClusterInfo> cluster = AskCluster(f);
  const int32_t context_length =
      f.context_length > 0 ? f.context_length : (cluster.has_value() ? cluster->context_length() : 0);
  const int32_t cluster_block = cluster.has_value() ? cluster->block_size() : 0;
  if (cluster.has_value() && !f.quiet) {
    std::cerr << absl::StrFormat(
        "%s: the cluster serves %s: context length %d%s, block size %d\n", kPrefix, cluster->model(),
        cluster->context_length(),
        f.context_length > 0 ? absl::StrFormat(" (--context-length %d used)", f.context_length) : "",
        cluster_block);
  }

  // --- The workload, as trace records, then prompts and send times.
  // A synthetic workload's blocks are the cluster's KV blocks, so shared
  // prefixes are shared cache blocks; a trace keeps its own 512.
  const int32_t block_tokens =
      f.block_tokens > 0 ? f.block_tokens : (f.synthetic ? (cluster_block > 0 ? cluster_block : 16) : 512);
  int exit_code = 0;
  std::optional<std::vector<loadgen::TraceRequest>> records = LoadRecords(f, block_tokens, &exit_code);
  if (!records.has_value()) return exit_code;
  absl::StatusOr<std::unique_ptr<loadgen::PromptSynthesizer>> synth = loadgen::PromptSynthesizer::Create({
      .vocab_size = f.vocab_size,
      .first_token_id = f.first_token_id,
      .bos_id = f.bos_id,
      .source_block_tokens = f.synthetic ? block_tokens : loadgen::kMooncakeBlockTokens,
      .block_tokens = block_tokens,
      .max_tokens_cap = f.max_tokens_cap,
      .max_input_tokens = f.max_input_tokens,
      .context_length = context_length,
      // A synthetic workload's blocks differ by --seed: its hash ids count
      // from 0 for every seed, so with one content per id two runs on the
      // same cluster (another seed, another tenant mix) would hit each
      // other's cache. A trace's ids name the same content in every run.
      .seed = f.synthetic ? f.seed : 0,
  });
  if (!synth.ok()) {
    std::cerr << kPrefix << ": " << synth.status().message() << "\n";
    return 2;
  }
  const std::vector<absl::Duration> times = SendTimes(f, *records);
  absl::StatusOr<std::vector<loadgen::TenantShare>> tenants = ParseTenants(f.tenants);
  if (!tenants.ok()) {
    std::cerr << kPrefix << ": " << tenants.status().message() << "\n";
    return 2;
  }
  const std::vector<size_t> tenant_of =
      loadgen::AssignTenants(static_cast<int64_t>(records->size()), *tenants, f.seed);
  std::vector<loadgen::Runner::Scheduled> schedule;
  schedule.reserve(records->size());
  std::vector<int32_t> prompt_lengths;  // as sent, for the hit-rate bound
  prompt_lengths.reserve(records->size());
  for (size_t i = 0; i < records->size(); ++i) {
    absl::StatusOr<loadgen::LoadRequest> r = (*synth)->Synthesize((*records)[i]);
    if (!r.ok()) {
      std::cerr << kPrefix << ": request " << i << ": " << r.status().message() << "\n";
      return 2;
    }
    prompt_lengths.push_back(static_cast<int32_t>(r->prompt.size()));
    if (!tenants->empty()) {
      r->tenant = (*tenants)[tenant_of[i]].name;
      r->priority = (*tenants)[tenant_of[i]].priority;
    }
    schedule.push_back({.send_at = times[i], .request = *std::move(r)});
  }

  // --- Run.
  absl::StatusOr<loadgen::Runner::Options> options = RunnerOptions(f, schedule.size());
  absl::StatusOr<std::unique_ptr<loadgen::Runner>> runner =
      options.ok() ? loadgen::Runner::Create(*options) : options.status();
  if (!runner.ok()) {
    std::cerr << kPrefix << ": " << runner.status().message() << "\n";
    return 2;
  }
  const loadgen::Runner::RunResult run = (*runner)->Run(schedule);
  loadgen::RunSummary summary =
      loadgen::Summarize(run.results, options->slo, absl::ToDoubleSeconds(run.duration));
  summary.hit_rate_bound =
      loadgen::InfiniteCacheHitRateBound(*records, prompt_lengths, block_tokens).hit_rate;
  PrintTable(f, summary);
  const std::map<std::string, loadgen::RunSummary> by_tenant =
      loadgen::SummarizeByTenant(run.results, options->slo, absl::ToDoubleSeconds(run.duration));
  PrintTenants(by_tenant);
  if (!f.json.empty() && !WriteJsonReport(f, summary, by_tenant, run, times, block_tokens, context_length)) {
    return 1;
  }
  if (summary.requests > 0 && summary.errors == summary.requests) {
    std::cerr << kPrefix << ": every request failed; is a router (tandem up / tandem router) serving at "
              << f.target << "?\n";
    return 1;
  }
  return 0;
}

}  // namespace tandem::cli
