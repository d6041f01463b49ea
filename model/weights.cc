#include "model/weights.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

// Looks up `name` and checks its ggml dims: {cols} for a vector, {cols, rows}
// for a matrix.
absl::StatusOr<kernels::Weight> Tensor(const GgufFile& gguf, const std::string& name, int64_t rows,
                                       int64_t cols, bool vector) {
  const GgufTensorInfo* t = gguf.FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrFormat("gguf: missing tensor %s", name));
  const size_t want_dims = vector ? 1 : 2;
  bool ok = t->dims.size() == want_dims && t->dims[0] == static_cast<uint64_t>(cols) &&
            (vector || t->dims[1] == static_cast<uint64_t>(rows));
  if (!ok) {
    std::string got;
    for (uint64_t d : t->dims) absl::StrAppendFormat(&got, "%s%d", got.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrFormat("gguf: tensor %s has shape [%s], expected [%d%s]", name,
                                                      got, cols,
                                                      vector ? "" : absl::StrFormat(", %d", rows)));
  }
  if (cols % BlockElements(t->type) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("gguf: %s tensor %s rows not a multiple of %d",
                                                      std::string(DTypeName(t->type)), name,
                                                      BlockElements(t->type)));
  }
  return kernels::Weight{t->data, t->type, vector ? 1 : rows, cols};
}

// Looks up a Hugging Face tensor and checks its shape: [cols] for a vector,
// [rows, cols] for a matrix.
absl::StatusOr<kernels::Weight> HfTensor(const SafetensorsCheckpoint& ckpt, const std::string& name,
                                         int64_t rows, int64_t cols, bool vector) {
  TANDEM_ASSIGN_OR_RETURN(const SafetensorsTensor* t, ckpt.GetTensor(name));
  const bool ok = vector ? (t->shape.size() == 1 && t->shape[0] == cols)
                         : (t->shape.size() == 2 && t->shape[0] == rows && t->shape[1] == cols);
  if (!ok) {
    std::string got;
    for (int64_t d : t->shape) absl::StrAppendFormat(&got, "%s%d", got.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(
        absl::StrFormat("safetensors: tensor %s has shape [%s], expected [%s%d]", name, got,
                        vector ? "" : absl::StrFormat("%d, ", rows), cols));
  }
  // Kernels read elements in place: the data must be aligned to its element
  // size (the safetensors writers align every tensor).
  const size_t elem = DTypeBytes(*t->dtype, 1);
  if (reinterpret_cast<uintptr_t>(t->data) % elem != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("safetensors: tensor %s data (offset %d) is not aligned to its %d-byte elements",
                        name, t->begin, elem));
  }
  return kernels::Weight{t->data, *t->dtype, vector ? 1 : rows, cols};
}

}  // namespace

absl::StatusOr<LlamaWeights> LlamaWeightsFromSafetensors(const SafetensorsCheckpoint& ckpt,
                                                         const ModelConfig& c,
                                                         std::vector<float>* bias_storage) {
  LlamaWeights w;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  TANDEM_ASSIGN_OR_RETURN(w.token_embd,
                          HfTensor(ckpt, "model.embed_tokens.weight", c.vocab_size, c.dim, false));
  TANDEM_ASSIGN_OR_RETURN(w.output_norm, HfTensor(ckpt, "model.norm.weight", 1, c.dim, true));
  if (!c.tied_embeddings && ckpt.FindTensor("lm_head.weight") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(w.output, HfTensor(ckpt, "lm_head.weight", c.vocab_size, c.dim, false));
  } else {
    w.output = w.token_embd;  // tied embeddings
  }
  // Biases are copied to F32 (the forward pass adds them as F32 vectors);
  // reserve first so the views below stay valid.
  bias_storage->clear();
  if (c.attention_bias) bias_storage->reserve(static_cast<size_t>(c.num_layers) * (q_dim + 2 * kv_dim));
  auto bias = [&](const std::string& name, int64_t n) -> absl::StatusOr<kernels::Weight> {
    TANDEM_ASSIGN_OR_RETURN(kernels::Weight v, HfTensor(ckpt, name, 1, n, true));
    const size_t start = bias_storage->size();
    for (int64_t i = 0; i < n; ++i) {
      float f = 0;
      switch (v.dtype) {
        case DType::kF32:
          std::memcpy(&f, static_cast<const uint8_t*>(v.data) + 4 * i, 4);
          break;
        case DType::kF16:
          f = HalfToFloat(static_cast<const uint16_t*>(v.data)[i]);
          break;
        case DType::kBF16:
          f = BF16ToFloat(static_cast<const uint16_t*>(v.data)[i]);
          break;
        case DType::kQ8_0:
        case DType::kQ4_0:
        case DType::kQ4_K:
          break;
      }
      bias_storage->push_back(f);
    }
    return kernels::Weight{bias_storage->data() + start, DType::kF32, 1, n};
  };
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrFormat("model.layers.%d.", i);
    LayerWeights l;
    TANDEM_ASSIGN_OR_RETURN(l.attn_norm, HfTensor(ckpt, p + "input_layernorm.weight", 1, c.dim, true));
    TANDEM_ASSIGN_OR_RETURN(l.wq, HfTensor(ckpt, p + "self_attn.q_proj.weight", q_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wk, HfTensor(ckpt, p + "self_attn.k_proj.weight", kv_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wv, HfTensor(ckpt, p + "self_attn.v_proj.weight", kv_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wo, HfTensor(ckpt, p + "self_attn.o_proj.weight", c.dim, q_dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.ffn_norm,
                            HfTensor(ckpt, p + "post_attention_layernorm.weight", 1, c.dim, true));
    TANDEM_ASSIGN_OR_RETURN(l.w_gate, HfTensor(ckpt, p + "mlp.gate_proj.weight", c.ffn_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.w_up, HfTensor(ckpt, p + "mlp.up_proj.weight", c.ffn_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.w_down, HfTensor(ckpt, p + "mlp.down_proj.weight", c.dim, c.ffn_dim, false));
    if (c.attention_bias) {
      TANDEM_ASSIGN_OR_RETURN(l.bq, bias(p + "self_attn.q_proj.bias", q_dim));
      TANDEM_ASSIGN_OR_RETURN(l.bk, bias(p + "self_attn.k_proj.bias", kv_dim));
      TANDEM_ASSIGN_OR_RETURN(l.bv, bias(p + "self_attn.v_proj.bias", kv_dim));
    }
    w.layers.push_back(l);
  }
  return w;
}

absl::StatusOr<LlamaWeights> LlamaWeightsFromGguf(const GgufFile& gguf, const ModelConfig& c) {
  LlamaWeights w;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  TANDEM_ASSIGN_OR_RETURN(w.token_embd, Tensor(gguf, "token_embd.weight", c.vocab_size, c.dim, false));
  TANDEM_ASSIGN_OR_RETURN(w.output_norm, Tensor(gguf, "output_norm.weight", 1, c.dim, true));
  if (gguf.FindTensor("output.weight") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(w.output, Tensor(gguf, "output.weight", c.vocab_size, c.dim, false));
  } else {
    w.output = w.token_embd;  // tied embeddings
  }
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrFormat("blk.%d.", i);
    LayerWeights l;
    TANDEM_ASSIGN_OR_RETURN(l.attn_norm, Tensor(gguf, p + "attn_norm.weight", 1, c.dim, true));
    TANDEM_ASSIGN_OR_RETURN(l.wq, Tensor(gguf, p + "attn_q.weight", q_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wk, Tensor(gguf, p + "attn_k.weight", kv_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wv, Tensor(gguf, p + "attn_v.weight", kv_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.wo, Tensor(gguf, p + "attn_output.weight", c.dim, q_dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.ffn_norm, Tensor(gguf, p + "ffn_norm.weight", 1, c.dim, true));
    TANDEM_ASSIGN_OR_RETURN(l.w_gate, Tensor(gguf, p + "ffn_gate.weight", c.ffn_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.w_up, Tensor(gguf, p + "ffn_up.weight", c.ffn_dim, c.dim, false));
    TANDEM_ASSIGN_OR_RETURN(l.w_down, Tensor(gguf, p + "ffn_down.weight", c.dim, c.ffn_dim, false));
    w.layers.push_back(l);
  }
  return w;
}

size_t WeightBytes(const LlamaWeights& w) {
  auto bytes = [](const kernels::Weight& t) { return DTypeBytes(t.dtype, t.rows * t.cols); };
  size_t total = bytes(w.token_embd) + bytes(w.output_norm);
  if (w.output.data != w.token_embd.data) total += bytes(w.output);
  for (const LayerWeights& l : w.layers) {
    total += bytes(l.attn_norm) + bytes(l.wq) + bytes(l.wk) + bytes(l.wv) + bytes(l.wo) + bytes(l.ffn_norm) +
             bytes(l.w_gate) + bytes(l.w_up) + bytes(l.w_down);
    for (const kernels::Weight* b : {&l.bq, &l.bk, &l.bv}) {
      if (b->data != nullptr) total += bytes(*b);
    }
  }
  return total;
}

}  // namespace tandem::model
