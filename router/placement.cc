#include "router/placement.h"

#include <algorithm>
#include <utility>

#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace tandem::router {
namespace {

using tandem::v1::WORKER_ROLE_DECODE;
using tandem::v1::WORKER_ROLE_PREFILL;
using tandem::v1::WORKER_ROLE_STORE;

int64_t QueuedTokens(const WorkerView& w) {
  // The worker's report covers every router's work but lags; this router's
  // own in-flight count is current but partial. The larger is the better
  // guess without counting the same tokens twice.
  return std::max<int64_t>(w.load.queued_prefill_tokens(), w.inflight_prefill_tokens);
}

int32_t Running(const WorkerView& w) {
  return std::max(w.load.running() + w.load.waiting(), w.inflight_requests);
}

using PrefixStats = KvIndex::PrefixStats;
using SlotTables = Placement::SlotTables;

// Every worker's cached prefix for one prompt, looked up by the registry's
// worker slot through arrays (SlotTables) kept between requests.
class PrefixMatches {
 public:
  PrefixMatches(const KvIndex& index, absl::Span<const BlockHash> hashes, SlotTables* tables)
      : index_(index), t_(*tables) {
    for (const KvIndex::SlotMatch& m : t_.matches.matches) t_.position[m.slot] = -1;  // the last request's
    index.MatchSlots(hashes, &t_.matches);
    if (t_.matches.slot_epoch != t_.epoch) {
      // A worker was given an index slot since the pairings were cached
      // (one appeared, or came back): ask again.
      std::fill(t_.index_slot.begin(), t_.index_slot.end(), SlotTables::kUnresolved);
      t_.epoch = t_.matches.slot_epoch;
    }
    for (size_t i = 0; i < t_.matches.matches.size(); ++i) {
      const uint32_t slot = t_.matches.matches[i].slot;
      if (slot >= t_.position.size()) t_.position.resize(slot + 1, -1);
      t_.position[slot] = static_cast<int32_t>(i);
    }
  }
  PrefixMatches(const PrefixMatches&) = delete;
  PrefixMatches& operator=(const PrefixMatches&) = delete;

  // Null when the worker holds none of the prompt.
  const PrefixStats* Of(const WorkerView& w) const {
    if (w.slot >= t_.index_slot.size()) t_.index_slot.resize(w.slot + 1, SlotTables::kUnresolved);
    uint32_t& slot = t_.index_slot[w.slot];
    if (slot == SlotTables::kUnresolved) {
      uint64_t epoch = 0;
      const uint32_t s = index_.SlotOf(w.handle.id, &epoch);
      // Paired after the match: the match cannot be told apart from another
      // worker's that held the slot before; count none this once.
      if (epoch != t_.epoch) return nullptr;
      slot = s;
    }
    if (slot >= t_.position.size() || t_.position[slot] < 0) return nullptr;
    return &t_.matches.matches[static_cast<size_t>(t_.position[slot])];
  }

 private:
  const KvIndex& index_;
  SlotTables& t_;
};

// The learned per-token prefill costs, read while Placement::mu_ is held.
struct LearnedCosts {
  const absl::flat_hash_map<std::string, double>& by_worker;
  std::vector<double>& by_slot;  // by_worker's answers by registry slot: -1 not looked up, 0 none
  double fallback;               // the learned mean, else the default

  double MsPerToken(const std::string& worker_id) const {
    if (by_worker.empty()) return fallback;  // skips hashing the id before any report
    auto it = by_worker.find(worker_id);
    return it != by_worker.end() && it->second > 0 ? it->second : fallback;
  }
  double MsPerToken(const WorkerView& w) const {
    if (by_worker.empty()) return fallback;
    if (w.slot >= by_slot.size()) by_slot.resize(w.slot + 1, -1);
    double& c = by_slot[w.slot];
    if (c < 0) {
      auto it = by_worker.find(w.handle.id);
      c = it != by_worker.end() && it->second > 0 ? it->second : 0;
    }
    return c > 0 ? c : fallback;
  }
};

// The request's size in blocks.
struct PromptShape {
  explicit PromptShape(const PlacementRequest& r)
      : block_size(std::max(1, r.block_size)),
        prompt_blocks((r.prompt_tokens + block_size - 1) / block_size),
        needed_blocks((r.prompt_tokens + r.max_tokens + block_size - 1) / block_size) {}
  int32_t block_size;
  int32_t prompt_blocks;
  int32_t needed_blocks;  // prompt + max_tokens, on the decode worker
};

struct DecodePick {
  WorkerHandle handle;
  const PrefixStats* match = nullptr;
  double tpot_ms = 0;
  int32_t cached_tokens = 0;
  double ms_per_token = 0;
  double queue_ms = 0;  // its own prefill queue, for an aggregated prefill
};

// Step 1: the policy's decode chooser over the healthy decode workers.
std::optional<DecodePick> PickDecode(WorkerRegistry& registry, const PlacementRequest& req,
                                     const PromptShape& shape, const PrefixMatches& matches,
                                     const LearnedCosts& costs, DecodeChooser choose, ChooserState* state) {
  std::optional<DecodePick> pick;
  registry.WithHealthy(WORKER_ROLE_DECODE, req.exclude_decode, [&](absl::Span<const WorkerView> workers) {
    if (workers.empty()) return;
    std::vector<DecodeCandidate> candidates;
    candidates.reserve(workers.size());
    for (const WorkerView& w : workers) {
      candidates.push_back({Running(w), w.load.free_blocks(), w.load.total_blocks()});
    }
    const WorkerView& w = workers[choose(candidates, shape.needed_blocks, state)];
    pick.emplace();
    pick->handle = w.handle;
    pick->match = matches.Of(w);
    pick->tpot_ms = PredictTpotMs(w.load.decode_step_ms(), w.load.decode_batch(), Running(w));
    pick->cached_tokens = CachedTokens(pick->match, shape.block_size, req.prompt_tokens);
    pick->ms_per_token = costs.MsPerToken(w);
    pick->queue_ms = static_cast<double>(QueuedTokens(w)) * pick->ms_per_token;
  });
  return pick;
}

struct PrefillPick {
  WorkerHandle handle;
  const PrefixStats* match = nullptr;
  PrefillPrediction prediction;
};

// Step 2: PredictPrefill for every healthy prefill worker, then the policy's
// prefill chooser.
std::optional<PrefillPick> PickPrefill(WorkerRegistry& registry, const PlacementOptions& options,
                                       const PlacementRequest& req, const PromptShape& shape,
                                       const PrefixMatches& matches, const PrefixStats* store,
                                       const LearnedCosts& costs, double transfer_ms, PrefillChooser choose,
                                       ChooserState* state, SlotTables* scratch) {
  std::optional<PrefillPick> pick;
  registry.WithHealthy(WORKER_ROLE_PREFILL, req.exclude_prefill, [&](absl::Span<const WorkerView> workers) {
    if (workers.empty()) return;
    std::vector<PrefillPrediction>& predictions = scratch->predictions;
    std::vector<PrefillCandidate>& candidates = scratch->candidates;
    std::vector<const PrefixStats*>& own = scratch->own;
    predictions.clear();
    candidates.clear();
    own.clear();
    for (const WorkerView& w : workers) {
      const double ms_per_token = costs.MsPerToken(w);
      const int64_t queued = QueuedTokens(w);
      own.push_back(matches.Of(w));
      predictions.push_back(PredictPrefill(options, {.prompt_tokens = req.prompt_tokens,
                                                     .block_size = shape.block_size,
                                                     .own = own.back(),
                                                     .store = store,
                                                     .queued_tokens = queued,
                                                     .ms_per_token = ms_per_token,
                                                     .transfer_ms = transfer_ms}));
      const PrefillPrediction& p = predictions.back();
      candidates.push_back(
          {queued, p.ttft_ms, options.compute_weight * (req.prompt_tokens - p.cached_tokens) * ms_per_token});
    }
    const size_t i = choose(candidates, state);
    pick = PrefillPick{workers[i].handle, own[i], predictions[i]};
  });
  return pick;
}

// The healthy shared store holding the longest prefix, if any.
struct StorePrefix {
  const PrefixStats* match = nullptr;
  std::string id;
};
StorePrefix LongestStorePrefix(WorkerRegistry& registry, const PrefixMatches& matches) {
  StorePrefix best;
  registry.ForEachHealthy(WORKER_ROLE_STORE, {}, [&](const WorkerView& w) {
    const PrefixStats* m = matches.Of(w);
    if (m != nullptr && (best.match == nullptr || m->blocks > best.match->blocks)) best = {m, w.handle.id};
  });
  return best;
}

// The prefetch hint for the worker that prefills: its lower-tier blocks
// [first lower, own prefix), then `store_blocks` of the store's past it.
void SetHint(const PrefixStats* own, int32_t store_blocks, absl::Span<const BlockHash> hashes,
             PlacementDecision* decision) {
  const int32_t own_blocks = own == nullptr ? 0 : own->blocks;
  const int32_t first = own == nullptr ? 0 : own->first_lower_block;
  const int32_t end = std::min<int32_t>(own_blocks + store_blocks, static_cast<int32_t>(hashes.size()));
  decision->prefetch_first_block = std::min(first, end);
  decision->prefetch_hashes.assign(hashes.begin() + decision->prefetch_first_block, hashes.begin() + end);
}

}  // namespace

void SetPrefetchHint(const PlacementDecision& decision, tandem::v1::PrefetchHint* hint) {
  hint->set_first_block(decision.prefetch_first_block);
  hint->mutable_block_hashes()->Assign(decision.prefetch_hashes.begin(), decision.prefetch_hashes.end());
}

Placement::Placement(PlacementOptions options, WorkerRegistry* registry, KvIndex* index)
    : options_(options),
      registry_(registry),
      index_(index),
      decode_state_(options.seed),
      prefill_state_(options.seed + 1) {}

double Placement::MsPerTokenLocked(const std::string& worker_id) const {
  auto it = ms_per_token_.find(worker_id);
  if (it != ms_per_token_.end() && it->second > 0) return it->second;
  return mean_ms_per_token_ > 0 ? mean_ms_per_token_ : options_.default_ms_per_token;
}

double Placement::MsPerToken(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return MsPerTokenLocked(worker_id);
}

void Placement::ObservePrefill(const std::string& worker_id, const PrefillObservation& o) {
  const int32_t computed = o.prompt_tokens - o.cached_tokens;
  const std::optional<uint32_t> slot = registry_->SlotOf(worker_id);
  absl::MutexLock lock(&mu_);
  const double a = options_.learning_rate;
  if (computed > 0 && o.prefill_ms > 0) {
    Observed& seen = observed_[worker_id];
    const bool first = seen.tokens == 0;
    seen.ms = first ? o.prefill_ms : (1 - a) * seen.ms + a * o.prefill_ms;
    seen.tokens = first ? computed : (1 - a) * seen.tokens + a * computed;
    ms_per_token_[worker_id] = seen.ms / seen.tokens;
    if (slot.has_value() && *slot < ms_by_slot_.size()) ms_by_slot_[*slot] = seen.ms / seen.tokens;
    double sum = 0;
    int n = 0;
    for (const auto& [id, ms] : ms_per_token_) {
      if (ms > 0) {
        sum += ms;
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
  absl::MutexLock serial(&place_mu_);
  const PromptShape shape(req);
  // Every worker's cached prefix (also for the baselines: their predictions
  // feed admission and the reported hit rate).
  const PrefixMatches matches(*index_, req.block_hashes, &tables_);
  const StorePrefix store_prefix = LongestStorePrefix(*registry_, matches);
  const PrefixStats* store = store_prefix.match;
  const PolicyChoosers choose = ChoosersFor(options_.policy);

  std::optional<DecodePick> decode;
  std::optional<PrefillPick> prefill;
  {
    absl::MutexLock lock(&mu_);
    const LearnedCosts costs{ms_per_token_, ms_by_slot_,
                             mean_ms_per_token_ > 0 ? mean_ms_per_token_ : options_.default_ms_per_token};
    decode = PickDecode(*registry_, req, shape, matches, costs, choose.decode, &decode_state_);
    if (!decode.has_value()) return absl::UnavailableError("no healthy decode worker");
    const double transfer_ms_per_block =
        transfer_ms_per_block_ > 0 ? transfer_ms_per_block_ : options_.default_transfer_ms_per_block;
    const double transfer_ms =
        std::max(0, shape.prompt_blocks - decode->cached_tokens / shape.block_size) * transfer_ms_per_block;
    prefill = PickPrefill(*registry_, options_, req, shape, matches, store, costs, transfer_ms,
                          choose.prefill, &prefill_state_, &tables_);
  }

  // Step 3: who prefills.
  const double aggregated_ttft =
      decode->queue_ms + (req.prompt_tokens - decode->cached_tokens) * decode->ms_per_token;
  const bool aggregate =
      DecideAggregation(options_, {.has_prefill = prefill.has_value(),
                                   .decode_uncached_tokens = req.prompt_tokens - decode->cached_tokens,
                                   .aggregated_ttft_ms = aggregated_ttft,
                                   .prefill_queue_ms = prefill ? prefill->prediction.queue_ms : 0,
                                   .prefill_ttft_ms = prefill ? prefill->prediction.ttft_ms : 0});
  PlacementDecision decision;
  decision.decode = std::move(decode->handle);
  decision.predicted_tpot_ms = decode->tpot_ms;
  if (aggregate) {
    decision.predicted_cached_tokens = decode->cached_tokens;
    decision.predicted_ttft_ms = aggregated_ttft;
    // The decode worker reads a store too when it runs with --kv-store.
    const PrefixStats* own = decode->match;
    const int32_t own_blocks = own == nullptr ? 0 : own->blocks;
    SetHint(own, store != nullptr && store->blocks > own_blocks ? store->blocks - own_blocks : 0,
            req.block_hashes, &decision);
  } else {
    const PrefillPrediction& p = prefill->prediction;
    decision.prefill = std::move(prefill->handle);
    decision.predicted_cached_tokens = p.cached_tokens;
    decision.predicted_ttft_ms = p.ttft_ms;
    decision.blocks_to_load = p.blocks_to_load;
    decision.store_blocks = p.store_blocks;
    if (p.store_blocks > 0) decision.store_id = store_prefix.id;
    SetHint(prefill->match, p.store_blocks, req.block_hashes, &decision);
  }

  // Step 4: SLO admission.
  TANDEM_RETURN_IF_ERROR(
      Admit(options_, {.ttft_slo_ms = req.ttft_slo_ms,
                       .tpot_slo_ms = req.tpot_slo_ms,
                       .predicted_ttft_ms = decision.predicted_ttft_ms,
                       .predicted_tpot_ms = decision.predicted_tpot_ms,
                       .prefill_worker = decision.prefill ? decision.prefill->id : decision.decode.id,
                       .decode_worker = decision.decode.id}));

  // Step 5: the blocks past its cached prefix are in flight to the worker
  // that prefills.
  const std::string& prefiller = decision.prefill ? decision.prefill->id : decision.decode.id;
  const PrefixStats* own = decision.prefill ? prefill->match : decode->match;
  const size_t own_blocks = own == nullptr ? 0 : static_cast<size_t>(own->blocks);
  if (own_blocks < req.block_hashes.size())
    index_->AddInflight(prefiller, req.block_hashes.subspan(own_blocks));
  return decision;
}

int64_t DecodeRoomOf(const WorkerView& w, double tpot_limit_ms) {
  return DecodeRoom(w.load.decode_step_ms(), w.load.decode_batch(), Running(w), tpot_limit_ms);
}

}  // namespace tandem::router
