// Next-token logits at every position of a token sequence: one prefill over
// a paged KV cache of a given element type (teacher forcing). Golden and
// cluster tests use it to find where a narrower KV cache may change a
// greedy token (the top-2 margin of the F32 logits).
#ifndef TANDEM_TESTS_TESTING_ALL_LOGITS_H_
#define TANDEM_TESTS_TESTING_ALL_LOGITS_H_

#include <algorithm>
#include <functional>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/llama.h"

namespace tandem::testing {

// Next-token logits at every position of `tokens`, one prefill over a paged
// KV cache of `kv_dtype`.
inline std::vector<std::vector<float>> AllLogits(model::LlamaModel& llama, kernels::Backend& backend,
                                                 const std::vector<int32_t>& tokens, DType kv_dtype) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  kernels::KvCacheView kv;
  kv.layout = llama.config().KvLayoutFor(16, kv_dtype);
  kv.num_blocks = (n + 15) / 16;
  kv.base = *backend.Allocate(kv.num_blocks * kv.layout.BlockBytes());
  std::vector<int32_t> table(kv.num_blocks), positions(n);
  std::iota(table.begin(), table.end(), 0);
  std::iota(positions.begin(), positions.end(), 0);
  const kernels::AttentionSequence seq{0, n, n, table};
  const int32_t vocab = llama.config().vocab_size;
  std::vector<float> flat(static_cast<size_t>(n) * vocab);
  const model::ForwardBatch batch{tokens, positions, positions, absl::MakeConstSpan(&seq, 1), positions};
  const absl::Status ran = llama.Forward(batch, kv, flat.data());
  EXPECT_TRUE(ran.ok()) << ran;
  backend.Free(kv.base);
  std::vector<std::vector<float>> out(n);
  for (int32_t i = 0; i < n; ++i) out[i].assign(flat.begin() + i * vocab, flat.begin() + (i + 1) * vocab);
  return out;
}

// top1 - top2 of one row of logits.
inline float TopTwoMargin(std::vector<float> logits) {
  std::partial_sort(logits.begin(), logits.begin() + 2, logits.end(), std::greater<float>());
  return logits[0] - logits[1];
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_ALL_LOGITS_H_
