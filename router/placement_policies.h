// The pieces Placement::Place (placement.h) is composed of, as pure functions
// over small per-candidate facts, so each is unit-tested alone
// (placement_policies_test.cc):
//
//   1. a decode chooser per policy picks the decode worker;
//   2. PredictPrefill predicts each prefill candidate's TTFT (the cost model)
//      and a prefill chooser per policy picks one;
//   3. DecideAggregation says whether the decode worker prefills by itself;
//   4. Admit rejects a placement predicted to miss the request's SLO.
//
//   PolicyChoosers choose = ChoosersFor(Policy::kKv);
//   size_t d = choose.decode(decode_candidates, needed_blocks, &decode_state);
//   size_t p = choose.prefill(prefill_candidates, &prefill_state);
//   bool aggregated = DecideAggregation(options, {.has_prefill = true, ...});
//   TANDEM_RETURN_IF_ERROR(Admit(options, {.predicted_ttft_ms = ..., ...}));
//
// Policies (the baselines every routing benchmark compares against):
//   kv            decode: room for the request first (a worker whose free
//                 blocks cannot hold prompt + max_tokens would preempt), then
//                 fewest running sequences, then most free blocks;
//                 prefill: lowest predicted TTFT (PredictPrefill) plus
//                 compute_weight x the time it computes (its uncached
//                 tokens x c);
//                 conditional disaggregation (DecideAggregation)
//   round_robin   the next healthy worker of each role in turn
//   least_loaded  decode: fewest running sequences, then most free blocks;
//                 prefill: fewest queued prefill tokens
//   random        a uniformly random healthy worker of each role
// Ties go to the earlier candidate (registration order). The TPOT prediction
// (PredictTpotMs) feeds SLO admission only; no policy chooses by it.
//
// Thread safety: pure functions, except that a chooser mutates the
// ChooserState it is given (the caller serialises its use).
#ifndef TANDEM_ROUTER_PLACEMENT_POLICIES_H_
#define TANDEM_ROUTER_PLACEMENT_POLICIES_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "router/kv_index.h"

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
  // ...or when the chosen prefill worker's predicted queue wait exceeds this
  // and prefilling on the decode worker is predicted to be faster.
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
  // kv prefill chooser: weight of the candidate's own compute time (uncached
  // tokens x c) added to its predicted TTFT. A TTFT prediction alone sees no
  // difference between waiting behind a worker that is computing this
  // prompt's prefix and computing the prefix again on an idle worker; the
  // second costs the cluster the prefix a second time, which under load is
  // every later request's queue. 0: TTFT alone. Default: 1.
  double compute_weight = 1.0;
};

// --- 1 and 2. Choosers.

// What a decode chooser knows about one candidate.
struct DecodeCandidate {
  // max(reported running + waiting, requests this router has in flight there).
  int32_t running = 0;
  int32_t free_blocks = 0;
  // 0: not reported; such a worker never counts as lacking room.
  int32_t total_blocks = 0;
};

// What a prefill chooser knows about one candidate.
struct PrefillCandidate {
  // max(reported queued prefill tokens, tokens this router has in flight there).
  int64_t queued_tokens = 0;
  double predicted_ttft_ms = 0;  // PredictPrefill
  // The candidate's own compute time for the request (uncached tokens x c)
  // times PlacementOptions::compute_weight.
  double weighted_compute_ms = 0;
};

// What round_robin (a cursor) and random (a generator) keep between
// requests; Placement keeps one per role.
struct ChooserState {
  explicit ChooserState(uint64_t seed) : rng(seed) {}
  size_t cursor = 0;
  std::mt19937_64 rng;
};

// A chooser returns the index of its pick in `candidates`, which must not be
// empty. `needed_blocks`: blocks the request needs on the decode worker
// (prompt + max_tokens).
using DecodeChooser = size_t (*)(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks,
                                 ChooserState* state);
using PrefillChooser = size_t (*)(absl::Span<const PrefillCandidate> candidates, ChooserState* state);

size_t ChooseDecodeKv(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks,
                      ChooserState* state);
size_t ChooseDecodeLeastLoaded(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks,
                               ChooserState* state);
size_t ChooseDecodeRoundRobin(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks,
                              ChooserState* state);
size_t ChooseDecodeRandom(absl::Span<const DecodeCandidate> candidates, int32_t needed_blocks,
                          ChooserState* state);
size_t ChoosePrefillKv(absl::Span<const PrefillCandidate> candidates, ChooserState* state);
size_t ChoosePrefillLeastLoaded(absl::Span<const PrefillCandidate> candidates, ChooserState* state);
size_t ChoosePrefillRoundRobin(absl::Span<const PrefillCandidate> candidates, ChooserState* state);
size_t ChoosePrefillRandom(absl::Span<const PrefillCandidate> candidates, ChooserState* state);

struct PolicyChoosers {
  DecodeChooser decode;
  PrefillChooser prefill;
};
PolicyChoosers ChoosersFor(Policy policy);

// --- Predictions.

// Prompt tokens a worker holding `match` (null: nothing) need not compute:
// its prefix, but never the prompt's last token (a prefill always computes
// at least one).
int32_t CachedTokens(const KvIndex::PrefixStats* match, int32_t block_size, int32_t prompt_tokens);

// A decode worker's time per output token once this request joins its batch:
// the reported mean step time scaled by (running + 1) / batch, never below
// the mean itself. 0 when the worker has reported no step time.
double PredictTpotMs(double decode_step_ms, double decode_batch, int32_t running);

// The router's decode admission (RouterOptions::decode_tpot_limit_ms): how
// many more requests a decode worker running `running` takes before
// PredictTpotMs for the next one passes `tpot_limit_ms` (>= 0). -1 (no
// bound) when it has reported no step time; up to 8 running it always
// takes more, however slow its steps.
int64_t DecodeRoom(double decode_step_ms, double decode_batch, int32_t running, double tpot_limit_ms);

struct PrefillCostInputs {
  int32_t prompt_tokens = 0;
  int32_t block_size = 16;
  const KvIndex::PrefixStats* own = nullptr;    // the candidate's cached prefix
  const KvIndex::PrefixStats* store = nullptr;  // the longest healthy store's
  int64_t queued_tokens = 0;
  double ms_per_token = 0;  // learned (or default) prefill cost
  double transfer_ms = 0;   // KV transfer to the chosen decode worker
};

struct PrefillPrediction {
  int32_t cached_tokens = 0;   // own prefix, extended through the store's
  int32_t blocks_to_load = 0;  // own prefix blocks in DRAM or SSD
  int32_t store_blocks = 0;    // blocks past the own prefix fetched from the store
  double queue_ms = 0;
  double ttft_ms = 0;
};

// The cost model:
//   TTFT = queue + uncached x c + dram x L_dram + ssd x L_ssd + store x L_store
//          + transfer
//   queue     = queued tokens x c
//   uncached  = prompt tokens beyond the usable cached prefix
//   dram/ssd  = blocks of the own prefix in lower tiers; L = Options' per-block
//               load costs
//   store     = when a store holds a longer prefix than the candidate, the
//               prefix extends through the store's blocks, each charged
//               Options::store_load_ms_per_block (workers are assumed to run
//               with --kv-store)
PrefillPrediction PredictPrefill(const PlacementOptions& options, const PrefillCostInputs& in);

// --- 3. Conditional disaggregation.

struct AggregationInputs {
  bool has_prefill = false;            // a prefill worker was chosen
  int32_t decode_uncached_tokens = 0;  // what the decode worker would compute
  double aggregated_ttft_ms = 0;       // TTFT if the decode worker prefills
  double prefill_queue_ms = 0;         // the chosen prefill worker's
  double prefill_ttft_ms = 0;
};

// True: the decode worker prefills by itself. Always when there is no
// prefill worker; otherwise only under the kv policy, when at most
// aggregate_max_uncached_tokens are uncached on the decode worker, or when
// the prefill worker's queue exceeds aggregate_when_queue_ms and prefilling
// in place is predicted faster.
bool DecideAggregation(const PlacementOptions& options, const AggregationInputs& in);

// --- 4. SLO admission (every policy).

struct AdmissionInputs {
  // The request's targets; 0: the options' defaults (0 there: none).
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
  double predicted_ttft_ms = 0;
  double predicted_tpot_ms = 0;
  // Named in the error: the worker that prefills, and the decode worker.
  std::string_view prefill_worker;
  std::string_view decode_worker;
};

// ResourceExhausted naming the prediction and the target when the predicted
// TTFT (or TPOT) exceeds its target, so the request fails at once instead of
// queueing work that will miss; OK otherwise.
absl::Status Admit(const PlacementOptions& options, const AdmissionInputs& in);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PLACEMENT_POLICIES_H_
