#include "engine/sampler.h"

#include <limits>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::engine {
namespace {

TEST(SamplerTest, GreedyTakesArgmaxLowestIdOnTies) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(std::vector<float>{1, 5, 3, 5}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{-1, -1}), 0);
}

// The vector Argmax returns the scalar loop's index for every input: ties
// (lowest index), +0/-0, infinities, NaNs anywhere (index 0 included), every
// length around the vector widths, and a vocabulary-sized row.
TEST(SamplerTest, ArgmaxMatchesTheScalarLoop) {
  std::mt19937 rng(7);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            3.0f,
                            -3.0f};
  std::uniform_int_distribution<int> coarse(-4, 4);  // few distinct values: many ties
  std::uniform_real_distribution<float> fine(-10.0f, 10.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  for (int n : {0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100, 32000}) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> v(n);
      for (float& x : v) {
        const int r = pick(rng);
        x = r < 10 ? specials[r % 7] : r < 55 ? static_cast<float>(coarse(rng)) : fine(rng);
      }
      ASSERT_EQ(Argmax(v), ArgmaxScalar(v)) << "n=" << n << " trial=" << trial;
      if (n > 0) {
        v[0] = std::numeric_limits<float>::quiet_NaN();
        ASSERT_EQ(Argmax(v), 0) << "n=" << n << " trial=" << trial;
      }
    }
  }
  // The largest value only in the scalar tail and only in the last vector.
  std::vector<float> v(35, 1.0f);
  v[34] = 2.0f;
  EXPECT_EQ(Argmax(v), 34);
  v[34] = 1.0f;
  v[20] = 2.0f;
  v[30] = 2.0f;
  EXPECT_EQ(Argmax(v), 20);
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
