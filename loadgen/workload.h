// From trace records to what the load generator sends: prompts of token ids
// synthesized from hash ids, output lengths, and send times.
//
// Token synthesis. Every hash id names one block of `block_tokens` tokens,
// drawn by a PRNG seeded with XXH3(hash id, seed) uniformly from
// [first_token_id, vocab_size) (so BOS/EOS and other low special ids never
// appear inside a prompt). Equal ids give equal blocks in every process and
// on every machine; different ids give different blocks (with overwhelming
// probability). A prompt is its blocks in order, cut to its length; when
// bos_id >= 0 its first token is replaced by bos_id (the same for every
// prompt, so prefix sharing is unchanged).
//
// Length scaling. A trace's hash ids cover `source_block_tokens` tokens each
// (512 for Mooncake); a small model cannot hold such prompts, so each source
// block becomes `block_tokens` tokens. For input_length L with n = ceil(L /
// S) hash ids (S = source_block_tokens, B = block_tokens), the last source
// block holds r = L - (n - 1) * S tokens (1..S), and the scaled length is
//   (n - 1) * B + ceil(r * B / S)
// so every full block scales exactly, the partial last block keeps its
// fraction rounded up (at least 1 token), and the scaled prompt still has n
// blocks. output_length is not scaled. Then the clamps, in order:
//   max_tokens = min(output_length, max_tokens_cap)        (cap 0: none)
//   length     = min(length, max_input_tokens)             (0: none)
//   length     = min(length, context_length - max_tokens + 1)  (0: none)
// Truncation keeps the prompt's front, so shared prefixes stay shared.
//
//   TANDEM_ASSIGN_OR_RETURN(auto synth, PromptSynthesizer::Create({.vocab_size = 512, .block_tokens = 16}));
//   TANDEM_ASSIGN_OR_RETURN(LoadRequest r, synth->Synthesize(trace[0]));
//
// PromptSynthesizer is immutable after Create: thread-safe.
#ifndef TANDEM_LOADGEN_WORKLOAD_H_
#define TANDEM_LOADGEN_WORKLOAD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loadgen/trace.h"

namespace tandem::loadgen {

// One request as sent.
struct LoadRequest {
  std::vector<int32_t> prompt;  // token ids
  int32_t max_tokens = 0;
  // Sent as GenerateRequest.tenant and .priority (router flow control).
  std::string tenant;
  int32_t priority = 0;
};

// One sender of a multi-tenant run: its name, its share of the requests
// (any positive number; shares are relative) and the priority it sends.
struct TenantShare {
  std::string name;
  double share = 1;
  int32_t priority = 0;
};

// Which tenant sends each of `n` requests: tenant j with probability
// share_j / sum of shares, drawn independently per request from
// std::mt19937_64(seed) (a Poisson stream split this way is one Poisson
// stream per tenant at share_j of the rate). Empty `tenants`: all 0.
// REQUIRES: every share > 0.
std::vector<size_t> AssignTenants(int64_t n, const std::vector<TenantShare>& tenants, uint64_t seed);

class PromptSynthesizer {
 public:
  struct Options {
    // The model's vocabulary size; ids are drawn below it. Required (> first_token_id).
    int32_t vocab_size = 0;
    // Lowest id drawn: ids below it (unk, BOS, EOS in Llama vocabularies) never
    // appear. Default: 3.
    int32_t first_token_id = 3;
    // Put at the front of every prompt (replacing its first token); -1: none.
    // Default: 1 (Llama's BOS).
    int32_t bos_id = 1;
    // Tokens each trace hash id covers. Default: kMooncakeBlockTokens (512).
    int32_t source_block_tokens = kMooncakeBlockTokens;
    // Tokens each hash id becomes in the synthesized prompt (see scaling
    // above); best a multiple of the engine's KV block size so shared blocks
    // line up with cache blocks. Default: kMooncakeBlockTokens (no scaling).
    int32_t block_tokens = kMooncakeBlockTokens;
    // Upper bound on max_tokens; 0: none. Default: 0.
    int32_t max_tokens_cap = 0;
    // Upper bound on the prompt length; 0: none. Default: 0.
    int32_t max_input_tokens = 0;
    // The model's context length: prompt + max_tokens - 1 must fit; 0:
    // unknown (no clamp). Default: 0.
    int32_t context_length = 0;
    // Mixed into every block's PRNG seed. Default: 0.
    uint64_t seed = 0;
  };

  // InvalidArgument names the option out of range.
  static absl::StatusOr<std::unique_ptr<PromptSynthesizer>> Create(const Options& options);

  // The `block_tokens` tokens of hash id `hash_id`.
  std::vector<int32_t> Block(int64_t hash_id) const;

  // The scaled prompt length of `r` before the clamps (see above).
  int32_t ScaledInputLength(const TraceRequest& r) const;

  // The request for `r`. InvalidArgument when r.hash_ids does not have
  // ceil(input_length / source_block_tokens) ids, or when the clamps leave
  // no prompt (context_length <= max_tokens - 1).
  absl::StatusOr<LoadRequest> Synthesize(const TraceRequest& r) const;

 private:
  explicit PromptSynthesizer(const Options& options) : options_(options) {}
  Options options_;
};

// Send times, as offsets from the start of the run.
//
// The trace's own timestamps times `time_scale` (0.5: twice as fast; 2: half
// as fast), relative to the first request's. REQUIRES: time_scale >= 0.
std::vector<absl::Duration> TraceSchedule(const std::vector<TraceRequest>& requests, double time_scale);

// `n` arrivals of a Poisson process of `rate_per_s` (> 0): exponential gaps
// drawn by inverse transform from std::mt19937_64(seed) after a first
// request at 0 (as vLLM's benchmark_serving sends them). The same (n, rate, seed) gives the same schedule on
// every platform.
std::vector<absl::Duration> PoissonSchedule(int64_t n, double rate_per_s, uint64_t seed);

// The sequential infinite-cache prefix hit-rate bound of a replay
// (bench/trace_bound.py's "infinite", ported): requests in send order, every
// block a request brings cached the moment it is sent and never evicted. A
// request's cached tokens are counted the way the engine counts them: the
// leading run of its full blocks seen before, times block_tokens, at most
// prompt - 1 (the last token is always computed). No cache and no routing
// can do better over a whole run, except when requests that share a prefix
// run at once (each may miss the other's blocks, which only lowers the
// measured rate).
//
// Request i's prompt is `prompt_lengths[i]` tokens as sent (after scaling
// and the clamps); its full blocks are records[i].hash_ids[0, length /
// block_tokens). REQUIRES: the two vectors have the same size;
// block_tokens > 0.
struct HitRateBound {
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  double hit_rate = 0;  // cached / prompt tokens; 0 when no prompt tokens
};
HitRateBound InfiniteCacheHitRateBound(const std::vector<TraceRequest>& records,
                                       const std::vector<int32_t>& prompt_lengths, int32_t block_tokens);

}  // namespace tandem::loadgen

#endif  // TANDEM_LOADGEN_WORKLOAD_H_
