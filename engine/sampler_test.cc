#include "engine/sampler.h"

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::engine {
namespace {

TEST(SamplerTest, GreedyTakesArgmaxLowestIdOnTies) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(std::vector<float>{1, 5, 3, 5}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{-1, -1}), 0);
}

TEST(SamplerTest, SeedMakesDrawsReproducible) {
  std::vector<float> logits = {1.0f, 1.1f, 0.9f, 1.05f, 0.2f};
  SamplingParams p{.temperature = 1.0f, .seed = 42};
  Sampler a(p), b(p);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 200; ++i) {
    da.push_back(a.Sample(logits));
    db.push_back(b.Sample(logits));
  }
  EXPECT_EQ(da, db);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> dc;
  for (int i = 0; i < 200; ++i) dc.push_back(c.Sample(logits));
  EXPECT_NE(da, dc);
}

// A stream resumed elsewhere after 37 sampled tokens continues the seeded
// sequence exactly (the router's live migration relies on it).
TEST(SamplerTest, SkipDrawsContinuesTheSeededSequence) {
  std::vector<float> logits = {1.0f, 1.1f, 0.9f, 1.05f, 0.2f};
  SamplingParams p{.temperature = 0.8f, .top_p = 0.95f, .seed = 5};
  Sampler whole(p);
  std::vector<int32_t> all;
  for (int i = 0; i < 100; ++i) all.push_back(whole.Sample(logits));
  p.skip_draws = 37;
  Sampler resumed(p);
  std::vector<int32_t> rest;
  for (int i = 37; i < 100; ++i) rest.push_back(resumed.Sample(logits));
  EXPECT_EQ(rest, std::vector<int32_t>(all.begin() + 37, all.end()));
  p.skip_draws = 36;
  Sampler off_by_one(p);
  std::vector<int32_t> shifted;
  for (int i = 37; i < 100; ++i) shifted.push_back(off_by_one.Sample(logits));
  EXPECT_NE(shifted, rest);
}

TEST(SamplerTest, TopKRestrictsSupport) {
  std::vector<float> logits = {0.0f, 3.0f, 2.9f, 1.0f, 2.8f};
  Sampler s(SamplingParams{.temperature = 5.0f, .top_k = 2, .seed = 7});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) ++counts[s.Sample(logits)];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[2], 0);
}

TEST(SamplerTest, TopPRestrictsSupport) {
  // Probabilities at T=1: about 0.665, 0.245, 0.09; p=0.8 keeps the first two.
  std::vector<float> logits = {2.0f, 1.0f, 0.0f};
  Sampler s(SamplingParams{.temperature = 1.0f, .top_p = 0.8f, .seed = 9});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 4000; ++i) ++counts[s.Sample(logits)];
  EXPECT_EQ(counts.count(2), 0u);
  // The kept mass renormalises: token 0 about 0.73.
  EXPECT_NEAR(counts[0] / 4000.0, 0.665 / (0.665 + 0.245), 0.03);
}

TEST(SamplerTest, DistributionFollowsSoftmax) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // 1:3
  Sampler s(SamplingParams{.temperature = 1.0f, .seed = 1});
  int ones = 0;
  for (int i = 0; i < 8000; ++i) ones += s.Sample(logits);
  EXPECT_NEAR(ones / 8000.0, 0.75, 0.02);
}

TEST(SamplerTest, ValidateNamesTheField) {
  EXPECT_NE(SamplingParams{.temperature = -1}.Validate().message().find("temperature"), std::string::npos);
  EXPECT_NE(SamplingParams{.top_k = -1}.Validate().message().find("top_k"), std::string::npos);
  EXPECT_NE(SamplingParams{.top_p = 0}.Validate().message().find("top_p"), std::string::npos);
  EXPECT_NE(SamplingParams{.skip_draws = -1}.Validate().message().find("skip_draws"), std::string::npos);
  EXPECT_FALSE(SamplingParams{.skip_draws = SamplingParams::kMaxSkipDraws + 1}.Validate().ok());
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace tandem::engine
