#include "router/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace tandem::router {
namespace {

using tandem::v1::WORKER_ROLE_DECODE;
using tandem::v1::WORKER_ROLE_PREFILL;

int64_t QueuedTokens(const WorkerView& w) {
  // The worker's report covers every router's work but lags; this router's
  // own in-flight count is current but partial. The larger is the better
  // guess without counting the same tokens twice.
  return std::max<int64_t>(w.load.queued_prefill_tokens(), w.inflight_prefill_tokens);
}

int32_t Running(const WorkerView& w) {
  return std::max(w.load.running() + w.load.waiting(), w.inflight_requests);
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

void SetPrefetchHint(const PlacementDecision& decision, tandem::v1::PrefetchHint* hint) {
  hint->set_first_block(decision.prefetch_first_block);
  hint->mutable_block_hashes()->Assign(decision.prefetch_hashes.begin(), decision.prefetch_hashes.end());
}

Placement::Placement(PlacementOptions options, WorkerRegistry* registry, const KvIndex* index)
    : options_(options), registry_(registry), index_(index), rng_(options.seed) {}

double Placement::MsPerTokenLocked(const std::string& worker_id) const {
  if (!learned_.empty()) {  // skips hashing the id before any report
    auto it = learned_.find(worker_id);
    if (it != learned_.end() && it->second.ms_per_token > 0) return it->second.ms_per_token;
  }
  return mean_ms_per_token_ > 0 ? mean_ms_per_token_ : options_.default_ms_per_token;
}

double Placement::MsPerToken(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return MsPerTokenLocked(worker_id);
}

void Placement::ObservePrefill(const std::string& worker_id, const PrefillObservation& o) {
  const int32_t computed = o.prompt_tokens - o.cached_tokens;
  absl::MutexLock lock(&mu_);
  const double a = options_.learning_rate;
  Learned& l = learned_[worker_id];
  if (computed > 0 && o.prefill_ms > 0) {
    const double sample = o.prefill_ms / computed;
    l.ms_per_token = l.ms_per_token == 0 ? sample : (1 - a) * l.ms_per_token + a * sample;
    double sum = 0;
    int n = 0;
    for (const auto& [id, learned] : learned_) {
      if (learned.ms_per_token > 0) {
        sum += learned.ms_per_token;
        ++n;
      }
    }
    mean_ms_per_token_ = n > 0 ? sum / n : 0;
  }
  if (o.transferred_blocks > 0 && o.transfer_ms >= 0) {
    const double sample = o.transfer_ms / o.transferred_blocks;
    transfer_ms_per_block_ =
        transfer_ms_per_block_ == 0 ? sample : (1 - a) * transfer_ms_per_block_ + a * sample;
  }
}

absl::StatusOr<PlacementDecision> Placement::Place(const PlacementRequest& req) {
  const int32_t bs = std::max(1, req.block_size);
  const int32_t prompt_blocks = (req.prompt_tokens + bs - 1) / bs;
  const int32_t needed_blocks = (req.prompt_tokens + req.max_tokens + bs - 1) / bs;
  const Policy policy = options_.policy;

  // Every worker's cached prefix for this prompt (also for the baselines:
  // their predictions feed admission and the reported hit rate).
  std::vector<KvIndex::PrefixMatch> matches = index_->Match(req.block_hashes);
  // Keyed by views of the ids in `matches` (no copies: this map can hold
  // every worker when a system prompt is cached everywhere).
  absl::flat_hash_map<absl::string_view, const KvIndex::PrefixMatch*> by_worker;
  by_worker.reserve(matches.size());
  for (const KvIndex::PrefixMatch& m : matches) {
    by_worker[absl::string_view(m.worker_id.data(), m.worker_id.size())] = &m;
  }
  auto match_of = [&](const std::string& id) -> const KvIndex::PrefixMatch* {
    auto it = by_worker.find(absl::string_view(id.data(), id.size()));
    return it == by_worker.end() ? nullptr : it->second;
  };
  // A prefill always computes at least the prompt's last token.
  auto cached_tokens = [&](const KvIndex::PrefixMatch* m) {
    return m == nullptr ? 0 : std::min(m->blocks * bs, req.prompt_tokens - 1);
  };

  absl::MutexLock lock(&mu_);
  const double transfer_ms_per_block =
      transfer_ms_per_block_ > 0 ? transfer_ms_per_block_ : options_.default_transfer_ms_per_block;

  // --- Decode worker.
  struct DecodePick {
    std::optional<WorkerHandle> handle;
    double tpot_ms = 0;
    int32_t cached_tokens = 0;
    double queue_ms = 0;  // its own prefill queue, for aggregated prefill
    double ms_per_token = 0;
    double score[3] = {0, 0, 0};
  } decode;
  int decode_seen = 0;
  std::vector<std::string> rr_ids;
  registry_->ForEachHealthy(WORKER_ROLE_DECODE, req.exclude_decode, [&](const WorkerView& w) {
    ++decode_seen;
    const int32_t running = Running(w);
    double tpot = 0;
    if (w.load.decode_step_ms() > 0) {
      // A decode step's time grows with its batch; scale the recent mean by
      // the batch this request would join (never below the mean itself).
      const double batch = std::max(1.0, w.load.decode_batch());
      tpot = w.load.decode_step_ms() * std::max(1.0, (running + 1) / batch);
    }
    bool take = false;
    double score[3] = {0, 0, 0};
    switch (policy) {
      case Policy::kRoundRobin:
        rr_ids.push_back(w.handle.id);
        return;
      case Policy::kRandom:
        take = std::uniform_int_distribution<int>(1, decode_seen)(rng_) == 1;  // reservoir sampling
        break;
      case Policy::kLeastLoaded:
        score[0] = running;
        score[1] = -w.load.free_blocks();
        take = !decode.handle.has_value() ||
               std::lexicographical_compare(score, score + 2, decode.score, decode.score + 2);
        break;
      case Policy::kKv: {
        // Room first (a worker that cannot hold the request would preempt),
        // then batch load, then free blocks.
        score[0] = w.load.total_blocks() > 0 && w.load.free_blocks() < needed_blocks ? 1 : 0;
        score[1] = running;
        score[2] = -w.load.free_blocks();
        take = !decode.handle.has_value() ||
               std::lexicographical_compare(score, score + 3, decode.score, decode.score + 3);
        break;
      }
    }
    if (!take) return;
    decode.handle = w.handle;
    decode.tpot_ms = tpot;
    decode.cached_tokens = cached_tokens(match_of(w.handle.id));
    decode.ms_per_token = MsPerTokenLocked(w.handle.id);
    decode.queue_ms = static_cast<double>(QueuedTokens(w)) * decode.ms_per_token;
    std::copy(score, score + 3, decode.score);
  });
  if (policy == Policy::kRoundRobin && !rr_ids.empty()) {
    const std::string id = rr_ids[round_robin_[0]++ % rr_ids.size()];
    registry_->ForEachHealthy(WORKER_ROLE_DECODE, req.exclude_decode, [&](const WorkerView& w) {
      if (w.handle.id != id) return;
      decode.handle = w.handle;
      decode.cached_tokens = cached_tokens(match_of(id));
      decode.ms_per_token = MsPerTokenLocked(id);
      decode.queue_ms = static_cast<double>(QueuedTokens(w)) * decode.ms_per_token;
      if (w.load.decode_step_ms() > 0) {
        decode.tpot_ms =
            w.load.decode_step_ms() * std::max(1.0, (Running(w) + 1) / std::max(1.0, w.load.decode_batch()));
      }
    });
  }
  if (!decode.handle.has_value()) return absl::UnavailableError("no healthy decode worker");

  // --- Prefill worker.
  const int32_t decode_cached_blocks = decode.cached_tokens / bs;
  const double transfer_ms = std::max(0, prompt_blocks - decode_cached_blocks) * transfer_ms_per_block;
  struct PrefillPick {
    std::optional<WorkerHandle> handle;
    double ttft_ms = std::numeric_limits<double>::infinity();
    double queue_ms = 0;
    int32_t cached_tokens = 0;
    int32_t blocks_to_load = 0;
    int32_t store_blocks = 0;
    double load_key = 0;
  } prefill;
  int prefill_seen = 0;
  rr_ids.clear();
  // Scores `w` into `out`; the handle (strings and stubs) is copied only
  // when `copy_handle`, i.e. for a new best, not for every candidate.
  // The healthy shared store holding the longest prefix, if any.
  const KvIndex::PrefixMatch* store_match = nullptr;
  registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_STORE, {}, [&](const WorkerView& w) {
    const KvIndex::PrefixMatch* m = match_of(w.handle.id);
    if (m != nullptr && (store_match == nullptr || m->blocks > store_match->blocks)) store_match = m;
  });
  auto predict = [&](const WorkerView& w, PrefillPick* out, bool copy_handle = true) {
    const KvIndex::PrefixMatch* m = match_of(w.handle.id);
    const double c = MsPerTokenLocked(w.handle.id);
    out->cached_tokens = cached_tokens(m);
    out->blocks_to_load = m == nullptr ? 0 : m->tier_blocks[2] + m->tier_blocks[3];
    out->queue_ms = static_cast<double>(QueuedTokens(w)) * c;
    double load_ms = m == nullptr ? 0
                                  : m->tier_blocks[2] * options_.dram_load_ms_per_block +
                                        m->tier_blocks[3] * options_.ssd_load_ms_per_block;
    const int32_t own_blocks = m == nullptr ? 0 : m->blocks;
    out->store_blocks = 0;
    if (store_match != nullptr && store_match->blocks > own_blocks) {
      out->cached_tokens = cached_tokens(store_match);
      out->store_blocks = std::max(0, out->cached_tokens / bs - own_blocks);
      load_ms += out->store_blocks * options_.store_load_ms_per_block;
    }
    out->ttft_ms = out->queue_ms + (req.prompt_tokens - out->cached_tokens) * c + load_ms + transfer_ms;
    if (copy_handle) out->handle = w.handle;
    out->load_key = static_cast<double>(QueuedTokens(w));
  };
  registry_->ForEachHealthy(WORKER_ROLE_PREFILL, req.exclude_prefill, [&](const WorkerView& w) {
    ++prefill_seen;
    switch (policy) {
      case Policy::kRoundRobin:
        rr_ids.push_back(w.handle.id);
        return;
      case Policy::kRandom:
        if (std::uniform_int_distribution<int>(1, prefill_seen)(rng_) == 1) predict(w, &prefill);
        return;
      case Policy::kLeastLoaded:
        if (!prefill.handle.has_value() || static_cast<double>(QueuedTokens(w)) < prefill.load_key) {
          predict(w, &prefill);
        }
        return;
      case Policy::kKv: {
        PrefillPick candidate;
        predict(w, &candidate, /*copy_handle=*/false);
        if (candidate.ttft_ms < prefill.ttft_ms) {
          prefill = std::move(candidate);
          prefill.handle = w.handle;
        }
        return;
      }
    }
  });
  if (policy == Policy::kRoundRobin && !rr_ids.empty()) {
    const std::string id = rr_ids[round_robin_[1]++ % rr_ids.size()];
    registry_->ForEachHealthy(WORKER_ROLE_PREFILL, req.exclude_prefill, [&](const WorkerView& w) {
      if (w.handle.id == id) predict(w, &prefill);
    });
  }

  PlacementDecision decision;
  decision.decode = *decode.handle;
  decision.predicted_tpot_ms = decode.tpot_ms;
  const double aggregated_ttft =
      decode.queue_ms + (req.prompt_tokens - decode.cached_tokens) * decode.ms_per_token;
  bool aggregate = !prefill.handle.has_value();
  if (!aggregate && policy == Policy::kKv) {
    const int32_t decode_uncached = req.prompt_tokens - decode.cached_tokens;
    if (options_.aggregate_max_uncached_tokens >= 0 &&
        decode_uncached <= options_.aggregate_max_uncached_tokens) {
      aggregate = true;
    } else if (options_.aggregate_when_queue_ms > 0 && prefill.queue_ms > options_.aggregate_when_queue_ms &&
               aggregated_ttft < prefill.ttft_ms) {
      aggregate = true;
    }
  }
  // The prefetch hint: the chosen worker's lower-tier blocks [first lower,
  // own prefix), then the store's blocks past its own prefix.
  auto set_hint = [&](const std::string& worker_id, int32_t store_blocks) {
    const KvIndex::PrefixMatch* m = match_of(worker_id);
    const int32_t own = m == nullptr ? 0 : m->blocks;
    const int32_t first = m == nullptr ? 0 : m->first_lower_block;
    const int32_t end = std::min<int32_t>(own + store_blocks, static_cast<int32_t>(req.block_hashes.size()));
    decision.prefetch_first_block = std::min(first, end);
    decision.prefetch_hashes.assign(req.block_hashes.begin() + decision.prefetch_first_block,
                                    req.block_hashes.begin() + end);
  };
  if (aggregate) {
    decision.predicted_cached_tokens = decode.cached_tokens;
    decision.predicted_ttft_ms = aggregated_ttft;
    // The decode worker reads a store too when it runs with --kv-store.
    const KvIndex::PrefixMatch* m = match_of(decision.decode.id);
    const int32_t own = m == nullptr ? 0 : m->blocks;
    set_hint(decision.decode.id,
             store_match != nullptr && store_match->blocks > own ? store_match->blocks - own : 0);
  } else {
    decision.prefill = prefill.handle;
    decision.predicted_cached_tokens = prefill.cached_tokens;
    decision.predicted_ttft_ms = prefill.ttft_ms;
    decision.blocks_to_load = prefill.blocks_to_load;
    decision.store_blocks = prefill.store_blocks;
    if (prefill.store_blocks > 0) decision.store_id = store_match->worker_id;
    set_hint(decision.prefill->id, prefill.store_blocks);
  }

  // --- SLO admission.
  const double ttft_slo = req.ttft_slo_ms > 0 ? req.ttft_slo_ms : options_.default_ttft_slo_ms;
  const double tpot_slo = req.tpot_slo_ms > 0 ? req.tpot_slo_ms : options_.default_tpot_slo_ms;
  if (ttft_slo > 0 && decision.predicted_ttft_ms > ttft_slo) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("predicted TTFT %.1f ms exceeds the target %.1f ms (best placement: %s); retry later",
                        decision.predicted_ttft_ms, ttft_slo,
                        decision.prefill.has_value() ? decision.prefill->id : decision.decode.id));
  }
  if (tpot_slo > 0 && decision.predicted_tpot_ms > tpot_slo) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("predicted TPOT %.2f ms exceeds the target %.2f ms (decode worker %s); retry later",
                        decision.predicted_tpot_ms, tpot_slo, decision.decode.id));
  }
  return decision;
}

}  // namespace tandem::router
