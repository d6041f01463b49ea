// config.json parsing (ModelConfigFromHfJson). Checkpoints, `synthetic:config=`
// and LoadModel on a checkpoint directory: tests/hf_checkpoint_test.cc.
#include "model/hf_config.h"

#include <nlohmann/json.hpp>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

// Llama 3.2 1B's config.json, verbatim.
constexpr char kLlama32Config[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

// Mistral 7B v0.1's config.json, verbatim.
constexpr char kMistralConfig[] = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
  "use_cache": true, "vocab_size": 32000})";

// Qwen2.5 0.5B's config.json, verbatim.
constexpr char kQwen2Config[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

TEST(HfConfigTest, Llama) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ModelConfigFromHfJson(kLlama32Config));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.dim, 2048);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_dims, 64);
  EXPECT_EQ(c.ffn_dim, 8192);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_freq_base, 500000.0f);
  EXPECT_EQ(c.context_length, 131072);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_style, kernels::RopeStyle::kNeox);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 32.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
}

TEST(HfConfigTest, MistralCapsContextAtSlidingWindow) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ModelConfigFromHfJson(kMistralConfig));
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_EQ(c.context_length, 4096);  // sliding_window; full attention is exact up to it
}

TEST(HfConfigTest, Qwen2HasAttentionBias) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ModelConfigFromHfJson(kQwen2Config));
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.context_length, 32768);  // use_sliding_window is false
}

TEST(HfConfigTest, UnsupportedArchitecture) {
  EXPECT_THAT(ModelConfigFromHfJson(R"({"architectures": ["GPT2LMHeadModel"], "n_embd": 768})"),
              StatusIs(absl::StatusCode::kUnimplemented,
                       HasSubstr("unsupported architecture 'GPT2LMHeadModel' (supported: "
                                 "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)")));
}

TEST(HfConfigTest, MalformedConfigs) {
  auto with = [](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = nlohmann::json::parse(kMistralConfig);
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = value;
    }
    return j.dump();
  };
  const nlohmann::json kErase(nlohmann::json::value_t::discarded);
  struct Case {
    std::string json;
    absl::StatusCode code;
    std::string want;
  };
  const Case cases[] = {
      {"{", absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {"[]", absl::StatusCode::kInvalidArgument, "not a JSON object"},
      {R"({"architectures": "LlamaForCausalLM"})", absl::StatusCode::kInvalidArgument, "architectures"},
      {with("hidden_size", kErase), absl::StatusCode::kNotFound, "missing key hidden_size"},
      {with("hidden_size", -4096), absl::StatusCode::kInvalidArgument, "hidden_size = -4096"},
      {with("hidden_size", "4096"), absl::StatusCode::kInvalidArgument, "hidden_size"},
      {with("num_key_value_heads", 5), absl::StatusCode::kInvalidArgument, "not a multiple"},
      {with("hidden_size", 4095), absl::StatusCode::kInvalidArgument,
       "not a multiple of num_attention_heads"},
      {with("vocab_size", 4294967296), absl::StatusCode::kInvalidArgument, "vocab_size"},
      {with("rms_norm_eps", 0), absl::StatusCode::kInvalidArgument, "rms_norm_eps"},
      {with("rope_theta", "big"), absl::StatusCode::kInvalidArgument, "rope_theta"},
      {with("tie_word_embeddings", 1), absl::StatusCode::kInvalidArgument, "tie_word_embeddings"},
      {with("hidden_act", "gelu"), absl::StatusCode::kUnimplemented, "hidden_act"},
      {with("mlp_bias", true), absl::StatusCode::kUnimplemented, "mlp_bias"},
      {with("rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}), absl::StatusCode::kUnimplemented,
       "rope_scaling type 'yarn'"},
      {with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}), absl::StatusCode::kNotFound,
       "low_freq_factor"},
      {with("rope_scaling", 3), absl::StatusCode::kInvalidArgument, "rope_scaling"},
      {with("head_dim", 0), absl::StatusCode::kInvalidArgument, "head_dim"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ModelConfigFromHfJson(c.json), StatusIs(c.code, HasSubstr(c.want))) << c.json;
  }
}

}  // namespace
}  // namespace tandem::model
