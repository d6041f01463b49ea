#include "model/llama.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::model {

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(const ModelConfig& config,
                                                               const LlamaWeights& host,
                                                               kernels::Backend* backend) {
  TANDEM_RETURN_IF_ERROR(config.Validate());
  if (host.layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError("llama: weights do not match num_layers");
  }
  std::unique_ptr<LlamaModel> m(new LlamaModel(config, backend));
  m->rope_freq_factors_ = RopeFreqFactors(config);
  if (!m->rope_freq_factors_.empty() &&
      !backend->RopeWithFreqFactors(nullptr, 0, config.num_heads, config.head_dim, config.rope_dims, {},
                                    config.rope_freq_base, m->rope_freq_factors_, config.rope_style)) {
    return absl::UnimplementedError(
        absl::StrFormat("backend %s does not implement RopeWithFreqFactors, which llama3 rope_scaling needs",
                        backend->name()));
  }
  auto prepare = [&](const kernels::Weight& w) -> absl::StatusOr<kernels::Weight> {
    if (!backend->SupportsWeightType(w.dtype)) {
      return absl::UnimplementedError(
          absl::StrFormat("backend %s does not support %s weights", backend->name(), DTypeName(w.dtype)));
    }
    return backend->PrepareWeight(w);
  };
  LlamaWeights& w = m->weights_;
  TANDEM_ASSIGN_OR_RETURN(w.token_embd, prepare(host.token_embd));
  TANDEM_ASSIGN_OR_RETURN(w.output_norm, prepare(host.output_norm));
  if (host.output.data == host.token_embd.data) {
    w.output = w.token_embd;
  } else {
    TANDEM_ASSIGN_OR_RETURN(w.output, prepare(host.output));
  }
  for (const LayerWeights& hl : host.layers) {
    LayerWeights l;
    TANDEM_ASSIGN_OR_RETURN(l.attn_norm, prepare(hl.attn_norm));
    TANDEM_ASSIGN_OR_RETURN(l.wq, prepare(hl.wq));
    TANDEM_ASSIGN_OR_RETURN(l.wk, prepare(hl.wk));
    TANDEM_ASSIGN_OR_RETURN(l.wv, prepare(hl.wv));
    TANDEM_ASSIGN_OR_RETURN(l.wo, prepare(hl.wo));
    TANDEM_ASSIGN_OR_RETURN(l.ffn_norm, prepare(hl.ffn_norm));
    TANDEM_ASSIGN_OR_RETURN(l.w_gate, prepare(hl.w_gate));
    TANDEM_ASSIGN_OR_RETURN(l.w_up, prepare(hl.w_up));
    TANDEM_ASSIGN_OR_RETURN(l.w_down, prepare(hl.w_down));
    // Attention biases (Qwen2): F32 vectors added after the projections.
    const int64_t widths[3] = {int64_t{config.num_heads} * config.head_dim,
                               int64_t{config.num_kv_heads} * config.head_dim,
                               int64_t{config.num_kv_heads} * config.head_dim};
    const kernels::Weight* host_bias[3] = {&hl.bq, &hl.bk, &hl.bv};
    kernels::Weight* bias[3] = {&l.bq, &l.bk, &l.bv};
    for (int i = 0; i < 3; ++i) {
      if (host_bias[i]->data == nullptr) {
        if (config.attention_bias) return absl::InvalidArgumentError("llama: attention bias missing");
        continue;
      }
      if (host_bias[i]->dtype != DType::kF32 || host_bias[i]->rows != 1 || host_bias[i]->cols != widths[i]) {
        return absl::InvalidArgumentError(
            "llama: attention bias must be an F32 vector of the projection width");
      }
      TANDEM_ASSIGN_OR_RETURN(*bias[i], prepare(*host_bias[i]));
    }
    w.layers.push_back(l);
  }
  return m;
}

LlamaModel::~LlamaModel() {
  for (float* p : {x_, xb_, q_, k_, v_, att_, gate_, up_, logits_}) {
    if (p != nullptr) backend_->Free(p);
  }
}

absl::Status LlamaModel::EnsureWorkspace(int64_t rows) {
  if (rows <= workspace_rows_) return absl::OkStatus();
  const ModelConfig& c = config_;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  struct Buf {
    float** ptr;
    int64_t width;
  };
  const Buf bufs[] = {{&x_, c.dim},        {&xb_, c.dim},     {&q_, q_dim},
                      {&k_, kv_dim},       {&v_, kv_dim},     {&att_, q_dim},
                      {&gate_, c.ffn_dim}, {&up_, c.ffn_dim}, {&logits_, c.vocab_size}};
  for (const Buf& b : bufs) {
    if (*b.ptr != nullptr) backend_->Free(*b.ptr);
    *b.ptr = nullptr;
  }
  workspace_rows_ = 0;
  for (const Buf& b : bufs) {
    TANDEM_ASSIGN_OR_RETURN(void* p, backend_->Allocate(rows * b.width * sizeof(float)));
    *b.ptr = static_cast<float*>(p);
  }
  workspace_rows_ = rows;
  return absl::OkStatus();
}

absl::Status LlamaModel::Validate(const ForwardBatch& b, const kernels::KvCacheView& kv) const {
  const size_t rows = b.tokens.size();
  if (rows == 0) return absl::InvalidArgumentError("llama: empty batch");
  if (b.positions.size() != rows || b.slots.size() != rows) {
    return absl::InvalidArgumentError("llama: tokens, positions and slots differ in length");
  }
  if (kv.layout.num_layers != config_.num_layers || kv.layout.num_kv_heads != config_.num_kv_heads ||
      kv.layout.head_dim != config_.head_dim) {
    return absl::InvalidArgumentError("llama: KV cache layout does not match the model");
  }
  const int64_t num_slots = int64_t{kv.num_blocks} * kv.layout.block_size;
  for (size_t r = 0; r < rows; ++r) {
    if (b.tokens[r] < 0 || b.tokens[r] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "llama: token id %d at row %d outside vocabulary of %d", b.tokens[r], r, config_.vocab_size));
    }
    if (b.positions[r] < 0 || b.positions[r] >= config_.context_length) {
      return absl::InvalidArgumentError(absl::StrFormat("llama: position %d outside context length %d",
                                                        b.positions[r], config_.context_length));
    }
    if (b.slots[r] < 0 || b.slots[r] >= num_slots) {
      return absl::InvalidArgumentError(absl::StrFormat("llama: KV slot %d out of range", b.slots[r]));
    }
  }
  size_t covered = 0;
  for (const kernels::AttentionSequence& s : b.sequences) {
    const int64_t blocks_needed = (int64_t{s.context_len} + kv.layout.block_size - 1) / kv.layout.block_size;
    if (s.num_queries <= 0 || s.context_len < s.num_queries || s.query_start < 0 ||
        static_cast<size_t>(s.query_start) + s.num_queries > rows ||
        static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError("llama: malformed attention sequence");
    }
    for (int64_t i = 0; i < blocks_needed; ++i) {
      if (s.block_table[i] < 0 || s.block_table[i] >= kv.num_blocks) {
        return absl::InvalidArgumentError("llama: block id out of range");
      }
    }
    covered += s.num_queries;
  }
  if (covered != rows) return absl::InvalidArgumentError("llama: sequences do not cover every row");
  for (int32_t r : b.logit_rows) {
    if (r < 0 || static_cast<size_t>(r) >= rows) {
      return absl::InvalidArgumentError("llama: logit row out of range");
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Forward(const ForwardBatch& b, const kernels::KvCacheView& kv, float* host_logits) {
  TANDEM_RETURN_IF_ERROR(Validate(b, kv));
  const ModelConfig& c = config_;
  const int64_t rows = static_cast<int64_t>(b.tokens.size());
  TANDEM_RETURN_IF_ERROR(EnsureWorkspace(rows));
  kernels::Backend& be = *backend_;
  const kernels::OpsScope ops(be);  // one run of ops (see Backend::BeginOps)
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  be.Embed(weights_.token_embd, b.tokens, x_);
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    if (b.stop_before_layer && b.stop_before_layer(layer)) {
      return absl::AbortedError(absl::StrFormat("llama: forward pass stopped before layer %d", layer));
    }
    const LayerWeights& l = weights_.layers[layer];
    // Attention block.
    be.RmsNorm(x_, rows, l.attn_norm, c.rms_eps, xb_);
    be.MatMul(xb_, rows, l.wq, q_);
    be.MatMul(xb_, rows, l.wk, k_);
    be.MatMul(xb_, rows, l.wv, v_);
    if (l.bq.data != nullptr) {
      const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
      for (int64_t r = 0; r < rows; ++r) {
        be.Add(q_ + r * q_dim, static_cast<const float*>(l.bq.data), q_dim);
        be.Add(k_ + r * kv_dim, static_cast<const float*>(l.bk.data), kv_dim);
        be.Add(v_ + r * kv_dim, static_cast<const float*>(l.bv.data), kv_dim);
      }
    }
    for (auto [x, heads] : {std::pair{q_, c.num_heads}, std::pair{k_, c.num_kv_heads}}) {
      if (rope_freq_factors_.empty()) {
        be.Rope(x, rows, heads, c.head_dim, c.rope_dims, b.positions, c.rope_freq_base, c.rope_style);
      } else if (!be.RopeWithFreqFactors(x, rows, heads, c.head_dim, c.rope_dims, b.positions,
                                         c.rope_freq_base, rope_freq_factors_, c.rope_style)) {
        return absl::InternalError("llama: backend lost RopeWithFreqFactors after Create");
      }
    }
    be.WriteKv(kv, layer, k_, v_, b.slots);
    be.PagedAttention(q_, kv, layer, c.num_heads, b.sequences, scale, att_);
    be.MatMul(att_, rows, l.wo, xb_);
    be.Add(x_, xb_, rows * c.dim);
    // Feed-forward block.
    be.RmsNorm(x_, rows, l.ffn_norm, c.rms_eps, xb_);
    be.MatMul(xb_, rows, l.w_gate, gate_);
    be.MatMul(xb_, rows, l.w_up, up_);
    be.SwiGlu(gate_, up_, rows * c.ffn_dim, gate_);
    be.MatMul(gate_, rows, l.w_down, xb_);
    be.Add(x_, xb_, rows * c.dim);
  }
  if (b.logit_rows.empty()) return absl::OkStatus();
  // Only the wanted rows go through the output head (the vocabulary matmul is
  // the largest in small models).
  const int64_t n = static_cast<int64_t>(b.logit_rows.size());
  for (int64_t i = 0; i < n; ++i) {
    be.Copy(x_ + int64_t{b.logit_rows[i]} * c.dim, c.dim * sizeof(float), xb_ + i * c.dim);
  }
  be.RmsNorm(xb_, n, weights_.output_norm, c.rms_eps, xb_);
  be.MatMul(xb_, n, weights_.output, logits_);
  be.CopyToHost(logits_, n * c.vocab_size * sizeof(float), host_logits);
  return absl::OkStatus();
}

}  // namespace tandem::model
