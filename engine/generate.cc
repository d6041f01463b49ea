#include "engine/generate.h"

#include <numeric>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::engine {

const char* FinishReasonName(FinishReason r) { return r == FinishReason::kStop ? "stop" : "length"; }

absl::StatusOr<GenerateResult> GenerateOne(model::LlamaModel& llama, kernels::Backend& backend,
                                           const model::Tokenizer& tokenizer,
                                           const GenerateRequest& request) {
  TANDEM_RETURN_IF_ERROR(request.sampling.Validate());
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("max_tokens must be >= 1, got %d", request.max_tokens));
  }
  if (request.block_size < 1) return absl::InvalidArgumentError("block_size must be >= 1");
  const model::ModelConfig& config = llama.config();
  GenerateResult result;
  result.prompt_token_ids = tokenizer.Encode(request.prompt, /*add_bos=*/true);
  if (result.prompt_token_ids.empty()) {
    return absl::InvalidArgumentError("prompt is empty and the model adds no BOS token");
  }
  const int64_t prompt_len = static_cast<int64_t>(result.prompt_token_ids.size());
  // The last generated token is never fed back, so the context holds at most
  // prompt + max_tokens - 1 tokens.
  const int64_t total = prompt_len + request.max_tokens - 1;
  if (total > config.context_length) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prompt of %d tokens plus max_tokens %d exceeds the model's context length %d",
                        prompt_len, request.max_tokens, config.context_length));
  }

  // A private KV region for this one sequence, in the paged layout.
  kernels::KvCacheView kv;
  kv.layout = config.KvLayoutFor(request.block_size, request.kv_dtype);
  kv.num_blocks = static_cast<int32_t>((total + request.block_size - 1) / request.block_size);
  TANDEM_ASSIGN_OR_RETURN(void* kv_memory, backend.Allocate(kv.num_blocks * kv.layout.BlockBytes()));
  absl::Cleanup free_kv = [&] { backend.Free(kv_memory); };
  kv.base = kv_memory;
  std::vector<int32_t> block_table(kv.num_blocks);
  std::iota(block_table.begin(), block_table.end(), 0);

  Sampler sampler(request.sampling);
  std::vector<float> logits(config.vocab_size);
  std::vector<int32_t> tokens = result.prompt_token_ids;
  std::vector<int32_t> positions;
  int32_t done = 0;  // tokens whose KV is in the cache
  while (true) {
    const int32_t n = static_cast<int32_t>(tokens.size()) - done;
    positions.resize(n);
    std::iota(positions.begin(), positions.end(), done);  // slot == position here
    const kernels::AttentionSequence seq{0, n, done + n, block_table};
    const int32_t last = n - 1;
    model::ForwardBatch batch{absl::MakeConstSpan(tokens).subspan(done), positions, positions,
                              absl::MakeConstSpan(&seq, 1), absl::MakeConstSpan(&last, 1)};
    TANDEM_RETURN_IF_ERROR(llama.Forward(batch, kv, logits.data()));
    if (done == 0) result.first_step_logits = logits;
    done += n;
    const int32_t next = sampler.Sample(logits);
    if (request.stop_at_eos && tokenizer.IsEndOfGeneration(next)) {
      // The end-of-generation token ends the output; it is not part of it.
      result.finish_reason = FinishReason::kStop;
      break;
    }
    result.generated_token_ids.push_back(next);
    if (static_cast<int32_t>(result.generated_token_ids.size()) >= request.max_tokens) break;
    tokens.push_back(next);
  }
  result.text = tokenizer.Decode(result.generated_token_ids);
  return result;
}

}  // namespace tandem::engine
