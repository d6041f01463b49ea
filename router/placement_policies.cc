#include "router/placement_policies.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_format.h"

namespace tandem::router {
namespace {

// The first candidate whose key is smallest (ties: the earlier one). Each
// key is computed once.
template <typename Candidate, typename KeyFn>
size_t ArgMin(absl::Span<const Candidate> candidates, KeyFn key) {
  size_t best = 0;
  auto best_key = key(candidates[0]);
  for (size_t i = 1; i < candidates.size(); ++i) {
    auto k = key(candidates[i]);
    if (k < best_key) {
      best = i;
      best_key = std::move(k);
    }
  }
  return best;
}

size_t NextInTurn(size_t n, ChooserState* state) { return state->cursor++ % n; }

size_t Uniform(size_t n, ChooserState* state) {
  return std::uniform_int_distribution<size_t>(0, n - 1)(state->rng);
}

}  // namespace

const char* PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kKv:
      return "kv";
    case Policy::kRoundRobin:
      return "round_robin";
    case Policy::kLeastLoaded:
      return "least_loaded";
    case Policy::kRandom:
      return "random";
  }
  return "unknown";
}

absl::StatusOr<Policy> ParsePolicy(std::string_view name) {
  for (Policy p : {Policy::kKv, Policy::kRoundRobin, Policy::kLeastLoaded, Policy::kRandom}) {
    if (name == PolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("policy: '%s' is not one of kv, round_robin, least_loaded, random", std::string(name)));
}

size_t ChooseDecodeKv(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks, ChooserState*) {
  return ArgMin(candidates, [needed_blocks](const DecodeCandidate& c) {
    const bool lacks_room = c.total_blocks > 0 && c.free_blocks < needed_blocks;
    return std::make_tuple(lacks_room, c.running, -c.free_blocks);
  });
}

size_t ChooseDecodeLeastLoaded(absl::Span<const DecodeCandidate> candidates, int32_t, ChooserState*) {
  return ArgMin(candidates,
                [](const DecodeCandidate& c) { return std::make_tuple(c.running, -c.free_blocks); });
}

size_t ChooseDecodeRoundRobin(absl::Span<const DecodeCandidate> candidates, int32_t, ChooserState* state) {
  return NextInTurn(candidates.size(), state);
}

size_t ChooseDecodeRandom(absl::Span<const DecodeCandidate> candidates, int32_t, ChooserState* state) {
  return Uniform(candidates.size(), state);
}

size_t ChoosePrefillKv(absl::Span<const PrefillCandidate> candidates, ChooserState*) {
  return ArgMin(candidates,
                [](const PrefillCandidate& c) { return c.predicted_ttft_ms + c.weighted_compute_ms; });
}

size_t ChoosePrefillLeastLoaded(absl::Span<const PrefillCandidate> candidates, ChooserState*) {
  return ArgMin(candidates, [](const PrefillCandidate& c) { return c.queued_tokens; });
}

size_t ChoosePrefillRoundRobin(absl::Span<const PrefillCandidate> candidates, ChooserState* state) {
  return NextInTurn(candidates.size(), state);
}

size_t ChoosePrefillRandom(absl::Span<const PrefillCandidate> candidates, ChooserState* state) {
  return Uniform(candidates.size(), state);
}

PolicyChoosers ChoosersFor(Policy policy) {
  switch (policy) {
    case Policy::kRoundRobin:
      return {ChooseDecodeRoundRobin, ChoosePrefillRoundRobin};
    case Policy::kLeastLoaded:
      return {ChooseDecodeLeastLoaded, ChoosePrefillLeastLoaded};
    case Policy::kRandom:
      return {ChooseDecodeRandom, ChoosePrefillRandom};
    case Policy::kKv:
      break;
  }
  return {ChooseDecodeKv, ChoosePrefillKv};
}

int32_t CachedTokens(const KvIndex::PrefixStats* match, int32_t block_size, int32_t prompt_tokens) {
  return match == nullptr ? 0 : std::min(match->blocks * block_size, prompt_tokens - 1);
}

double PredictTpotMs(double decode_step_ms, double decode_batch, int32_t running) {
  if (decode_step_ms <= 0) return 0;
  // A decode step's time grows with its batch; scale the recent mean by the
  // batch this request would join.
  return decode_step_ms * std::max(1.0, (running + 1) / std::max(1.0, decode_batch));
}

int64_t DecodeRoom(double decode_step_ms, double decode_batch, int32_t running, double tpot_limit_ms) {
  if (decode_step_ms <= 0) return -1;
  // A model whose steps pass the limit at any batch (a large model, a slow
  // device) would otherwise decode one request at a time: that costs its
  // throughput and buys no TPOT worth having.
  constexpr int32_t kAlwaysRunning = 8;
  // PredictTpotMs(running + k) <= limit for the k-th request more while
  // running + k + 1 <= limit x batch / step (and the limit is past the
  // step itself).
  const double most = tpot_limit_ms >= decode_step_ms
                          ? std::floor(tpot_limit_ms * std::max(1.0, decode_batch) / decode_step_ms)
                          : 0;
  return std::max<int64_t>(
      0, std::max<int64_t>(static_cast<int64_t>(most), kAlwaysRunning) - std::max(0, running));
}

PrefillPrediction PredictPrefill(const PlacementOptions& options, const PrefillCostInputs& in) {
  const int32_t bs = std::max(1, in.block_size);
  PrefillPrediction out;
  out.cached_tokens = CachedTokens(in.own, bs, in.prompt_tokens);
  out.queue_ms = static_cast<double>(in.queued_tokens) * in.ms_per_token;
  double load_ms = 0;
  int32_t own_blocks = 0;
  if (in.own != nullptr) {
    const int32_t dram = in.own->tier_blocks[tandem::v1::KV_TIER_DRAM];
    const int32_t ssd = in.own->tier_blocks[tandem::v1::KV_TIER_SSD];
    out.blocks_to_load = dram + ssd;
    load_ms = dram * options.dram_load_ms_per_block + ssd * options.ssd_load_ms_per_block;
    own_blocks = in.own->blocks;
  }
  if (in.store != nullptr && in.store->blocks > own_blocks) {
    out.cached_tokens = CachedTokens(in.store, bs, in.prompt_tokens);
    out.store_blocks = std::max(0, out.cached_tokens / bs - own_blocks);
    load_ms += out.store_blocks * options.store_load_ms_per_block;
  }
  out.ttft_ms =
      out.queue_ms + (in.prompt_tokens - out.cached_tokens) * in.ms_per_token + load_ms + in.transfer_ms;
  return out;
}

bool DecideAggregation(const PlacementOptions& options, const AggregationInputs& in) {
  if (!in.has_prefill) return true;
  if (options.policy != Policy::kKv) return false;
  if (options.aggregate_max_uncached_tokens >= 0 &&
      in.decode_uncached_tokens <= options.aggregate_max_uncached_tokens) {
    return true;
  }
  return options.aggregate_when_queue_ms > 0 && in.prefill_queue_ms > options.aggregate_when_queue_ms &&
         in.aggregated_ttft_ms < in.prefill_ttft_ms;
}

absl::Status Admit(const PlacementOptions& options, const AdmissionInputs& in) {
  const double ttft_slo = in.ttft_slo_ms > 0 ? in.ttft_slo_ms : options.default_ttft_slo_ms;
  const double tpot_slo = in.tpot_slo_ms > 0 ? in.tpot_slo_ms : options.default_tpot_slo_ms;
  if (ttft_slo > 0 && in.predicted_ttft_ms > ttft_slo) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("predicted TTFT %.1f ms exceeds the target %.1f ms (best placement: %s); retry later",
                        in.predicted_ttft_ms, ttft_slo, std::string(in.prefill_worker)));
  }
  if (tpot_slo > 0 && in.predicted_tpot_ms > tpot_slo) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("predicted TPOT %.2f ms exceeds the target %.2f ms (decode worker %s); retry later",
                        in.predicted_tpot_ms, tpot_slo, std::string(in.decode_worker)));
  }
  return absl::OkStatus();
}

}  // namespace tandem::router
