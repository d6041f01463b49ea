// LoadModelInfo: the config (model_id included), tokenizer and chat template
// LoadModel gives for the same spec, without weights.
#include "model/model_info.h"

#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/loader.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

// Both loads of `spec` agree on everything the info carries.
void ExpectInfoMatchesLoadModel(const std::string& spec) {
  SCOPED_TRACE(spec);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ModelInfo> info, LoadModelInfo(spec));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LoadedModel> full, LoadModel(spec));
  EXPECT_EQ(info->spec, full->spec);
  EXPECT_EQ(info->config.model_id, full->config.model_id);
  EXPECT_EQ(info->config.architecture, full->config.architecture);
  EXPECT_EQ(info->config.vocab_size, full->config.vocab_size);
  EXPECT_EQ(info->config.dim, full->config.dim);
  EXPECT_EQ(info->config.num_layers, full->config.num_layers);
  EXPECT_EQ(info->config.num_kv_heads, full->config.num_kv_heads);
  EXPECT_EQ(info->config.head_dim, full->config.head_dim);
  EXPECT_EQ(info->config.context_length, full->config.context_length);
  EXPECT_EQ(info->chat_template, full->chat_template);
  ASSERT_NE(info->tokenizer, nullptr);
  EXPECT_EQ(info->tokenizer->vocab_size(), full->tokenizer->vocab_size());
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  EXPECT_EQ(info->tokenizer->Encode(text, true), full->tokenizer->Encode(text, true));
}

TEST(ModelInfoTest, SyntheticTinyMatchesLoadModel) { ExpectInfoMatchesLoadModel("synthetic:tiny"); }

TEST(ModelInfoTest, SyntheticConfigFileMatchesLoadModel) {
  const std::string path = ::testing::TempDir() + "/model_info_test_config.json";
  std::ofstream(path) << R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 96, "vocab_size": 1000, "torch_dtype": "float32"})";
  ExpectInfoMatchesLoadModel("synthetic:config=" + path);
}

TEST(ModelInfoTest, Stories260KMatchesLoadModel) {
  const std::string path = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  if (!std::ifstream(path)) GTEST_SKIP() << path << " absent";
  ExpectInfoMatchesLoadModel(path);
}

// An 8B preset's info needs none of its 16 GB of weights.
TEST(ModelInfoTest, LargePresetLoadsWithoutWeights) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<ModelInfo> info, LoadModelInfo("synthetic:llama-8b"));
  EXPECT_EQ(info->config.model_id, "synthetic:llama-8b");
  EXPECT_EQ(info->config.vocab_size, 128256);
  EXPECT_EQ(info->config.num_layers, 32);
}

TEST(ModelInfoTest, ErrorsNameTheProblem) {
  EXPECT_THAT(LoadModelInfo("synthetic:huge").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tiny")));
  EXPECT_THAT(LoadModelInfo("/nonexistent/model.gguf").status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/model.gguf")));
}

}  // namespace
}  // namespace tandem::model
