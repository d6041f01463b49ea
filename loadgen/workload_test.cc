#include "loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::loadgen {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

std::unique_ptr<PromptSynthesizer> Make(PromptSynthesizer::Options o) {
  auto s = PromptSynthesizer::Create(o);
  EXPECT_OK(s.status());
  return s.ok() ? *std::move(s) : nullptr;
}

TEST(PromptSynthesizerTest, EqualHashIdsGiveEqualBlocksAndDifferentOnesDiffer) {
  auto a = Make({.vocab_size = 512, .block_tokens = 16});
  auto b = Make({.vocab_size = 512, .block_tokens = 16});  // another instance: nothing cached
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->Block(42), b->Block(42));
  EXPECT_EQ(a->Block(42).size(), 16u);
  for (int64_t id = 0; id < 200; ++id) EXPECT_NE(a->Block(id), a->Block(id + 1)) << id;
  auto other_seed = Make({.vocab_size = 512, .block_tokens = 16, .seed = 9});
  EXPECT_NE(a->Block(42), other_seed->Block(42));
}

TEST(PromptSynthesizerTest, TokensStayInsideTheVocabularyAndAvoidSpecialIds) {
  auto s = Make({.vocab_size = 10, .first_token_id = 3, .block_tokens = 64});
  std::vector<int> seen(10, 0);
  for (int64_t id = 0; id < 50; ++id) {
    for (int32_t t : s->Block(id)) {
      ASSERT_GE(t, 3);
      ASSERT_LT(t, 10);
      ++seen[t];
    }
  }
  for (int t = 3; t < 10; ++t) EXPECT_GT(seen[t], 0) << t;  // every regular id is reachable
}

TEST(PromptSynthesizerTest, SharedHashIdsGiveSharedPrefixesAndBosLeads) {
  auto s = Make({.vocab_size = 256, .bos_id = 1, .source_block_tokens = 512, .block_tokens = 8});
  ASSERT_OK_AND_ASSIGN(LoadRequest x,
                       s->Synthesize({.input_length = 1100, .output_length = 5, .hash_ids = {0, 7, 8}}));
  ASSERT_OK_AND_ASSIGN(LoadRequest y,
                       s->Synthesize({.input_length = 1100, .output_length = 5, .hash_ids = {0, 7, 9}}));
  ASSERT_OK_AND_ASSIGN(LoadRequest z,
                       s->Synthesize({.input_length = 1100, .output_length = 5, .hash_ids = {0, 6, 8}}));
  // 1100 = 2 * 512 + 76: 8 + 8 + ceil(76 * 8 / 512) = 8 + 8 + 2 = 18 tokens.
  ASSERT_EQ(x.prompt.size(), 18u);
  EXPECT_EQ(x.prompt[0], 1);
  EXPECT_TRUE(std::equal(x.prompt.begin(), x.prompt.begin() + 16, y.prompt.begin()));
  EXPECT_NE(std::vector<int32_t>(x.prompt.begin() + 16, x.prompt.end()),
            std::vector<int32_t>(y.prompt.begin() + 16, y.prompt.end()));
  EXPECT_TRUE(std::equal(x.prompt.begin(), x.prompt.begin() + 8, z.prompt.begin()));
  EXPECT_NE(std::vector<int32_t>(x.prompt.begin() + 8, x.prompt.begin() + 16),
            std::vector<int32_t>(z.prompt.begin() + 8, z.prompt.begin() + 16));
  // Block contents: block 7 sits at [8, 16); the last block is block 8's front.
  const std::vector<int32_t> b7 = s->Block(7), b8 = s->Block(8);
  EXPECT_TRUE(std::equal(b7.begin(), b7.end(), x.prompt.begin() + 8));
  EXPECT_TRUE(std::equal(b8.begin(), b8.begin() + 2, x.prompt.begin() + 16));
  EXPECT_EQ(x.max_tokens, 5);
}

TEST(PromptSynthesizerTest, ScalingOfFullAndPartialBlocks) {
  auto s = Make({.vocab_size = 256, .source_block_tokens = 512, .block_tokens = 16});
  auto len = [&](int32_t input, size_t ids) {
    return s->ScaledInputLength(
        {.input_length = input, .output_length = 1, .hash_ids = std::vector<int64_t>(ids)});
  };
  EXPECT_EQ(len(512, 1), 16);             // one full block
  EXPECT_EQ(len(1024, 2), 32);            // two full blocks
  EXPECT_EQ(len(513, 2), 17);             // 16 + ceil(1 * 16 / 512) = 16 + 1
  EXPECT_EQ(len(1, 1), 1);                // a partial block keeps at least one token
  EXPECT_EQ(len(6758, 14), 13 * 16 + 4);  // 6758 - 13 * 512 = 102; ceil(102 * 16 / 512) = 4
  EXPECT_EQ(len(2290, 5), 4 * 16 + 8);    // 2290 - 4 * 512 = 242; ceil(242 * 16 / 512) = ceil(7.5625) = 8
  // No scaling when the block sizes agree.
  auto same = Make({.vocab_size = 256, .source_block_tokens = 16, .block_tokens = 16});
  EXPECT_EQ(
      same->ScaledInputLength({.input_length = 100, .output_length = 1, .hash_ids = std::vector<int64_t>(7)}),
      100);
}

TEST(PromptSynthesizerTest, ClampsOutputThenInputThenContext) {
  const TraceRequest r{.input_length = 5120, .output_length = 300, .hash_ids = std::vector<int64_t>(10)};
  // 10 blocks of 16: 160 tokens before clamps.
  ASSERT_OK_AND_ASSIGN(LoadRequest a, Make({.vocab_size = 256, .block_tokens = 16})->Synthesize(r));
  EXPECT_EQ(a.prompt.size(), 160u);
  EXPECT_EQ(a.max_tokens, 300);
  ASSERT_OK_AND_ASSIGN(
      LoadRequest b,
      Make({.vocab_size = 256, .block_tokens = 16, .max_tokens_cap = 8, .max_input_tokens = 100})
          ->Synthesize(r));
  EXPECT_EQ(b.prompt.size(), 100u);
  EXPECT_EQ(b.max_tokens, 8);
  EXPECT_TRUE(std::equal(b.prompt.begin(), b.prompt.end(), a.prompt.begin()));  // the front is kept
  ASSERT_OK_AND_ASSIGN(LoadRequest c, Make({.vocab_size = 256,
                                            .block_tokens = 16,
                                            .max_tokens_cap = 8,
                                            .max_input_tokens = 100,
                                            .context_length = 64})
                                          ->Synthesize(r));
  EXPECT_EQ(c.prompt.size(), 57u);  // 57 + 8 - 1 = 64
  EXPECT_THAT(Make({.vocab_size = 256, .block_tokens = 16, .context_length = 64})->Synthesize(r),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no room for a prompt")));
}

TEST(PromptSynthesizerTest, RejectsBadOptionsAndRequests) {
  EXPECT_THAT(PromptSynthesizer::Create({.vocab_size = 3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vocab_size")));
  EXPECT_THAT(PromptSynthesizer::Create({.vocab_size = 100, .bos_id = 100}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bos_id")));
  EXPECT_THAT(PromptSynthesizer::Create({.vocab_size = 100, .block_tokens = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_tokens")));
  EXPECT_THAT(
      Make({.vocab_size = 100})->Synthesize({.input_length = 1000, .output_length = 1, .hash_ids = {0}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected ceil(1000 / 512) = 2")));
}

TEST(ScheduleTest, TraceTimestampsScaleFromTheFirstRequest) {
  const std::vector<TraceRequest> trace = {
      {.timestamp_ms = 1000}, {.timestamp_ms = 1000}, {.timestamp_ms = 4000}};
  EXPECT_EQ(TraceSchedule(trace, 1.0),
            (std::vector<absl::Duration>{absl::ZeroDuration(), absl::ZeroDuration(), absl::Seconds(3)}));
  EXPECT_EQ(TraceSchedule(trace, 0.1)[2], absl::Milliseconds(300));
  EXPECT_EQ(TraceSchedule(trace, 2.0)[2], absl::Seconds(6));
}

TEST(ScheduleTest, PoissonIsSeededAndHasTheRequestedRate) {
  const std::vector<absl::Duration> a = PoissonSchedule(20000, 50.0, 7);
  EXPECT_EQ(a, PoissonSchedule(20000, 50.0, 7));  // same seed, same schedule
  EXPECT_NE(a, PoissonSchedule(20000, 50.0, 8));
  ASSERT_EQ(a.size(), 20000u);
  EXPECT_EQ(a[0], absl::ZeroDuration());
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  // 19999 gaps of mean 1/50 s: the mean is within 3% (about 4 standard errors).
  const double mean_gap = absl::ToDoubleSeconds(a.back()) / 19999;
  EXPECT_NEAR(mean_gap, 0.02, 0.02 * 0.03);
  // The first gap is -ln(1 - u) / rate for u from mt19937_64(7)'s first draw.
  std::mt19937_64 rng(7);
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  EXPECT_NEAR(absl::ToDoubleSeconds(a[1]), -std::log1p(-u) / 50.0, 1e-9);  // Duration: 1/4 ns ticks
}

TEST(HitRateBoundTest, CountsTheLeadingRunOfBlocksSeenBeforeAtMostPromptMinusOne) {
  // Blocks of 4 tokens; computed by hand (and by bench/trace_bound.py on the
  // same records with --source-block-tokens 4 --block-tokens 4):
  //   r0 [1 2 3], 10 tokens: full blocks 1 2 (3 partial); none seen      -> 0
  //   r1 [1 2 5], 12 tokens: full blocks 1 2 5; 1 2 seen, then 5 is new  -> 8
  //   r2 [1 2],    8 tokens: 1 2 seen -> 8, but the last token is computed -> 7
  //   r3 [9 1],    8 tokens: 9 is new, so 1 after it does not count     -> 0
  // 15 of 38 prompt tokens.
  const std::vector<TraceRequest> records = {
      {.hash_ids = {1, 2, 3}}, {.hash_ids = {1, 2, 5}}, {.hash_ids = {1, 2}}, {.hash_ids = {9, 1}}};
  const HitRateBound b = InfiniteCacheHitRateBound(records, {10, 12, 8, 8}, 4);
  EXPECT_EQ(b.prompt_tokens, 38);
  EXPECT_EQ(b.cached_tokens, 15);
  EXPECT_DOUBLE_EQ(b.hit_rate, 15.0 / 38.0);
  // A partial block is never cached: block 3 of r0 (partial) does not make
  // r4's third block a hit.
  std::vector<TraceRequest> more = records;
  more.push_back({.hash_ids = {1, 2, 3}});
  EXPECT_EQ(InfiniteCacheHitRateBound(more, {10, 12, 8, 8, 12}, 4).cached_tokens, 15 + 8);
  EXPECT_EQ(InfiniteCacheHitRateBound({}, {}, 4).hit_rate, 0);
}

TEST(HitRateBoundTest, UsesThePromptsAsSentAfterScalingAndClamps) {
  // Two 1000-token Mooncake requests with the same two ids, scaled 512 -> 16:
  // each prompt is 16 + ceil(488 * 16 / 512) = 32 tokens, two full blocks.
  ASSERT_OK_AND_ASSIGN(auto synth, PromptSynthesizer::Create({.vocab_size = 512, .block_tokens = 16}));
  const TraceRequest r{.input_length = 1000, .output_length = 8, .hash_ids = {7, 8}};
  ASSERT_EQ(synth->ScaledInputLength(r), 32);
  EXPECT_EQ(InfiniteCacheHitRateBound({r, r}, {32, 32}, 16).cached_tokens, 31);
  // Cut to 20 tokens (e.g. --max-input-tokens): one full block each.
  EXPECT_EQ(InfiniteCacheHitRateBound({r, r}, {20, 20}, 16).cached_tokens, 16);
}

TEST(AssignTenantsTest, SplitsByShareDeterministically) {
  const std::vector<TenantShare> tenants = {{.name = "heavy", .share = 10}, {.name = "light", .share = 1}};
  const std::vector<size_t> a = AssignTenants(11000, tenants, 7);
  EXPECT_EQ(a, AssignTenants(11000, tenants, 7));
  EXPECT_NE(a, AssignTenants(11000, tenants, 8));
  int64_t light = 0;
  for (size_t t : a) light += t == 1 ? 1 : 0;
  EXPECT_NEAR(static_cast<double>(light), 1000, 100);  // binomial sd ~30
  EXPECT_EQ(AssignTenants(3, {}, 0), std::vector<size_t>(3, 0));
}

}  // namespace
}  // namespace tandem::loadgen
