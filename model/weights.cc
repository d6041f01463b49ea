#include "model/weights.h"

#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

// Looks up `name` and checks its ggml dims: {cols} for a vector, {cols, rows}
// for a matrix.
absl::StatusOr<kernels::Weight> Tensor(const GgufFile& gguf, const std::string& name,
                                       int64_t rows, int64_t cols, bool vector) {
  const GgufTensorInfo* t = gguf.FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrFormat("gguf: missing tensor %s", name));
  const size_t want_dims = vector ? 1 : 2;
  bool ok = t->dims.size() == want_dims && t->dims[0] == static_cast<uint64_t>(cols) &&
            (vector || t->dims[1] == static_cast<uint64_t>(rows));
  if (!ok) {
    std::string got;
    for (uint64_t d : t->dims) absl::StrAppendFormat(&got, "%s%d", got.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrFormat(
        "gguf: tensor %s has shape [%s], expected [%d%s]", name, got, cols,
        vector ? "" : absl::StrFormat(", %d", rows)));
  }
  if (t->type == DType::kQ8_0 && cols % kQ8_0BlockElements != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("gguf: Q8_0 tensor %s rows not a multiple of 32", name));
  }
  return kernels::Weight{t->data, t->type, vector ? 1 : rows, cols};
}

}  // namespace

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
    total += bytes(l.attn_norm) + bytes(l.wq) + bytes(l.wk) + bytes(l.wv) + bytes(l.wo) +
             bytes(l.ffn_norm) + bytes(l.w_gate) + bytes(l.w_up) + bytes(l.w_down);
  }
  return total;
}

}  // namespace tandem::model
