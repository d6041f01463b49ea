// Checks a tandem.v1.GenerateRequest against the served model and turns it
// into what the router's request path uses: token ids, effective max_tokens
// and sampling, stop strings and SLO targets. Pure: no I/O, no clock, no
// state, so every rule is unit-tested here (request_validation_test.cc).
//
//   absl::StatusOr<ValidatedRequest> v = ValidateRequest(request, *model_info, {.default_max_tokens = 64});
//   if (!v.ok()) return Finish(v.status());   // INVALID_ARGUMENT naming the field, or NOT_FOUND (model)
//
// The HTTP front (openai_front.h) translates its JSON into a GenerateRequest
// and checks the SLO fields with ValidateSlo, the same rule the core applies,
// so both fronts accept and refuse the same targets.
//
// Thread safety: pure functions (the tokenizer is used read-only).
#ifndef TANDEM_ROUTER_REQUEST_VALIDATION_H_
#define TANDEM_ROUTER_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model_info.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::router {

struct ValidationOptions {
  // max_tokens of a request that leaves it 0. Default: 64.
  int32_t default_max_tokens = 64;
};

// Limits the validator enforces (also the messages' numbers).
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int32_t kMinPriority = -100;
inline constexpr int32_t kMaxPriority = 100;
inline constexpr size_t kMaxTenantBytes = 128;

struct ValidatedRequest {
  // The prompt as token ids: the text encoded with BOS, or the ids as given.
  std::vector<int32_t> prompt;
  // The request's max_tokens, or the default when it was 0.
  int32_t max_tokens = 0;
  // The request's sampling with proto3's unset top_p (0) read as 1.
  tandem::v1::SamplingParams sampling;
  std::vector<std::string> stops;
  // Per-request targets; 0 when unset (the router's defaults apply).
  double ttft_slo_ms = 0;
  double tpot_slo_ms = 0;
  // Stop at the end-of-generation token (unset: true).
  bool stop_at_eos = true;
  // As given; may be empty (the router names the request then).
  std::string request_id;
  // Flow control: in [kMinPriority, kMaxPriority]; the tenant as given.
  int32_t priority = 0;
  std::string tenant;
};

// INVALID_ARGUMENT "<field>: <why>" for a malformed field; NOT_FOUND when
// `model` names a model other than `info`'s model_id or spec.
absl::StatusOr<ValidatedRequest> ValidateRequest(const tandem::v1::GenerateRequest& request,
                                                 const model::ModelInfo& info,
                                                 const ValidationOptions& options = {});

// The SLO rule both fronts share: a target that is set must be a positive,
// finite number of milliseconds. Unset means "the router's default"; an
// explicit 0 is refused rather than silently read as unset (a 0 ms target can
// never be met). INVALID_ARGUMENT "slo.ttft_ms: ..." / "slo.tpot_ms: ...".
absl::Status ValidateSlo(const tandem::v1::SloTargets& slo);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_REQUEST_VALIDATION_H_
