#include "model/llama.h"

#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <numbers>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/loader.h"
#include "model/synthetic.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/weight_encoding.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::AllOf;
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

  // `a` and `b` as two sequences of one step, in blocks from `first_a` and
  // `first_b`; returns the logits after each one's last token, a's first.
  std::vector<float> RunTogether(const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                                 int32_t first_a, int32_t first_b) {
    std::vector<int32_t> ta(16), tb(16);
    std::iota(ta.begin(), ta.end(), first_a);
    std::iota(tb.begin(), tb.end(), first_b);
    std::vector<int32_t> tokens, pos, slots;
    for (const auto& [seq, table] : {std::pair{&a, &ta}, std::pair{&b, &tb}}) {
      for (size_t i = 0; i < seq->size(); ++i) {
        tokens.push_back((*seq)[i]);
        pos.push_back(i);
        slots.push_back((*table)[i / 4] * 4 + i % 4);
      }
    }
    const int32_t na = a.size(), nb = b.size();
    kernels::AttentionSequence seqs[2] = {{0, na, na, ta}, {na, nb, nb, tb}};
    const int32_t rows[2] = {na - 1, na + nb - 1};
    std::vector<float> logits(2 * model_->config.vocab_size);
    EXPECT_OK(llama_->Forward({tokens, pos, slots, seqs, rows}, kv_, logits.data()));
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
  const std::vector<float> logits = RunTogether(a, b, 32, 48);
  EXPECT_EQ(std::memcmp(logits.data(), la.data(), la.size() * 4), 0);
  EXPECT_EQ(std::memcmp(logits.data() + la.size(), lb.data(), lb.size() * 4), 0);
}

// The same invariances with the tiny model's shape in F16, BF16, Q8_0 and
// Q4_0 weights, which the CPU backend runs through their own kernels (F16
// packed for outer products, BF16 dot products on activations rounded once,
// Q8_0/Q4_0 packed integer panels on int8 activations: gemm.h). Q4_K needs
// rows of 256 and the tiny model's are 128.
class LlamaWeightTypeTest : public LlamaTest, public ::testing::WithParamInterface<DType> {
 protected:
  void SetUp() override {
    LlamaTest::SetUp();
    LlamaWeights weights = model_->weights;
    if (GetParam() == DType::kF16 || GetParam() == DType::kBF16) {
      ASSERT_OK_AND_ASSIGN(typed_, CreateSyntheticModelFromConfig(model_->config, GetParam()));
      weights = typed_->weights;
    } else {  // the F32 model's matmul weights, quantized
      for (LayerWeights& l : weights.layers) {
        for (kernels::Weight* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) Quantize(*w);
      }
      Quantize(weights.output);
    }
    ASSERT_EQ(weights.layers.at(0).wq.dtype, GetParam());
    ASSERT_EQ(weights.output.dtype, GetParam());
    auto l = LlamaModel::Create(model_->config, weights, backend_.get());
    ASSERT_OK(l);
    f32_llama_ = std::exchange(llama_, std::move(*l));
  }

  // `w` (F32) re-encoded as GetParam(), in storage this test owns.
  void Quantize(kernels::Weight& w) {
    ASSERT_EQ(w.dtype, DType::kF32);
    const auto* f = static_cast<const float*>(w.data);
    std::vector<float> held;
    quantized_.push_back(::tandem::testing::Encode(std::vector<float>(f, f + w.rows * w.cols), w.rows, w.cols,
                                                   GetParam(), &held));
    w = kernels::Weight{quantized_.back().data(), GetParam(), w.rows, w.cols};
  }

  std::unique_ptr<SyntheticModel> typed_;
  std::deque<std::vector<uint8_t>> quantized_;
  std::unique_ptr<LlamaModel> f32_llama_;
};

TEST_P(LlamaWeightTypeTest, ChunkedPrefillAndBatchesAreBitIdentical) {
  std::vector<int32_t> a = model_->tokenizer->Encode("the little dog saw a big red ball", true);
  std::vector<int32_t> b = model_->tokenizer->Encode("the cat", true);
  const std::vector<float> whole = Run(a, 1000, 0);
  EXPECT_EQ(std::memcmp(whole.data(), Run(a, 3, 20).data(), whole.size() * 4), 0);
  EXPECT_EQ(std::memcmp(whole.data(), Run(a, 1, 40).data(), whole.size() * 4), 0);
  const std::vector<float> lb = Run(b, 1000, 0);
  const std::vector<float> logits = RunTogether(a, b, 20, 40);
  EXPECT_EQ(std::memcmp(logits.data(), whole.data(), whole.size() * 4), 0);
  EXPECT_EQ(std::memcmp(logits.data() + whole.size(), lb.data(), lb.size() * 4), 0);
  // Guards against the typed weights not reaching the model: the F32
  // model's logits differ.
  std::swap(llama_, f32_llama_);
  const std::vector<float> f32 = Run(a, 1000, 0);
  std::swap(llama_, f32_llama_);
  EXPECT_NE(std::memcmp(whole.data(), f32.data(), whole.size() * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, LlamaWeightTypeTest,
                         ::testing::Values(DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

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

// Llama 3.1 8B's RoPE (head_dim 128, rope_theta 500000, rope_scaling llama3
// with factor 8, low_freq_factor 1, high_freq_factor 4, original 8192).
ModelConfig Llama31Rope() {
  ModelConfig c;
  c.vocab_size = 128256;
  c.dim = 4096;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.ffn_dim = 14336;
  c.rope_dims = 128;
  c.rope_freq_base = 500000.0f;
  c.rope_scaling = {.type = RopeScaling::Type::kLlama3,
                    .factor = 8,
                    .low_freq_factor = 1,
                    .high_freq_factor = 4,
                    .original_max_position_embeddings = 8192};
  return c;
}

// The scaled inverse frequency of pair i as transformers'
// _compute_llama3_parameters defines it, in long double.
long double Llama3InvFreq(int i) {
  const long double inv_freq = std::pow(500000.0L, -2.0L * i / 128);
  const long double wavelen = 2 * std::numbers::pi_v<long double> / inv_freq;
  const long double low_freq_wavelen = 8192.0L / 1, high_freq_wavelen = 8192.0L / 4;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / 8;
  const long double smooth = (8192.0L / wavelen - 1) / (4 - 1);
  return (1 - smooth) * inv_freq / 8 + smooth * inv_freq;
}

TEST(RopeFreqFactorsTest, Llama31MatchesTransformersInvFreq) {
  const ModelConfig c = Llama31Rope();
  ASSERT_OK(c.Validate());
  const std::vector<float> factors = RopeFreqFactors(c);
  ASSERT_EQ(factors.size(), 64u);
  // Pairs 0..28 have wavelengths under 2048 (unscaled), 35..63 over 8192
  // (divided by 8), 29..34 between (smoothed).
  for (int i : {0, 1, 10, 28, 29, 30, 32, 34, 36, 40, 63}) {
    const long double base = std::pow(500000.0L, -2.0L * i / 128);
    const long double want = Llama3InvFreq(i);
    EXPECT_NEAR(static_cast<double>(base / factors[i] / want), 1.0, 1e-6) << "pair " << i;
  }
  for (int i : {0, 10, 28}) EXPECT_EQ(factors[i], 1.0f) << i;
  for (int i : {36, 40, 63}) EXPECT_EQ(factors[i], 8.0f) << i;
  for (int i = 29; i <= 34; ++i) {
    EXPECT_GT(factors[i], factors[i - 1]) << i;
    EXPECT_LT(factors[i], 8.0f) << i;
  }
  ModelConfig unscaled = c;
  unscaled.rope_scaling = {};
  EXPECT_TRUE(RopeFreqFactors(unscaled).empty());
  ModelConfig bad = c;
  bad.rope_scaling.high_freq_factor = 0.5f;
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rope_scaling")));
}

// The CPU backend without the optional RopeWithFreqFactors (as a backend that
// has not written it yet).
class NoFreqFactorsBackend : public kernels::Backend {
 public:
  std::string_view name() const override { return "no-freq-factors"; }
  bool SupportsWeightType(DType t) const override { return cpu_->SupportsWeightType(t); }
  absl::StatusOr<void*> Allocate(size_t bytes) override { return cpu_->Allocate(bytes); }
  void Free(void* p) override { cpu_->Free(p); }
  void CopyToHost(const void* s, size_t n, void* d) override { cpu_->CopyToHost(s, n, d); }
  void CopyFromHost(const void* s, size_t n, void* d) override { cpu_->CopyFromHost(s, n, d); }
  void Copy(const void* s, size_t n, void* d) override { cpu_->Copy(s, n, d); }
  absl::StatusOr<kernels::Weight> PrepareWeight(const kernels::Weight& w) override {
    return cpu_->PrepareWeight(w);
  }
  void Embed(const kernels::Weight& t, absl::Span<const int32_t> ids, float* out) override {
    cpu_->Embed(t, ids, out);
  }
  void RmsNorm(const float* x, int64_t rows, const kernels::Weight& w, float eps, float* out) override {
    cpu_->RmsNorm(x, rows, w, eps, out);
  }
  void MatMul(const float* x, int64_t rows, const kernels::Weight& w, float* out) override {
    cpu_->MatMul(x, rows, w, out);
  }
  void Rope(float* x, int64_t rows, int32_t heads, int32_t head_dim, int32_t rope_dims,
            absl::Span<const int32_t> pos, float base, kernels::RopeStyle style) override {
    cpu_->Rope(x, rows, heads, head_dim, rope_dims, pos, base, style);
  }
  void WriteKv(const kernels::KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) override {
    cpu_->WriteKv(kv, layer, k, v, slots);
  }
  void PagedAttention(const float* q, const kernels::KvCacheView& kv, int32_t layer, int32_t heads,
                      absl::Span<const kernels::AttentionSequence> seqs, float scale, float* out) override {
    cpu_->PagedAttention(q, kv, layer, heads, seqs, scale, out);
  }
  void SwiGlu(const float* g, const float* u, int64_t n, float* out) override { cpu_->SwiGlu(g, u, n, out); }
  void Add(float* x, const float* y, int64_t n) override { cpu_->Add(x, y, n); }
  bool host_accessible() const override { return true; }
  absl::StatusOr<std::unique_ptr<kernels::CopyStream>> CreateCopyStream() override {
    return cpu_->CreateCopyStream();
  }
  absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) override { return cpu_->AllocatePinnedHost(bytes); }
  void FreePinnedHost(void* p) override { cpu_->FreePinnedHost(p); }

 private:
  std::unique_ptr<kernels::Backend> cpu_ = kernels::CreateCpuBackend({.num_threads = 1});
};

TEST(RopeFreqFactorsTest, CreateNeedsTheBackendOp) {
  ASSERT_OK_AND_ASSIGN(auto tiny, LoadModel("synthetic:tiny"));
  ModelConfig scaled = tiny->config;
  scaled.rope_scaling = {.type = RopeScaling::Type::kLlama3,
                         .factor = 8,
                         .low_freq_factor = 1,
                         .high_freq_factor = 4,
                         .original_max_position_embeddings = 16};
  NoFreqFactorsBackend without;
  EXPECT_OK(LlamaModel::Create(tiny->config, tiny->weights, &without));
  EXPECT_THAT(LlamaModel::Create(scaled, tiny->weights, &without),
              StatusIs(absl::StatusCode::kUnimplemented,
                       AllOf(HasSubstr("no-freq-factors"), HasSubstr("RopeWithFreqFactors"))));
  auto cpu = kernels::CreateCpuBackend({.num_threads = 1});
  EXPECT_OK(LlamaModel::Create(scaled, tiny->weights, cpu.get()));
}

TEST(LoaderTest, ErrorsNameTheProblem) {
  EXPECT_THAT(LoadModel("synthetic:huge").status(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("tiny")));
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
