// Where a request runs: the routing policies and the KV-aware cost model
// (DESIGN.md, "A request's path", step 2).
//
//   Placement placement({.policy = Policy::kKv}, &registry, &index);
//   absl::StatusOr<PlacementDecision> d = placement.Place(request);
//   if (absl::IsResourceExhausted(d.status())) ...  // predicted to miss its SLO
//   ...
//   placement.ObservePrefill(d->prefill_worker, timings);  // learn costs
//
// Policies (the baselines every routing benchmark compares against):
//   kv            the cost model below (default)
//   round_robin   next healthy worker of each role in turn
//   least_loaded  prefill: fewest queued prefill tokens; decode: fewest
//                 running sequences
//   random        uniformly random healthy workers
//
// The cost model, per prefill candidate p:
//   TTFT(p) = queue(p) + uncached(p) x c(p) + dram(p) x L_dram + ssd(p) x L_ssd
//             + transfer
//   queue(p)     = max(reported queued prefill tokens, tokens this router has
//                  in flight there) x c(p)
//   uncached(p)  = prompt tokens beyond p's longest cached prefix (KvIndex)
//   c(p)         = p's prefill cost per token, learned online (exponentially
//                  weighted) from the prefill_ms and cached_tokens its
//                  responses report; before the first report, the mean of
//                  the learned workers, else Options::default_ms_per_token
//   dram/ssd(p)  = blocks of that prefix in lower tiers, L = per-block load
//                  cost (Options)
//   store(p)     = the shared store (`tandem store`, role STORE in the
//                  registry): when a store holds a longer prefix than p,
//                  p's usable prefix extends through the store's blocks,
//                  each charged Options::store_load_ms_per_block (the
//                  workers are assumed to run with --kv-store)
//   transfer     = blocks the decode worker lacks x learned ms per block
// The decode worker is the one with the most free blocks among those whose
// predicted TPOT (recent step time scaled by batch growth) is lowest-ranked;
// ties go to fewer running sequences. The kv policy also decides between
// disaggregated and aggregated ("conditional disaggregation"): the decode
// worker prefills by itself when its own uncached part is at most
// Options::aggregate_max_uncached_tokens, or when the best prefill
// candidate's queue wait exceeds Options::aggregate_when_queue_ms.
//
// SLO admission (every policy): when the chosen placement's predicted TTFT
// exceeds the request's TTFT target (or TPOT beyond its TPOT target), Place
// fails with ResourceExhausted at once rather than queueing work that will
// miss; the error names the prediction and the target.
//
// Thread safety: all methods are thread-safe.
#ifndef TANDEM_ROUTER_PLACEMENT_H_
#define TANDEM_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "router/kv_index.h"
#include "router/worker_registry.h"

namespace tandem::router {

enum class Policy { kKv, kRoundRobin, kLeastLoaded, kRandom };
const char* PolicyName(Policy policy);
// "kv", "round_robin", "least_loaded", "random"; InvalidArgument otherwise.
absl::StatusOr<Policy> ParsePolicy(std::string_view name);

struct PlacementOptions {
  // Default: kKv.
  Policy policy = Policy::kKv;
  // Prefill cost per uncached token before any worker has reported one.
  // Default: 0.1 ms (a CPU worker on a tiny model is faster; GPUs much
  // faster; the first responses replace it).
  double default_ms_per_token = 0.1;
  // Cost to bring one block back from DRAM / SSD into the engine's pool.
  // Default: 0.05 ms / 0.5 ms.
  double dram_load_ms_per_block = 0.05;
  double ssd_load_ms_per_block = 0.5;
  // Transfer cost per block before one is learned. Default: 0.05 ms.
  double default_transfer_ms_per_block = 0.05;
  // Weight of a new observation in the learned costs. Default: 0.2.
  double learning_rate = 0.2;
  // Conditional disaggregation (kv policy): prefill on the decode worker when
  // at most this many prompt tokens are uncached there: computing one block
  // in place costs less than a round trip to a prefill worker and a KV
  // transfer. Default: 16 (-1 turns it off).
  int32_t aggregate_max_uncached_tokens = 16;
  // ...or when every prefill worker's predicted queue wait exceeds this.
  // Default: 0 (off).
  double aggregate_when_queue_ms = 0;
  // Default SLO targets for requests that set none; 0 = none.
  double default_ttft_slo_ms = 0;
  double default_tpot_slo_ms = 0;
  // Seed for the random policy. Default: 1.
  uint64_t seed = 1;
  // Cost to fetch one block from a shared KV store (`tandem store`, a
  // healthy WORKER_ROLE_STORE holder in the index) into a prefill worker.
  // Default: 0.3 ms.
  double store_load_ms_per_block = 0.3;
};

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

struct PrefillObservation {
  int32_t prompt_tokens = 0;
  int32_t cached_tokens = 0;
  double prefill_ms = 0;
  double transfer_ms = 0;
  int32_t transferred_blocks = 0;
};

class Placement {
 public:
  // `registry` and `index` are borrowed and must outlive the placement.
  Placement(PlacementOptions options, WorkerRegistry* registry, const KvIndex* index);

  // Unavailable when no decode worker is healthy; ResourceExhausted when
  // the SLO cannot be met.
  absl::StatusOr<PlacementDecision> Place(const PlacementRequest& request);

  // Learns from a finished prefill on `worker_id`.
  void ObservePrefill(const std::string& worker_id, const PrefillObservation& observation);

  // The learned per-token prefill cost (ms) of a worker, or the fallback.
  double MsPerToken(const std::string& worker_id) const;

  const PlacementOptions& options() const { return options_; }

 private:
  struct Learned {
    double ms_per_token = 0;           // 0 until observed
    double transfer_ms_per_block = 0;  // 0 until observed
  };
  double MsPerTokenLocked(const std::string& worker_id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const PlacementOptions options_;
  WorkerRegistry* const registry_;
  const KvIndex* const index_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Learned> learned_ ABSL_GUARDED_BY(mu_);
  double mean_ms_per_token_ ABSL_GUARDED_BY(mu_) = 0;
  double transfer_ms_per_block_ ABSL_GUARDED_BY(mu_) = 0;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  size_t round_robin_[2] ABSL_GUARDED_BY(mu_) = {0, 0};
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PLACEMENT_H_
