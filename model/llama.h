// The Llama forward pass, written once against kernels::Backend.
//
//   TANDEM_ASSIGN_OR_RETURN(auto llama, LlamaModel::Create(config, weights, backend));
//   ForwardBatch batch{...};                   // token rows of one or more sequences
//   TANDEM_RETURN_IF_ERROR(llama->Forward(batch, kv, logits.data()));
//
// One call runs one engine step: any mix of prompt chunks and decode tokens
// from any number of sequences, each with its own block table into the paged
// KV cache. FP32 activations; weights F32/F16/BF16/Q8_0 as the backend allows.
//
// Thread safety: driven by one thread (the backend's owner).
#ifndef TANDEM_MODEL_LLAMA_H_
#define TANDEM_MODEL_LLAMA_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "model/model_config.h"
#include "model/weights.h"

namespace tandem::model {

struct ForwardBatch {
  absl::Span<const int32_t> tokens;     // one per row
  absl::Span<const int32_t> positions;  // position of each row in its sequence
  absl::Span<const int32_t> slots;      // KV slot of each row (block * block_size + offset)
  absl::Span<const kernels::AttentionSequence> sequences;
  // Rows whose next-token logits are wanted (usually each sequence's last row).
  absl::Span<const int32_t> logit_rows;
  // Optional: asked before each layer (its index); true stops the pass there
  // and Forward returns Aborted, having written only part of the rows' KV
  // (positions the caller has not counted as computed, so a later pass over
  // the same rows overwrites them). The engine uses it to preempt a prompt
  // step for a request that goes before it (Engine::ComputeStep).
  std::function<bool(int32_t layer)> stop_before_layer;
};

class LlamaModel {
 public:
  // `backend` is borrowed and must outlive the model. Weights are prepared for
  // the backend here (in place on CPU). A config with rope_scaling needs the
  // backend's RopeWithFreqFactors: Unimplemented, naming the backend, without.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(const ModelConfig& config,
                                                            const LlamaWeights& host_weights,
                                                            kernels::Backend* backend);
  ~LlamaModel();

  const ModelConfig& config() const { return config_; }

  // Runs the batch and writes logits_rows.size() x vocab_size floats to
  // `host_logits` (host memory). InvalidArgument on malformed batches (token
  // ids or positions out of range, inconsistent lengths); Aborted when
  // batch.stop_before_layer stopped the pass (no logits written).
  absl::Status Forward(const ForwardBatch& batch, const kernels::KvCacheView& kv, float* host_logits);

 private:
  LlamaModel(const ModelConfig& config, kernels::Backend* backend) : config_(config), backend_(backend) {}
  absl::Status EnsureWorkspace(int64_t rows);
  absl::Status Validate(const ForwardBatch& batch, const kernels::KvCacheView& kv) const;

  ModelConfig config_;
  kernels::Backend* backend_;  // borrowed
  LlamaWeights weights_;       // prepared for backend_
  // RopeFreqFactors(config_) (host memory); empty without rope scaling.
  std::vector<float> rope_freq_factors_;

  // Activation buffers in backend memory, sized for workspace_rows_ rows.
  int64_t workspace_rows_ = 0;
  float* x_ = nullptr;       // [rows][dim] residual stream
  float* xb_ = nullptr;      // [rows][dim]
  float* q_ = nullptr;       // [rows][heads * head_dim]
  float* k_ = nullptr;       // [rows][kv_heads * head_dim]
  float* v_ = nullptr;       // [rows][kv_heads * head_dim]
  float* att_ = nullptr;     // [rows][heads * head_dim]
  float* gate_ = nullptr;    // [rows][ffn]
  float* up_ = nullptr;      // [rows][ffn]
  float* logits_ = nullptr;  // [rows][vocab]
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_LLAMA_H_
