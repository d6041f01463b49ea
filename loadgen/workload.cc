#include "loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "xxhash.h"

namespace tandem::loadgen {
namespace {

// SplitMix64 step: a fast, well-mixed stream from one 64-bit state.
uint64_t NextRandom(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PromptSynthesizer>> PromptSynthesizer::Create(const Options& o) {
  if (o.first_token_id < 0) return absl::InvalidArgumentError("first_token_id must be >= 0");
  if (o.vocab_size <= o.first_token_id) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "vocab_size (%d) must be greater than first_token_id (%d)", o.vocab_size, o.first_token_id));
  }
  if (o.bos_id < -1 || o.bos_id >= o.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bos_id %d is outside the vocabulary of %d (-1: none)", o.bos_id, o.vocab_size));
  }
  if (o.source_block_tokens < 1) return absl::InvalidArgumentError("source_block_tokens must be >= 1");
  if (o.block_tokens < 1) return absl::InvalidArgumentError("block_tokens must be >= 1");
  if (o.max_tokens_cap < 0) return absl::InvalidArgumentError("max_tokens_cap must be >= 0");
  if (o.max_input_tokens < 0) return absl::InvalidArgumentError("max_input_tokens must be >= 0");
  if (o.context_length < 0) return absl::InvalidArgumentError("context_length must be >= 0");
  return std::unique_ptr<PromptSynthesizer>(new PromptSynthesizer(o));
}

std::vector<int32_t> PromptSynthesizer::Block(int64_t hash_id) const {
  // XXH3 of the id's little-endian bytes, seeded: stable across processes.
  uint8_t bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(hash_id) >> (8 * i));
  uint64_t state = XXH3_64bits_withSeed(bytes, sizeof(bytes), options_.seed);
  const uint64_t range = static_cast<uint64_t>(options_.vocab_size - options_.first_token_id);
  std::vector<int32_t> block(options_.block_tokens);
  for (int32_t& t : block) {
    // Multiply-shift maps 64 random bits to [0, range) (Lemire); the bias is
    // below 2^-32 for any vocabulary.
    const uint64_t x = NextRandom(state);
    t = options_.first_token_id +
        static_cast<int32_t>(static_cast<uint64_t>((static_cast<unsigned __int128>(x) * range) >> 64));
  }
  return block;
}

int32_t PromptSynthesizer::ScaledInputLength(const TraceRequest& r) const {
  const int64_t s = options_.source_block_tokens, b = options_.block_tokens;
  const int64_t n = (static_cast<int64_t>(r.input_length) + s - 1) / s;
  if (n == 0) return 0;
  const int64_t last = r.input_length - (n - 1) * s;  // 1..s
  const int64_t scaled = (n - 1) * b + (last * b + s - 1) / s;
  return static_cast<int32_t>(std::min<int64_t>(scaled, INT32_MAX));
}

absl::StatusOr<LoadRequest> PromptSynthesizer::Synthesize(const TraceRequest& r) const {
  const int64_t s = options_.source_block_tokens;
  const int64_t n = (static_cast<int64_t>(r.input_length) + s - 1) / s;
  if (r.input_length < 1 || static_cast<int64_t>(r.hash_ids.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request with input_length %d has %d hash_ids; expected ceil(%d / %d) = %d",
                        r.input_length, r.hash_ids.size(), r.input_length, s, n));
  }
  LoadRequest out;
  out.max_tokens = r.output_length;
  if (options_.max_tokens_cap > 0) out.max_tokens = std::min(out.max_tokens, options_.max_tokens_cap);
  int64_t length = ScaledInputLength(r);
  if (options_.max_input_tokens > 0) length = std::min<int64_t>(length, options_.max_input_tokens);
  if (options_.context_length > 0) {
    length = std::min<int64_t>(length, static_cast<int64_t>(options_.context_length) - out.max_tokens + 1);
  }
  if (length < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens %d leaves no room for a prompt in the context length %d", out.max_tokens,
                        options_.context_length));
  }
  out.prompt.reserve(length);
  for (int64_t id : r.hash_ids) {
    if (static_cast<int64_t>(out.prompt.size()) >= length) break;
    const std::vector<int32_t> block = Block(id);
    const size_t take = std::min<size_t>(block.size(), length - out.prompt.size());
    out.prompt.insert(out.prompt.end(), block.begin(), block.begin() + take);
  }
  if (options_.bos_id >= 0) out.prompt[0] = options_.bos_id;
  return out;
}

std::vector<absl::Duration> TraceSchedule(const std::vector<TraceRequest>& requests, double time_scale) {
  std::vector<absl::Duration> out;
  out.reserve(requests.size());
  if (requests.empty()) return out;
  const int64_t first = requests.front().timestamp_ms;
  for (const TraceRequest& r : requests) {
    out.push_back(absl::Milliseconds(static_cast<double>(r.timestamp_ms - first) * time_scale));
  }
  return out;
}

std::vector<size_t> AssignTenants(int64_t n, const std::vector<TenantShare>& tenants, uint64_t seed) {
  std::vector<size_t> out(n > 0 ? n : 0, 0);
  if (tenants.size() < 2) return out;
  double total = 0;
  for (const TenantShare& t : tenants) total += t.share;
  // A stream of its own (seed + a constant), so adding tenants does not
  // move the send times drawn from `seed`.
  std::mt19937_64 rng(seed ^ 0x7e4a47d1f1c0ffeeull);
  for (size_t& pick : out) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
    double acc = 0;
    pick = tenants.size() - 1;
    for (size_t j = 0; j < tenants.size(); ++j) {
      acc += tenants[j].share;
      if (u < acc) {
        pick = j;
        break;
      }
    }
  }
  return out;
}

std::vector<absl::Duration> PoissonSchedule(int64_t n, double rate_per_s, uint64_t seed) {
  std::vector<absl::Duration> out;
  out.reserve(n > 0 ? n : 0);
  std::mt19937_64 rng(seed);
  double t = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) {
      // u in [0, 1) from the top 53 bits; -ln(1 - u) / rate is Exp(rate).
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      t += -std::log1p(-u) / rate_per_s;
    }
    out.push_back(absl::Seconds(t));
  }
  return out;
}

HitRateBound InfiniteCacheHitRateBound(const std::vector<TraceRequest>& records,
                                       const std::vector<int32_t>& prompt_lengths, int32_t block_tokens) {
  HitRateBound bound;
  absl::flat_hash_set<int64_t> seen;
  const size_t n = std::min(records.size(), prompt_lengths.size());
  for (size_t i = 0; i < n; ++i) {
    const int32_t length = prompt_lengths[i];
    const std::vector<int64_t>& ids = records[i].hash_ids;
    const size_t full = std::min(ids.size(), static_cast<size_t>(length / block_tokens));
    size_t leading = 0;
    while (leading < full && seen.contains(ids[leading])) ++leading;
    bound.prompt_tokens += length;
    bound.cached_tokens +=
        std::min<int64_t>(static_cast<int64_t>(leading) * block_tokens, std::max(0, length - 1));
    seen.insert(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(full));
  }
  if (bound.prompt_tokens > 0) {
    bound.hit_rate = static_cast<double>(bound.cached_tokens) / static_cast<double>(bound.prompt_tokens);
  }
  return bound;
}

}  // namespace tandem::loadgen
