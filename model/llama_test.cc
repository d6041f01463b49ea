#include "model/llama.h"

#include <cstring>
#include <fstream>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/loader.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

class LlamaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = LoadModel("synthetic:tiny");
    ASSERT_OK(m);
    model_ = std::move(*m);
    backend_ = kernels::CreateCpuBackend({.num_threads = 2});
    auto l = LlamaModel::Create(model_->config, model_->weights, backend_.get());
    ASSERT_OK(l);
    llama_ = std::move(*l);
    kv_.layout = model_->config.KvLayoutFor(4);
    kv_.num_blocks = 64;
    pool_.assign(kv_.num_blocks * kv_.layout.BlockElements(), 0.0f);
    kv_.base = pool_.data();
  }

  // Runs `tokens` of one sequence in chunks of `chunk`, in blocks starting at
  // `first_block`; returns the logits after the last token.
  std::vector<float> Run(const std::vector<int32_t>& tokens, int32_t chunk, int32_t first_block) {
    std::vector<int32_t> table(16);
    std::iota(table.begin(), table.end(), first_block);
    std::vector<float> logits(model_->config.vocab_size);
    for (int32_t done = 0; done < static_cast<int32_t>(tokens.size());) {
      const int32_t n = std::min<int32_t>(chunk, tokens.size() - done);
      std::vector<int32_t> pos(n), slots(n);
      for (int32_t i = 0; i < n; ++i) {
        pos[i] = done + i;
        slots[i] = table[pos[i] / 4] * 4 + pos[i] % 4;
      }
      kernels::AttentionSequence seq{0, n, done + n, table};
      const int32_t last = n - 1;
      ForwardBatch b{absl::MakeConstSpan(tokens).subspan(done, n), pos, slots, {&seq, 1}, {&last, 1}};
      EXPECT_OK(llama_->Forward(b, kv_, logits.data()));
      done += n;
    }
    return logits;
  }

  std::unique_ptr<LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<LlamaModel> llama_;
  kernels::KvCacheView kv_;
  std::vector<float> pool_;
};

TEST_F(LlamaTest, SyntheticModelIsDeterministic) {
  ASSERT_OK_AND_ASSIGN(auto again, LoadModel("synthetic:tiny"));
  ASSERT_EQ(model_->synthetic_model->storage.size(), again->synthetic_model->storage.size());
  EXPECT_EQ(model_->synthetic_model->storage, again->synthetic_model->storage);
  EXPECT_EQ(model_->config.model_id, "synthetic:tiny");
}

TEST_F(LlamaTest, ChunkedPrefillIsBitIdenticalToOneShot) {
  std::vector<int32_t> tokens = model_->tokenizer->Encode("the little dog saw a big red ball", true);
  ASSERT_GT(tokens.size(), 8u);
  const std::vector<float> whole = Run(tokens, 1000, 0);
  const std::vector<float> chunked = Run(tokens, 3, 20);
  const std::vector<float> one_by_one = Run(tokens, 1, 40);
  EXPECT_EQ(std::memcmp(whole.data(), chunked.data(), whole.size() * 4), 0);
  EXPECT_EQ(std::memcmp(whole.data(), one_by_one.data(), whole.size() * 4), 0);
}

TEST_F(LlamaTest, BatchedSequencesMatchEachAlone) {
  std::vector<int32_t> a = model_->tokenizer->Encode("once upon a time", true);
  std::vector<int32_t> b = model_->tokenizer->Encode("the cat", true);
  const std::vector<float> la = Run(a, 1000, 0);
  const std::vector<float> lb = Run(b, 1000, 20);
  // Both prompts in one step, in other blocks.
  std::vector<int32_t> ta(16), tb(16);
  std::iota(ta.begin(), ta.end(), 32);
  std::iota(tb.begin(), tb.end(), 48);
  std::vector<int32_t> tokens, pos, slots;
  for (size_t i = 0; i < a.size(); ++i) {
    tokens.push_back(a[i]);
    pos.push_back(i);
    slots.push_back(ta[i / 4] * 4 + i % 4);
  }
  for (size_t i = 0; i < b.size(); ++i) {
    tokens.push_back(b[i]);
    pos.push_back(i);
    slots.push_back(tb[i / 4] * 4 + i % 4);
  }
  const int32_t na = a.size(), nb = b.size();
  kernels::AttentionSequence seqs[2] = {{0, na, na, ta}, {na, nb, nb, tb}};
  const int32_t rows[2] = {na - 1, na + nb - 1};
  std::vector<float> logits(2 * model_->config.vocab_size);
  ASSERT_OK(llama_->Forward({tokens, pos, slots, seqs, rows}, kv_, logits.data()));
  EXPECT_EQ(std::memcmp(logits.data(), la.data(), la.size() * 4), 0);
  EXPECT_EQ(std::memcmp(logits.data() + la.size(), lb.data(), lb.size() * 4), 0);
}

TEST_F(LlamaTest, MalformedBatchesAreRejected) {
  std::vector<int32_t> table = {0};
  std::vector<float> logits(model_->config.vocab_size);
  std::vector<int32_t> bad_token = {model_->config.vocab_size};
  std::vector<int32_t> zero = {0};
  kernels::AttentionSequence seq{0, 1, 1, table};
  EXPECT_THAT(llama_->Forward({bad_token, zero, zero, {&seq, 1}, zero}, kv_, logits.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside vocabulary")));
  std::vector<int32_t> far = {1 << 30};
  EXPECT_THAT(llama_->Forward({zero, far, zero, {&seq, 1}, zero}, kv_, logits.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("context length")));
  EXPECT_THAT(llama_->Forward({zero, zero, far, {&seq, 1}, zero}, kv_, logits.data()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slot")));
  kernels::AttentionSequence short_table{0, 1, 9, table};
  EXPECT_THAT(llama_->Forward({zero, zero, zero, {&short_table, 1}, zero}, kv_, logits.data()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(LoaderTest, ErrorsNameTheProblem) {
  EXPECT_THAT(LoadModel("synthetic:huge").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tiny")));
  EXPECT_THAT(LoadModel("/nonexistent/model.gguf").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/model.gguf")));
}

TEST(LoaderTest, Stories260KConfig) {
  const std::string path = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  if (!std::ifstream(path)) GTEST_SKIP() << path << " absent";
  ASSERT_OK_AND_ASSIGN(auto m, LoadModel(path));
  EXPECT_EQ(m->config.num_layers, 5);
  EXPECT_EQ(m->config.dim, 64);
  EXPECT_EQ(m->config.num_heads, 8);
  EXPECT_EQ(m->config.num_kv_heads, 4);
  EXPECT_EQ(m->config.head_dim, 8);
  EXPECT_EQ(m->config.ffn_dim, 172);
  EXPECT_EQ(m->config.vocab_size, 512);
  EXPECT_FLOAT_EQ(m->config.rope_freq_base, 10000.0f);
  EXPECT_EQ(m->weights.output.data, m->gguf->FindTensor("output.weight")->data);
}

}  // namespace
}  // namespace tandem::model
