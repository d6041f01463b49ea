#include "loadgen/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tandem::loadgen {
namespace {

nlohmann::ordered_json OrNull(const std::optional<double>& v) {
  return v.has_value() ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
}

nlohmann::ordered_json ToJson(const Percentiles& p) {
  nlohmann::ordered_json j;
  j["p50"] = OrNull(p.p50);
  j["p90"] = OrNull(p.p90);
  j["p99"] = OrNull(p.p99);
  j["mean"] = OrNull(p.mean);
  return j;
}

}  // namespace

std::optional<double> TpotMs(const RequestResult& r) {
  if (!r.ttft_ms.has_value() || r.output_tokens < 2) return std::nullopt;
  return (r.e2e_ms - *r.ttft_ms) / (r.output_tokens - 1);
}

std::optional<double> TtftPredictionErrorMs(const RequestResult& r) {
  if (!r.predicted_ttft_ms.has_value() || !r.router_ttft_ms.has_value()) return std::nullopt;
  return *r.router_ttft_ms - *r.predicted_ttft_ms;
}

bool MeetsSlo(const RequestResult& r, const Slo& slo) {
  if (r.outcome != Outcome::kCompleted) return false;
  if (slo.ttft_ms.has_value() && !(r.ttft_ms.has_value() && *r.ttft_ms <= *slo.ttft_ms)) return false;
  if (slo.tpot_ms.has_value()) {
    const std::optional<double> tpot = TpotMs(r);
    if (tpot.has_value() && *tpot > *slo.tpot_ms) return false;
  }
  return true;
}

std::optional<double> Percentile(std::vector<double> values, double q) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(q, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

Percentiles ComputePercentiles(const std::vector<double>& values) {
  Percentiles p;
  if (values.empty()) return p;
  std::vector<double> sorted = values;
  std::sort(sorted.begin(), sorted.end());
  p.p50 = Percentile(sorted, 50);
  p.p90 = Percentile(sorted, 90);
  p.p99 = Percentile(sorted, 99);
  p.mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / static_cast<double>(sorted.size());
  return p;
}

RunSummary Summarize(const std::vector<RequestResult>& results, const Slo& slo, double duration_s) {
  RunSummary s;
  s.slo = slo;
  s.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e, rejected, prediction_error, prediction_abs_error;
  for (const RequestResult& r : results) {
    ++s.requests;
    if (r.retries > 0) ++s.retried;
    switch (r.outcome) {
      case Outcome::kRejected:
        ++s.rejected;
        rejected.push_back(r.e2e_ms);
        s.rejected_max_ms = std::max(s.rejected_max_ms, r.e2e_ms);
        continue;
      case Outcome::kError:
        ++s.errors;
        ++s.errors_by_code[r.error_code];
        s.first_error_by_code.emplace(r.error_code, r.error_message);
        continue;
      case Outcome::kCompleted:
        break;
    }
    ++s.completed;
    if (MeetsSlo(r, slo)) ++s.good;
    s.prompt_tokens += r.prompt_tokens;
    s.cached_tokens += r.cached_tokens;
    s.output_tokens += r.output_tokens;
    if (r.ttft_ms.has_value()) ttft.push_back(*r.ttft_ms);
    if (std::optional<double> t = TpotMs(r)) tpot.push_back(*t);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    e2e.push_back(r.e2e_ms);
    if (std::optional<double> error = TtftPredictionErrorMs(r)) {
      prediction_error.push_back(*error);
      prediction_abs_error.push_back(std::abs(*error));
    }
  }
  if (duration_s > 0) {
    s.goodput_rps = static_cast<double>(s.good) / duration_s;
    s.throughput_rps = static_cast<double>(s.completed) / duration_s;
    s.output_tokens_per_s = static_cast<double>(s.output_tokens) / duration_s;
  }
  if (s.prompt_tokens > 0) {
    s.prefix_hit_rate = static_cast<double>(s.cached_tokens) / static_cast<double>(s.prompt_tokens);
  }
  s.ttft_ms = ComputePercentiles(ttft);
  s.tpot_ms = ComputePercentiles(tpot);
  s.itl_ms = ComputePercentiles(itl);
  s.e2e_ms = ComputePercentiles(e2e);
  s.rejected_ms = ComputePercentiles(rejected);
  s.predicted = static_cast<int64_t>(prediction_error.size());
  s.ttft_prediction_error_ms = ComputePercentiles(prediction_error);
  s.ttft_prediction_abs_error_ms = ComputePercentiles(prediction_abs_error);
  return s;
}

std::map<std::string, RunSummary> SummarizeByTenant(const std::vector<RequestResult>& results, const Slo& slo,
                                                    double duration_s) {
  std::map<std::string, std::vector<RequestResult>> by_tenant;
  bool any = false;
  for (const RequestResult& r : results) {
    any = any || !r.tenant.empty();
    by_tenant[r.tenant].push_back(r);
  }
  std::map<std::string, RunSummary> out;
  if (!any) return out;
  for (const auto& [tenant, rs] : by_tenant) out[tenant] = Summarize(rs, slo, duration_s);
  return out;
}

nlohmann::ordered_json SummaryToJson(const RunSummary& s, const std::vector<RequestResult>& results,
                                     bool samples) {
  nlohmann::ordered_json j;
  j["requests"] = s.requests;
  j["completed"] = s.completed;
  j["rejected"] = s.rejected;
  j["prefix_hit_rate"] = s.prefix_hit_rate;
  j["hit_rate_bound"] = OrNull(s.hit_rate_bound);
  j["goodput_rps"] = s.goodput_rps;
  j["ttft_ms"] = ToJson(s.ttft_ms);
  j["tpot_ms"] = ToJson(s.tpot_ms);
  j["itl_ms"] = ToJson(s.itl_ms);
  j["e2e_ms"] = ToJson(s.e2e_ms);
  j["errors"] = s.errors;
  j["errors_by_code"] = nlohmann::ordered_json::object();
  for (const auto& [code, n] : s.errors_by_code) j["errors_by_code"][code] = n;
  j["first_error_by_code"] = nlohmann::ordered_json::object();
  for (const auto& [code, m] : s.first_error_by_code) j["first_error_by_code"][code] = m;
  j["duration_s"] = s.duration_s;
  j["throughput_rps"] = s.throughput_rps;
  j["output_tokens_per_s"] = s.output_tokens_per_s;
  j["prompt_tokens"] = s.prompt_tokens;
  j["cached_tokens"] = s.cached_tokens;
  j["output_tokens"] = s.output_tokens;
  j["slo"] = {{"ttft_ms", OrNull(s.slo.ttft_ms)}, {"tpot_ms", OrNull(s.slo.tpot_ms)}};
  j["rejected_ms"] = ToJson(s.rejected_ms);
  j["rejected_max_ms"] = s.rejected_max_ms;
  j["retried"] = s.retried;
  j["predicted_requests"] = s.predicted;
  j["ttft_prediction_error_ms"] = ToJson(s.ttft_prediction_error_ms);
  j["ttft_prediction_abs_error_ms"] = ToJson(s.ttft_prediction_abs_error_ms);
  if (samples) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const RequestResult& r : results) {
      if (r.outcome != Outcome::kCompleted) continue;
      nlohmann::ordered_json one;
      one["sent_ms"] = r.sent_ms;
      one["ttft_ms"] = OrNull(r.ttft_ms);
      one["tpot_ms"] = OrNull(TpotMs(r));
      one["e2e_ms"] = r.e2e_ms;
      one["prompt_tokens"] = r.prompt_tokens;
      one["cached_tokens"] = r.cached_tokens;
      one["output_tokens"] = r.output_tokens;
      one["met_slo"] = MeetsSlo(r, s.slo);
      one["predicted_ttft_ms"] = OrNull(r.predicted_ttft_ms);
      one["router_ttft_ms"] = OrNull(r.router_ttft_ms);
      one["queue_ms"] = OrNull(r.queue_ms);
      one["prefill_ms"] = OrNull(r.prefill_ms);
      one["transfer_ms"] = OrNull(r.transfer_ms);
      one["admission_ms"] = OrNull(r.admission_ms);
      one["reserve_ms"] = OrNull(r.reserve_ms);
      if (!r.tenant.empty()) one["tenant"] = r.tenant;
      list.push_back(std::move(one));
    }
    j["samples"] = std::move(list);
  }
  return j;
}

}  // namespace tandem::loadgen
