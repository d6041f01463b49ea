// Hugging Face checkpoints and synthetic models in a config's shape: weight
// names (round trips, bit-exact), `synthetic:config=`, LoadModel on a
// checkpoint directory, and the generation they give (engine::GenerateOne:
// which is why this test sits in tests/ and not beside model/hf_config.h).
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/hf_config.h"
#include "model/llama.h"
#include "model/loader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::tandem::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using OJson = nlohmann::ordered_json;

// A config.json with synthetic:tiny's shape.
OJson TinyConfig(const std::string& arch, int32_t vocab_size) {
  return {{"architectures", {arch}},         {"hidden_size", 128},          {"num_hidden_layers", 4},
          {"num_attention_heads", 4},        {"num_key_value_heads", 2},    {"intermediate_size", 384},
          {"vocab_size", vocab_size},        {"rms_norm_eps", 1e-5},        {"rope_theta", 10000.0},
          {"max_position_embeddings", 2048}, {"tie_word_embeddings", true}, {"hidden_act", "silu"},
          {"torch_dtype", "float32"}};
}

struct NamedWeight {
  std::string name;
  kernels::Weight w;
};

// Rows of a GGUF-layout (llama.cpp-permuted) q/k projection in Hugging Face
// order: within each head, HF row j * head_dim/2 + i is GGUF row 2i + j.
std::string UnpermuteRows(const kernels::Weight& w, int32_t head_dim) {
  const size_t row_bytes = DTypeBytes(w.dtype, w.cols);
  const auto* src = static_cast<const uint8_t*>(w.data);
  std::string out(row_bytes * w.rows, '\0');
  const int32_t half = head_dim / 2;
  for (int64_t r = 0; r < w.rows; ++r) {
    const int64_t head = r / head_dim, within = r % head_dim;
    const int64_t j = within / half, i = within % half;
    const int64_t from = head * head_dim + 2 * i + j;
    std::memcpy(out.data() + r * row_bytes, src + from * row_bytes, row_bytes);
  }
  return out;
}

// Writes `weights` as a Hugging Face checkpoint (HF tensor names) into `dir`,
// split over `shards` files (with an index when > 1). `unpermute_head_dim`
// > 0 converts q/k from GGUF to HF row order.
void WriteCheckpoint(const TempDir& dir, const ModelConfig& c, const LlamaWeights& w, int shards,
                     int32_t unpermute_head_dim = 0) {
  std::vector<NamedWeight> named = {{"model.embed_tokens.weight", w.token_embd},
                                    {"model.norm.weight", w.output_norm}};
  if (w.output.data != w.token_embd.data) named.push_back({"lm_head.weight", w.output});
  for (int32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeights& l = w.layers[i];
    for (const NamedWeight& n : std::vector<NamedWeight>{{p + "input_layernorm.weight", l.attn_norm},
                                                         {p + "self_attn.q_proj.weight", l.wq},
                                                         {p + "self_attn.k_proj.weight", l.wk},
                                                         {p + "self_attn.v_proj.weight", l.wv},
                                                         {p + "self_attn.o_proj.weight", l.wo},
                                                         {p + "post_attention_layernorm.weight", l.ffn_norm},
                                                         {p + "mlp.gate_proj.weight", l.w_gate},
                                                         {p + "mlp.up_proj.weight", l.w_up},
                                                         {p + "mlp.down_proj.weight", l.w_down},
                                                         {p + "self_attn.q_proj.bias", l.bq},
                                                         {p + "self_attn.k_proj.bias", l.bk},
                                                         {p + "self_attn.v_proj.bias", l.bv}}) {
      if (n.w.data != nullptr) named.push_back(n);
    }
  }
  OJson index = {{"weight_map", OJson::object()}};
  for (int s = 0; s < shards; ++s) {
    const std::string file =
        shards == 1 ? "model.safetensors" : "model-0000" + std::to_string(s + 1) + ".safetensors";
    OJson header = OJson::object();
    std::string data;
    for (size_t t = s; t < named.size(); t += shards) {
      const NamedWeight& n = named[t];
      std::string bytes(static_cast<const char*>(n.w.data), DTypeBytes(n.w.dtype, n.w.rows * n.w.cols));
      const bool qk = n.name.ends_with("q_proj.weight") || n.name.ends_with("k_proj.weight");
      if (qk && unpermute_head_dim > 0) bytes = UnpermuteRows(n.w, unpermute_head_dim);
      OJson shape = n.w.rows == 1 && (n.name.ends_with("norm.weight") || n.name.ends_with(".bias"))
                        ? OJson{n.w.cols}
                        : OJson{n.w.rows, n.w.cols};
      header[n.name] = {{"dtype", n.w.dtype == DType::kF32   ? "F32"
                                  : n.w.dtype == DType::kF16 ? "F16"
                                                             : "BF16"},
                        {"shape", shape},
                        {"data_offsets", {data.size(), data.size() + bytes.size()}}};
      data += bytes;
      index["weight_map"][n.name] = file;
    }
    std::string h = header.dump();
    while ((8 + h.size()) % 8 != 0) h.push_back(' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(h.size()) >> (8 * i));
    dir.Write(file, out + h + data);
  }
  if (shards > 1) dir.Write("model.safetensors.index.json", index.dump());
}

engine::GenerateResult Generate(const ModelConfig& config, const LlamaWeights& weights,
                                const Tokenizer& tokenizer) {
  auto backend = kernels::CreateCpuBackend({.num_threads = 2});
  auto llama = LlamaModel::Create(config, weights, backend.get());
  EXPECT_OK(llama);
  engine::GenerateRequest req;
  req.prompt = "Once upon a time there was a little girl";
  req.max_tokens = 12;
  req.stop_at_eos = false;
  auto r = engine::GenerateOne(**llama, *backend, tokenizer, req);
  EXPECT_OK(r);
  return *r;
}

TEST(HfCheckpointTest, SyntheticFromConfigGeneratesDeterministically) {
  TempDir dir("hf_config_test_");
  const std::string path = dir.Write("config.json", TinyConfig("LlamaForCausalLM", 600).dump());
  ASSERT_OK_AND_ASSIGN(auto a, LoadModel("synthetic:config=" + path));
  ASSERT_OK_AND_ASSIGN(auto b, LoadModel("synthetic:config=" + path));
  EXPECT_TRUE(a->synthetic);
  EXPECT_EQ(a->config.vocab_size, 600);  // built-in vocabulary padded to the config's
  EXPECT_EQ(a->tokenizer->vocab_size(), 600);
  EXPECT_EQ(a->config.rope_style, kernels::RopeStyle::kNeox);
  EXPECT_THAT(a->config.model_id, HasSubstr("synthetic:config:LlamaForCausalLM:4x128x384x600:"));
  EXPECT_EQ(a->config.model_id, b->config.model_id);
  const engine::GenerateResult ra = Generate(a->config, a->weights, *a->tokenizer);
  const engine::GenerateResult rb = Generate(b->config, b->weights, *b->tokenizer);
  EXPECT_EQ(ra.generated_token_ids.size(), 12u);
  EXPECT_EQ(ra.generated_token_ids, rb.generated_token_ids);
  EXPECT_EQ(ra.first_step_logits, rb.first_step_logits);
}

// Llama 3 rope_scaling (issue #9): a synthetic model of such a config loads
// and generates, a checkpoint of its weights gives the same tokens, and the
// scaling is applied (the same weights without it give other logits).
TEST(HfCheckpointTest, Llama3RopeScalingLoadsAndGenerates) {
  TempDir cfg_dir, dir;
  OJson config = TinyConfig("LlamaForCausalLM", 600);
  config["tie_word_embeddings"] = false;
  // Small original context, so the prompt's positions reach the scaled pairs.
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 16}};
  const std::string cfg = cfg_dir.Write("config.json", config.dump());
  ASSERT_OK_AND_ASSIGN(auto synth, LoadModel("synthetic:config=" + cfg));
  ASSERT_EQ(synth->config.rope_scaling.type, RopeScaling::Type::kLlama3);
  const engine::GenerateResult scaled = Generate(synth->config, synth->weights, *synth->tokenizer);
  EXPECT_EQ(scaled.generated_token_ids.size(), 12u);

  WriteCheckpoint(dir, synth->config, synth->weights, 1);
  dir.Write("config.json", config.dump());
  ASSERT_OK_AND_ASSIGN(auto hf, LoadHfCheckpoint(dir.path()));
  EXPECT_EQ(hf->config.rope_scaling.type, RopeScaling::Type::kLlama3);
  const engine::GenerateResult got = Generate(hf->config, hf->weights, *synth->tokenizer);
  EXPECT_EQ(got.first_step_logits, scaled.first_step_logits);
  EXPECT_EQ(got.generated_token_ids, scaled.generated_token_ids);

  ModelConfig unscaled_config = synth->config;
  unscaled_config.rope_scaling = {};
  const engine::GenerateResult unscaled = Generate(unscaled_config, synth->weights, *synth->tokenizer);
  EXPECT_NE(unscaled.first_step_logits, scaled.first_step_logits);
}

TEST(HfCheckpointTest, SyntheticFromConfigErrors) {
  TempDir dir("hf_config_test_");
  EXPECT_THAT(LoadModel("synthetic:config=" + dir.path() + "/none.json"),
              StatusIs(absl::StatusCode::kNotFound));
  const std::string small = dir.Write("small.json", TinyConfig("LlamaForCausalLM", 100).dump());
  EXPECT_THAT(LoadModel("synthetic:config=" + small),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("built-in vocabulary")));
  const std::string huge_vocab = dir.Write("hv.json", TinyConfig("LlamaForCausalLM", 1 << 30).dump());
  EXPECT_THAT(LoadModel("synthetic:config=" + huge_vocab),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size")));
  OJson huge = TinyConfig("LlamaForCausalLM", 600);
  huge["num_hidden_layers"] = 1 << 30;
  const std::string huge_path = dir.Write("huge.json", huge.dump());
  EXPECT_THAT(LoadModel("synthetic:config=" + huge_path),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("parameters")));
  const std::string gpt2 = dir.Write("gpt2.json", TinyConfig("GPT2LMHeadModel", 600).dump());
  EXPECT_THAT(LoadModel("synthetic:config=" + gpt2),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("unsupported architecture")));
}

// A checkpoint written from a synthetic model's weights (HF names, the same
// layout and rope style) loads to bit-identical weights, so it gives
// bit-identical logits and tokens: the HF name mapping, the shape checks,
// sharding and the mmap'd views are exact.
void ExpectCheckpointRoundTrips(const std::string& arch, int shards) {
  TempDir cfg_dir, dir;
  OJson config = TinyConfig(arch, 600);
  config["tie_word_embeddings"] = false;
  const std::string cfg = cfg_dir.Write("config.json", config.dump());
  ASSERT_OK_AND_ASSIGN(auto synth, LoadModel("synthetic:config=" + cfg));
  WriteCheckpoint(dir, synth->config, synth->weights, shards);
  dir.Write("config.json", config.dump());
  ASSERT_OK_AND_ASSIGN(auto hf, LoadHfCheckpoint(dir.path()));
  EXPECT_EQ(hf->safetensors->num_files(), static_cast<size_t>(shards));
  EXPECT_EQ(hf->tokenizer, nullptr);
  EXPECT_THAT(hf->config.model_id, HasSubstr(":4x128x384x600:"));
  EXPECT_EQ(WeightBytes(hf->weights), WeightBytes(synth->weights));
  const engine::GenerateResult want = Generate(synth->config, synth->weights, *synth->tokenizer);
  const engine::GenerateResult got = Generate(hf->config, hf->weights, *synth->tokenizer);
  EXPECT_EQ(got.first_step_logits, want.first_step_logits);
  EXPECT_EQ(got.generated_token_ids, want.generated_token_ids);
}

TEST(HfCheckpointTest, LlamaCheckpointRoundTripsBitExactly) {
  ExpectCheckpointRoundTrips("LlamaForCausalLM", 1);
}
TEST(HfCheckpointTest, ShardedMistralCheckpointRoundTripsBitExactly) {
  ExpectCheckpointRoundTrips("MistralForCausalLM", 3);
}
TEST(HfCheckpointTest, Qwen2CheckpointWithBiasesRoundTripsBitExactly) {
  ExpectCheckpointRoundTrips("Qwen2ForCausalLM", 2);
}

// The biases are applied: dropping them changes the logits.
TEST(HfCheckpointTest, Qwen2BiasesChangeTheOutput) {
  TempDir dir("hf_config_test_");
  const std::string cfg = dir.Write("config.json", TinyConfig("Qwen2ForCausalLM", 600).dump());
  ASSERT_OK_AND_ASSIGN(auto m, LoadModel("synthetic:config=" + cfg));
  ASSERT_TRUE(m->config.attention_bias);
  ASSERT_NE(m->weights.layers[0].bq.data, nullptr);
  const engine::GenerateResult with = Generate(m->config, m->weights, *m->tokenizer);
  ModelConfig no_bias_config = m->config;
  no_bias_config.attention_bias = false;
  LlamaWeights no_bias = m->weights;
  for (LayerWeights& l : no_bias.layers) l.bq = l.bk = l.bv = {};
  const engine::GenerateResult without = Generate(no_bias_config, no_bias, *m->tokenizer);
  EXPECT_NE(with.first_step_logits, without.first_step_logits);
}

// The semantic check of the HF layout: synthetic:tiny is a GGUF-layout model
// (q/k rows permuted by llama.cpp's converter, RoPE kNormal). The same weights
// with q/k rows put back in Hugging Face order and loaded from a
// config.json (RoPE kNeox) compute the same function; only the order of the
// head_dim sums in attention differs, so logits agree to float rounding.
TEST(HfCheckpointTest, HfLayoutEqualsGgufLayout) {
  ASSERT_OK_AND_ASSIGN(auto tiny, LoadModel("synthetic:tiny"));
  ASSERT_EQ(tiny->config.rope_style, kernels::RopeStyle::kNormal);
  TempDir dir("hf_config_test_");
  WriteCheckpoint(dir, tiny->config, tiny->weights, 1, tiny->config.head_dim);
  dir.Write("config.json", TinyConfig("LlamaForCausalLM", tiny->config.vocab_size).dump());
  ASSERT_OK_AND_ASSIGN(auto hf, LoadHfCheckpoint(dir.path()));
  ASSERT_EQ(hf->config.rope_style, kernels::RopeStyle::kNeox);
  const engine::GenerateResult want = Generate(tiny->config, tiny->weights, *tiny->tokenizer);
  const engine::GenerateResult got = Generate(hf->config, hf->weights, *tiny->tokenizer);
  ASSERT_EQ(got.first_step_logits.size(), want.first_step_logits.size());
  float max_diff = 0;
  for (size_t i = 0; i < want.first_step_logits.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(got.first_step_logits[i] - want.first_step_logits[i]));
  }
  EXPECT_LT(max_diff, 1e-4f);
  // Without the un-permutation the HF path computes something else: the
  // check above is not vacuous.
  TempDir wrong("hf_config_test_");
  WriteCheckpoint(wrong, tiny->config, tiny->weights, 1, 0);
  wrong.Write("config.json", TinyConfig("LlamaForCausalLM", tiny->config.vocab_size).dump());
  ASSERT_OK_AND_ASSIGN(auto bad, LoadHfCheckpoint(wrong.path()));
  const engine::GenerateResult other = Generate(bad->config, bad->weights, *tiny->tokenizer);
  float other_diff = 0;
  for (size_t i = 0; i < want.first_step_logits.size(); ++i) {
    other_diff = std::max(other_diff, std::abs(other.first_step_logits[i] - want.first_step_logits[i]));
  }
  EXPECT_GT(other_diff, 1e-3f);
}

TEST(HfCheckpointTest, LoadModelOnDirectoryNeedsTokenizerJson) {
  ASSERT_OK_AND_ASSIGN(auto tiny, LoadModel("synthetic:tiny"));
  TempDir dir("hf_config_test_");
  WriteCheckpoint(dir, tiny->config, tiny->weights, 1);
  dir.Write("config.json", TinyConfig("LlamaForCausalLM", tiny->config.vocab_size).dump());
  EXPECT_THAT(LoadModel(dir.path()), StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer.json")));
  // A byte-level tokenizer.json of the 256 bytes (GPT-2's byte characters).
  OJson vocab = OJson::object();
  for (int b = 0, next = 256; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int cp = printable ? b : next++;
    std::string s =
        cp < 0x80 ? std::string(1, static_cast<char>(cp))
                  : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    vocab[s] = b;
  }
  dir.Write("tokenizer.json",
            OJson{{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", OJson::array()}}},
                  {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}}}
                .dump());
  dir.Write("tokenizer_config.json", OJson{{"eos_token", "a"}, {"chat_template", "{{ messages }}"}}.dump());
  ASSERT_OK_AND_ASSIGN(auto loaded, LoadModel(dir.path()));
  ASSERT_NE(loaded->tokenizer, nullptr);
  EXPECT_EQ(loaded->tokenizer->Encode("Hi", false), (std::vector<int32_t>{'H', 'i'}));
  EXPECT_EQ(loaded->chat_template, "{{ messages }}");
}

TEST(HfCheckpointTest, CheckpointErrorsNameTheTensor) {
  ASSERT_OK_AND_ASSIGN(auto tiny, LoadModel("synthetic:tiny"));
  const int32_t vocab = tiny->config.vocab_size;
  {  // config.json's shape disagrees with the tensors.
    TempDir dir("hf_config_test_");
    WriteCheckpoint(dir, tiny->config, tiny->weights, 1);
    OJson c = TinyConfig("LlamaForCausalLM", vocab);
    c["intermediate_size"] = 256;
    dir.Write("config.json", c.dump());
    EXPECT_THAT(LoadHfCheckpoint(dir.path()),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("model.layers.0.mlp.gate_proj.weight"),
                               HasSubstr("shape [384, 128], expected [256, 128]"))));
  }
  {  // Qwen2 needs biases the checkpoint lacks.
    TempDir dir("hf_config_test_");
    WriteCheckpoint(dir, tiny->config, tiny->weights, 1);
    dir.Write("config.json", TinyConfig("Qwen2ForCausalLM", vocab).dump());
    EXPECT_THAT(LoadHfCheckpoint(dir.path()),
                StatusIs(absl::StatusCode::kNotFound, HasSubstr("model.layers.0.self_attn.q_proj.bias")));
  }
  {  // No config.json.
    TempDir dir("hf_config_test_");
    EXPECT_THAT(LoadHfCheckpoint(dir.path()),
                StatusIs(absl::StatusCode::kNotFound, HasSubstr("config.json")));
  }
}

TEST(HfCheckpointTest, PresetsIncludeQwen2) {
  EXPECT_THAT(SyntheticPresets(), ::testing::Contains("qwen2-0.5b"));
}

}  // namespace
}  // namespace tandem::model
