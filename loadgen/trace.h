// Request traces for load replay: the Mooncake trace format (JSON Lines) and
// a synthetic workload generator that produces the same records.
//
// A Mooncake line is one request:
//   {"timestamp": 3000, "input_length": 2012, "output_length": 354, "hash_ids": [0, 427, 428, 429]}
// timestamp: arrival in ms after the trace starts (never decreasing);
// input_length/output_length: prompt and response length in tokens;
// hash_ids: one id per `block_tokens`-token block of the prompt (512 in the
// Mooncake release), the last block usually partial; equal ids at a position
// mean an equal prefix up to the end of that block.
//
//   TANDEM_ASSIGN_OR_RETURN(std::vector<TraceRequest> trace,
//                           ReadMooncakeTrace("conversation_trace.jsonl", /*max_requests=*/40));
//
// Plain functions on values; thread-compatible.
#ifndef TANDEM_LOADGEN_TRACE_H_
#define TANDEM_LOADGEN_TRACE_H_

#include <cstdint>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem::loadgen {

// Block size of the Mooncake release's hash_ids.
inline constexpr int32_t kMooncakeBlockTokens = 512;

struct TraceRequest {
  int64_t timestamp_ms = 0;
  int32_t input_length = 0;   // >= 1
  int32_t output_length = 0;  // >= 1
  // One id per block of the prompt; size() == ceil(input_length / block).
  std::vector<int64_t> hash_ids;
};

// Parses Mooncake JSON Lines from `in`, stopping after `max_requests` records
// (0: all). Blank lines are skipped. `source` names the input in errors.
// InvalidArgument names "<source>:<line>" and what is wrong: not JSON, a
// missing or non-integer key, a negative or zero length, a timestamp that
// goes backwards, or hash_ids whose count is not ceil(input_length /
// block_tokens) for block_tokens = kMooncakeBlockTokens.
absl::StatusOr<std::vector<TraceRequest>> ParseMooncakeTrace(std::istream& in, std::string_view source,
                                                             int64_t max_requests = 0);

// Opens `path` and parses it as above. NotFound when it cannot be opened.
absl::StatusOr<std::vector<TraceRequest>> ReadMooncakeTrace(const std::string& path,
                                                            int64_t max_requests = 0);

// A synthetic workload in the same shape as a trace. Each request's prompt is
// `input_length` tokens in blocks of `block_tokens`; its first
// floor(shared_prefix_fraction * input_length / block_tokens) blocks are the
// blocks of one of `num_prefixes` shared prefixes (picked uniformly at
// random), the rest are blocks no other request has. Timestamps are all 0
// (a schedule is applied separately).
struct SyntheticOptions {
  // Requests to generate. Default: 100.
  int32_t num_requests = 100;
  // Prompt and response lengths, tokens. Default: 256 and 32.
  int32_t input_length = 256;
  int32_t output_length = 32;
  // Fraction of each prompt (in whole blocks, rounded down) that is a shared
  // prefix. In [0, 1]. Default: 0.5.
  double shared_prefix_fraction = 0.5;
  // How many distinct shared prefixes there are. >= 1. Default: 4.
  int32_t num_prefixes = 4;
  // Tokens per hash block; the synthesized prompt uses the same block size
  // (no scaling). Default: 16.
  int32_t block_tokens = 16;
  // Seed of the prefix choice. Default: 0.
  uint64_t seed = 0;
};

// InvalidArgument names the option out of range.
absl::StatusOr<std::vector<TraceRequest>> GenerateSyntheticTrace(const SyntheticOptions& options);

}  // namespace tandem::loadgen

#endif  // TANDEM_LOADGEN_TRACE_H_
