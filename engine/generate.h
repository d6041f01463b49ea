// One sequence, start to finish: tokenize, prefill, decode until a stop
// condition. The smallest complete use of the model; the batched engine
// (scheduler, block pool, prefix cache) runs the same steps for many
// sequences at once.
//
//   TANDEM_ASSIGN_OR_RETURN(GenerateResult r,
//       GenerateOne(*llama, *backend, *tokenizer, {.prompt = "Once upon a time"}));
#ifndef TANDEM_ENGINE_GENERATE_H_
#define TANDEM_ENGINE_GENERATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sampler.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace tandem::engine {

struct GenerateRequest {
  std::string prompt;
  // New tokens to generate at most. Default: 64. Must be >= 1.
  int32_t max_tokens = 64;
  SamplingParams sampling;
  // Stop when an end-of-generation token (EOS) is sampled. Default: true.
  bool stop_at_eos = true;
  // Tokens per KV block. Default: 16.
  int32_t block_size = 16;
  // The KV cache's element type (kernels/kv_layout.h). Default: F32.
  DType kv_dtype = DType::kF32;
};

enum class FinishReason { kLength, kStop };
const char* FinishReasonName(FinishReason r);  // "length" / "stop"

struct GenerateResult {
  std::vector<int32_t> prompt_token_ids;  // with BOS
  std::vector<int32_t> generated_token_ids;
  std::string text;  // generated tokens detokenized (not the prompt)
  FinishReason finish_reason = FinishReason::kLength;
  std::vector<float> first_step_logits;  // logits after the prompt
};

// InvalidArgument when the prompt plus max_tokens exceeds the model's context
// length or a sampling parameter is out of range.
absl::StatusOr<GenerateResult> GenerateOne(model::LlamaModel& llama, kernels::Backend& backend,
                                           const model::Tokenizer& tokenizer, const GenerateRequest& request);

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_GENERATE_H_
