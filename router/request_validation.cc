#include "router/request_validation.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "proto/sampling_defaults.h"

namespace tandem::router {
namespace {

using tandem::v1::GenerateRequest;

absl::StatusOr<std::vector<int32_t>> PromptTokens(const GenerateRequest& req, const model::ModelInfo& info) {
  switch (req.input_case()) {
    case GenerateRequest::kPrompt: {
      std::vector<int32_t> prompt = info.tokenizer->Encode(req.prompt(), /*add_bos=*/true);
      if (prompt.empty()) return absl::InvalidArgumentError("prompt: encodes to no tokens");
      return prompt;
    }
    case GenerateRequest::kPromptTokenIds: {
      if (req.prompt_token_ids().ids().empty()) return absl::InvalidArgumentError("prompt_token_ids: empty");
      const int32_t vocab = info.config.vocab_size;
      for (int32_t id : req.prompt_token_ids().ids()) {
        if (id < 0 || id >= vocab) {
          return absl::InvalidArgumentError(
              absl::StrFormat("prompt_token_ids: id %d outside the vocabulary of %d", id, vocab));
        }
      }
      return std::vector<int32_t>(req.prompt_token_ids().ids().begin(), req.prompt_token_ids().ids().end());
    }
    default:
      return absl::InvalidArgumentError("input: set prompt or prompt_token_ids");
  }
}

absl::Status CheckSampling(const tandem::v1::SamplingParams& s) {
  if (!(s.temperature() >= 0)) return absl::InvalidArgumentError("sampling.temperature: must be >= 0");
  if (s.top_k() < 0) return absl::InvalidArgumentError("sampling.top_k: must be >= 0");
  if (!(s.top_p() > 0 && s.top_p() <= 1))
    return absl::InvalidArgumentError("sampling.top_p: must be in (0, 1]");
  // The engine's bound (engine::SamplingParams::kMaxSkipDraws): a resumed
  // stream drew at most one value per token of its context.
  if (s.skip_draws() < 0 || s.skip_draws() > (1 << 24))
    return absl::InvalidArgumentError("sampling.skip_draws: must be in [0, 16777216]");
  return absl::OkStatus();
}

absl::Status CheckSloTarget(const char* field, double ms) {
  if (!(ms > 0) || std::isinf(ms)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: must be a positive number of milliseconds (leave it unset for the router's default)", field));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSlo(const tandem::v1::SloTargets& slo) {
  if (slo.has_ttft_ms()) {
    if (absl::Status s = CheckSloTarget("slo.ttft_ms", slo.ttft_ms()); !s.ok()) return s;
  }
  if (slo.has_tpot_ms()) {
    if (absl::Status s = CheckSloTarget("slo.tpot_ms", slo.tpot_ms()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<ValidatedRequest> ValidateRequest(const GenerateRequest& req, const model::ModelInfo& info,
                                                 const ValidationOptions& options) {
  const model::ModelConfig& config = info.config;
  ValidatedRequest out;
  absl::StatusOr<std::vector<int32_t>> prompt = PromptTokens(req, info);
  if (!prompt.ok()) return prompt.status();
  out.prompt = *std::move(prompt);
  if (req.max_tokens() < 0) return absl::InvalidArgumentError("max_tokens: must be >= 0");
  out.max_tokens = req.max_tokens() == 0 ? options.default_max_tokens : req.max_tokens();
  if (static_cast<int64_t>(out.prompt.size()) + out.max_tokens - 1 > config.context_length) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens: prompt of %d tokens plus max_tokens %d exceeds the context length %d",
                        out.prompt.size(), out.max_tokens, config.context_length));
  }
  out.sampling = req.sampling();
  out.sampling.set_top_p(EffectiveTopP(req.sampling()));
  if (absl::Status s = CheckSampling(out.sampling); !s.ok()) return s;
  if (req.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrFormat("stop: at most %d stop strings", kMaxStopStrings));
  }
  for (const std::string& s : req.stop()) {
    if (s.empty() || s.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("stop: each stop string must be 1 to %d bytes", kMaxStopStringBytes));
    }
    out.stops.push_back(s);
  }
  if (!req.model().empty() && req.model() != config.model_id && req.model() != info.spec) {
    return absl::NotFoundError(
        absl::StrFormat("model: '%s' is not served here (serving '%s')", req.model(), config.model_id));
  }
  if (req.request_id().size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("request_id: at most %d bytes", kMaxRequestIdBytes));
  }
  if (absl::Status s = ValidateSlo(req.slo()); !s.ok()) return s;
  out.ttft_slo_ms = req.slo().ttft_ms();
  out.tpot_slo_ms = req.slo().tpot_ms();
  out.stop_at_eos = !req.has_stop_at_eos() || req.stop_at_eos();
  out.request_id = req.request_id();
  if (req.priority() < kMinPriority || req.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(
        absl::StrFormat("priority: %d is outside %d to %d", req.priority(), kMinPriority, kMaxPriority));
  }
  if (req.tenant().size() > kMaxTenantBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("tenant: at most %d bytes", kMaxTenantBytes));
  }
  out.priority = req.priority();
  out.tenant = req.tenant();
  return out;
}

}  // namespace tandem::router
