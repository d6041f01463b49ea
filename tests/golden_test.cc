// Golden test: Tandem's CPU backend against llama.cpp's recorded greedy outputs
// on stories260K (../shared/data/reference). Prompt ids, all 48 generated ids
// and the first-step logits (within 1e-4) must match.
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace tandem {
namespace {

const std::string kModel = TANDEM_SHARED_DIR "/models/stories260K.gguf";
const std::string kReference = TANDEM_SHARED_DIR "/data/reference/stories260K_greedy.jsonl";

std::vector<nlohmann::json> ReadRecords() {
  std::vector<nlohmann::json> records;
  std::ifstream in(kReference);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  }
  return records;
}

class GoldenTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!std::ifstream(kModel) || !std::ifstream(kReference)) {
      GTEST_SKIP() << "shared data absent (" << kModel << ", " << kReference << "): golden test skipped";
    }
  }
};

TEST_P(GoldenTest, MatchesLlamaCpp) {
  const std::vector<nlohmann::json> records = ReadRecords();
  ASSERT_FALSE(records.empty());
  ASSERT_OK_AND_ASSIGN(auto m, model::LoadModel(kModel));
  auto backend = kernels::CreateCpuBackend({.num_threads = GetParam()});
  ASSERT_OK_AND_ASSIGN(auto llama, model::LlamaModel::Create(m->config, m->weights, backend.get()));
  for (const nlohmann::json& rec : records) {
    SCOPED_TRACE("record " + rec["id"].dump());
    engine::GenerateRequest req;
    req.prompt = rec["prompt"].get<std::string>();
    req.max_tokens = rec["n_predict"].get<int>();
    ASSERT_OK_AND_ASSIGN(engine::GenerateResult r, engine::GenerateOne(*llama, *backend, *m->tokenizer, req));
    EXPECT_EQ(r.prompt_token_ids, rec["prompt_token_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(r.generated_token_ids, rec["generated_token_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(r.text, rec["generated_text"].get<std::string>());
    EXPECT_STREQ(engine::FinishReasonName(r.finish_reason), "length");
    const auto want = rec["first_step_logits"].get<std::vector<double>>();
    ASSERT_EQ(r.first_step_logits.size(), want.size());
    double max_err = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_err = std::max(max_err, std::abs(r.first_step_logits[i] - want[i]));
    }
    EXPECT_LE(max_err, 1e-4) << "max |logit - llama.cpp| = " << max_err;
  }
}

// One thread and several: the result must not depend on the thread count.
INSTANTIATE_TEST_SUITE_P(Threads, GoldenTest, ::testing::Values(1, 4));

}  // namespace
}  // namespace tandem
