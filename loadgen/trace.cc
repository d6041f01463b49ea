#include "loadgen/trace.h"

#include <cmath>
#include <fstream>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace tandem::loadgen {
namespace {

absl::Status LineError(std::string_view source, int64_t line, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrFormat("%s:%d: %s", source, line, what));
}

// Reads integer key `key` of `j` into `out`; false (with `why`) when missing
// or not an integer in range.
template <typename T>
bool GetInteger(const nlohmann::json& j, const char* key, T* out, std::string* why) {
  auto it = j.find(key);
  if (it == j.end()) {
    *why = absl::StrFormat("missing key \"%s\"", key);
    return false;
  }
  if (!it->is_number_integer()) {
    *why = absl::StrFormat("\"%s\" is not an integer", key);
    return false;
  }
  const int64_t v = it->get<int64_t>();
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    *why = absl::StrFormat("\"%s\" is out of range", key);
    return false;
  }
  if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
    *why = absl::StrFormat("\"%s\" is out of range", key);
    return false;
  }
  *out = static_cast<T>(v);
  return true;
}

}  // namespace

absl::StatusOr<std::vector<TraceRequest>> ParseMooncakeTrace(std::istream& in, std::string_view source,
                                                             int64_t max_requests) {
  std::vector<TraceRequest> out;
  std::string text;
  int64_t line = 0;
  while ((max_requests <= 0 || static_cast<int64_t>(out.size()) < max_requests) && std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return LineError(source, line, "not valid JSON");
    if (!j.is_object()) return LineError(source, line, "not a JSON object");
    TraceRequest r;
    std::string why;
    if (!GetInteger(j, "timestamp", &r.timestamp_ms, &why) ||
        !GetInteger(j, "input_length", &r.input_length, &why) ||
        !GetInteger(j, "output_length", &r.output_length, &why)) {
      return LineError(source, line, why);
    }
    if (r.timestamp_ms < 0) return LineError(source, line, "\"timestamp\" is negative");
    if (r.input_length < 1) return LineError(source, line, "\"input_length\" must be >= 1");
    if (r.output_length < 1) return LineError(source, line, "\"output_length\" must be >= 1");
    if (!out.empty() && r.timestamp_ms < out.back().timestamp_ms) {
      return LineError(source, line,
                       absl::StrFormat("\"timestamp\" %d is before the previous line's %d", r.timestamp_ms,
                                       out.back().timestamp_ms));
    }
    auto ids = j.find("hash_ids");
    if (ids == j.end()) return LineError(source, line, "missing key \"hash_ids\"");
    if (!ids->is_array()) return LineError(source, line, "\"hash_ids\" is not a list");
    r.hash_ids.reserve(ids->size());
    for (const nlohmann::json& id : *ids) {
      if (!id.is_number_integer() || (id.is_number_unsigned() && id.get<uint64_t>() > INT64_MAX) ||
          id.get<int64_t>() < 0) {
        return LineError(source, line, "\"hash_ids\" holds a value that is not a non-negative integer");
      }
      r.hash_ids.push_back(id.get<int64_t>());
    }
    const int64_t blocks =
        (static_cast<int64_t>(r.input_length) + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens;
    if (static_cast<int64_t>(r.hash_ids.size()) != blocks) {
      return LineError(
          source, line,
          absl::StrFormat("%d hash_ids for input_length %d; expected ceil(%d / %d) = %d", r.hash_ids.size(),
                          r.input_length, r.input_length, kMooncakeBlockTokens, blocks));
    }
    out.push_back(std::move(r));
  }
  if (in.bad()) return absl::DataLossError(absl::StrFormat("%s: read error after line %d", source, line));
  return out;
}

absl::StatusOr<std::vector<TraceRequest>> ReadMooncakeTrace(const std::string& path, int64_t max_requests) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open trace file %s", path));
  return ParseMooncakeTrace(in, path, max_requests);
}

absl::StatusOr<std::vector<TraceRequest>> GenerateSyntheticTrace(const SyntheticOptions& o) {
  if (o.num_requests < 0) return absl::InvalidArgumentError("synthetic: num_requests must be >= 0");
  if (o.input_length < 1) return absl::InvalidArgumentError("synthetic: input_length must be >= 1");
  if (o.output_length < 1) return absl::InvalidArgumentError("synthetic: output_length must be >= 1");
  if (!(o.shared_prefix_fraction >= 0 && o.shared_prefix_fraction <= 1)) {
    return absl::InvalidArgumentError("synthetic: shared_prefix_fraction must be in [0, 1]");
  }
  if (o.num_prefixes < 1) return absl::InvalidArgumentError("synthetic: num_prefixes must be >= 1");
  if (o.block_tokens < 1) return absl::InvalidArgumentError("synthetic: block_tokens must be >= 1");
  const int64_t blocks = (static_cast<int64_t>(o.input_length) + o.block_tokens - 1) / o.block_tokens;
  const int64_t shared_blocks = std::min<int64_t>(
      blocks, static_cast<int64_t>(std::floor(o.shared_prefix_fraction * o.input_length / o.block_tokens)));
  // Ids: prefix p's block i is p * shared_blocks + i; unique blocks follow.
  int64_t next_unique = static_cast<int64_t>(o.num_prefixes) * shared_blocks;
  std::mt19937_64 rng(o.seed);  // fully specified by the standard: same on every platform
  std::vector<TraceRequest> out(o.num_requests);
  for (TraceRequest& r : out) {
    r.input_length = o.input_length;
    r.output_length = o.output_length;
    const int64_t prefix = static_cast<int64_t>(rng() % static_cast<uint64_t>(o.num_prefixes));
    for (int64_t i = 0; i < blocks; ++i) {
      r.hash_ids.push_back(i < shared_blocks ? prefix * shared_blocks + i : next_unique++);
    }
  }
  return out;
}

}  // namespace tandem::loadgen
