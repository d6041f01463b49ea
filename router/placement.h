// Where a request runs: the routing policies and the KV-aware cost model
// (DESIGN.md, "A request's path", step 2), composed from the pieces in
// placement_policies.h.
//
//   Placement placement({.policy = Policy::kKv}, &registry, &index);
//   absl::StatusOr<PlacementDecision> d = placement.Place(request);
//   if (absl::IsResourceExhausted(d.status())) ...  // predicted to miss its SLO
//   ...
//   placement.ObservePrefill(d->prefill->id, observation);  // learn costs
//
// Place, for one request:
//   1. the decode worker: the policy's decode chooser over the healthy decode
//      workers (kv: room for prompt + max_tokens first, then fewest running
//      sequences, then most free blocks);
//   2. the prefill worker: PredictPrefill for every healthy prefill worker,
//      then the policy's prefill chooser (kv: the lowest predicted TTFT);
//   3. DecideAggregation: the decode worker prefills by itself when there is
//      no prefill worker or (kv) when that is predicted cheaper;
//   4. Admit: ResourceExhausted at once when the predicted TTFT or TPOT
//      misses the request's target;
//   5. an admitted placement records the prompt's blocks beyond the chosen
//      prefilling worker's cached prefix as in flight to it
//      (KvIndex::AddInflight), so that requests with the same prefix placed
//      before that worker announces the blocks see them there: a burst of
//      same-prefix requests goes to one worker instead of being spread out
//      and computing the prefix on each. The entries end with the worker's
//      KV events, or KvIndex::Options::inflight_ttl (a failed request's).
// Places are serialised (one at a time) so that a burst's requests each see
// the in-flight blocks of those placed before them.
// The cost model and each policy's rule are documented with those functions
// (placement_policies.h). The per-token prefill cost c(p) is learned here
// online from the prefill_ms and cached_tokens each
// prefill response reports; before a worker's first report, the mean of the
// learned workers, else Options::default_ms_per_token: c = an exponentially
// weighted mean of prefill_ms over one of computed tokens, so each response
// counts by the tokens it computed. (A mean of per-response ratios let a
// response that computed a few tokens after waiting in the worker's queue,
// or for a prefix another request was computing, multiply c; under load
// with a warm cache that made every prediction, and admission, pessimistic.)
// The transfer cost per
// block is learned the same way, for the cluster as a whole.
//
// Thread safety: all methods are thread-safe.
#ifndef TANDEM_ROUTER_PLACEMENT_H_
#define TANDEM_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "router/kv_index.h"
#include "router/placement_policies.h"
#include "router/worker_registry.h"

namespace tandem::router {

struct PlacementRequest {
  // The prompt's full-block hashes (common/block_hash.h, the workers' seed
  // and block size).
  absl::Span<const BlockHash> block_hashes;
  int32_t prompt_tokens = 0;
  int32_t max_tokens = 0;
  int32_t block_size = 16;
  // Per-request targets (0 = the defaults).
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
  // Workers to avoid (failed earlier in this request).
  std::vector<std::string> exclude_prefill;
  std::vector<std::string> exclude_decode;
};

struct PlacementDecision {
  WorkerHandle decode;
  // Empty when the decode worker prefills by itself (aggregated).
  std::optional<WorkerHandle> prefill;
  // Prompt tokens predicted to come from a cache where the prefill runs.
  int32_t predicted_cached_tokens = 0;
  double predicted_ttft_ms = 0;
  double predicted_tpot_ms = 0;
  // Blocks of the prefix held by the chosen prefill worker in lower tiers:
  // what it should prefetch now (DESIGN.md: prefetch starts at assignment).
  int32_t blocks_to_load = 0;
  // Blocks of the prefix past the chosen prefill worker's own that a shared
  // store holds (blocks [own, own + store_blocks)): the worker fetches them
  // from `store_id` (its --kv-store) instead of computing them. 0 and ""
  // when no store extends the prefix.
  int32_t store_blocks = 0;
  std::string store_id;
  // The prefetch hint for the worker that prefills (the prefill worker, or
  // the decode worker when aggregated), sent with its request
  // (tandem.v1.PrefetchHint): the prompt's block hashes [prefetch_first_block,
  // prefetch_first_block + prefetch_hashes.size()), i.e. from the first
  // block of that worker's cached prefix the index does not place in its HBM
  // through the end of its prefix, extended by the blocks a shared store
  // holds beyond it (for the prefill worker: through own + store_blocks).
  // Empty when the index expects nothing to load there.
  int32_t prefetch_first_block = 0;
  std::vector<BlockHash> prefetch_hashes;
};

// The decision's prefetch hint as sent to the worker that prefills.
void SetPrefetchHint(const PlacementDecision& decision, tandem::v1::PrefetchHint* hint);

// DecodeRoom (placement_policies.h) for decode worker `w`: its reported step
// time and batch, and the larger of its reported running count and this
// router's requests on it.
int64_t DecodeRoomOf(const WorkerView& w, double tpot_limit_ms);

struct PrefillObservation {
  int32_t prompt_tokens = 0;
  int32_t cached_tokens = 0;
  double prefill_ms = 0;
  double transfer_ms = 0;
  int32_t transferred_blocks = 0;
};

class Placement {
 public:
  // `registry` and `index` are borrowed and must outlive the placement;
  // Place records in-flight blocks in `index`.
  Placement(PlacementOptions options, WorkerRegistry* registry, KvIndex* index);

  // Unavailable when no decode worker is healthy; ResourceExhausted when
  // the SLO cannot be met.
  absl::StatusOr<PlacementDecision> Place(const PlacementRequest& request);

  // Learns from a finished prefill on `worker_id`.
  void ObservePrefill(const std::string& worker_id, const PrefillObservation& observation);

  // The learned per-token prefill cost (ms) of a worker, or the fallback.
  double MsPerToken(const std::string& worker_id) const;

  const PlacementOptions& options() const { return options_; }

 private:
  double MsPerTokenLocked(const std::string& worker_id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

 public:
  // Place's per-request lookups by worker, as arrays indexed by the
  // registry's WorkerView::slot instead of maps keyed by id (with 1,000
  // workers, hashing each id twice per request was most of a decision).
  // Internal; public only so placement.cc's helpers can name it.
  struct SlotTables {
    // Registry slot -> KvIndex slot (KvIndex::kNoSlot: none; kUnresolved:
    // not asked yet), valid while the index's slot_epoch is `epoch`.
    static constexpr uint32_t kUnresolved = UINT32_MAX - 1;
    std::vector<uint32_t> index_slot;
    uint64_t epoch = 0;
    // This request's match, and KvIndex slot -> its position there (-1: none).
    KvIndex::SlotMatches matches;
    std::vector<int32_t> position;
    // The prefill scan's per-candidate vectors, kept for their capacity.
    std::vector<PrefillPrediction> predictions;
    std::vector<PrefillCandidate> candidates;
    std::vector<const KvIndex::PrefixStats*> own;
  };

 private:
  const PlacementOptions options_;
  WorkerRegistry* const registry_;
  KvIndex* const index_;

  // Held through Place: match, decide, record in flight, as one step.
  absl::Mutex place_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  // Learned prefill cost (ms per computed token) by worker id.
  absl::flat_hash_map<std::string, double> ms_per_token_ ABSL_GUARDED_BY(mu_);
  // The weighted means c is their ratio of: prefill ms and computed tokens.
  struct Observed {
    double ms = 0;
    double tokens = 0;
  };
  absl::flat_hash_map<std::string, Observed> observed_ ABSL_GUARDED_BY(mu_);
  // ms_per_token_ by registry slot: -1 not looked up yet, 0 none learned.
  std::vector<double> ms_by_slot_ ABSL_GUARDED_BY(mu_);
  SlotTables tables_ ABSL_GUARDED_BY(place_mu_);
  double mean_ms_per_token_ ABSL_GUARDED_BY(mu_) = 0;      // 0 until observed
  double transfer_ms_per_block_ ABSL_GUARDED_BY(mu_) = 0;  // 0 until observed
  ChooserState decode_state_ ABSL_GUARDED_BY(mu_);
  ChooserState prefill_state_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PLACEMENT_H_
