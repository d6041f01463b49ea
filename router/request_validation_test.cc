#include "router/request_validation.h"

#include <limits>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using ::tandem::testing::StatusIs;
using tandem::v1::GenerateRequest;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// One token per byte (id = byte + 3), BOS = 1 when asked: enough to check
// what the validator does with the encoding without a real vocabulary.
class ByteTokenizer final : public model::Tokenizer {
 public:
  ByteTokenizer() : Tokenizer(model::Vocabulary{}) {}

 private:
  std::vector<int32_t> EncodeImpl(std::string_view text, bool add_bos, bool) const override {
    std::vector<int32_t> ids;
    if (add_bos && !text.empty()) ids.push_back(1);
    for (char c : text) ids.push_back(static_cast<unsigned char>(c) + 3);
    return ids;
  }
  std::string PieceImpl(int32_t id, bool) const override { return std::string(1, static_cast<char>(id - 3)); }
};

class RequestValidationTest : public ::testing::Test {
 protected:
  RequestValidationTest() {
    info_.spec = "synthetic:tiny";
    info_.config.model_id = "tiny-model";
    info_.config.vocab_size = 300;
    info_.config.context_length = 32;
    info_.tokenizer = std::make_unique<ByteTokenizer>();
  }
  absl::StatusOr<ValidatedRequest> Validate(const GenerateRequest& r) {
    return ValidateRequest(r, info_, {.default_max_tokens = 8});
  }
  static GenerateRequest Ids(std::vector<int32_t> ids) {
    GenerateRequest r;
    for (int32_t id : ids) r.mutable_prompt_token_ids()->add_ids(id);
    return r;
  }
  model::ModelInfo info_;
};

TEST_F(RequestValidationTest, TextIsEncodedWithBosAndDefaultsApply) {
  GenerateRequest r;
  r.set_prompt("hi");
  ASSERT_OK_AND_ASSIGN(ValidatedRequest v, Validate(r));
  EXPECT_THAT(v.prompt, ElementsAre(1, 'h' + 3, 'i' + 3));
  EXPECT_EQ(v.max_tokens, 8);                 // 0: the default
  EXPECT_FLOAT_EQ(v.sampling.top_p(), 1.0f);  // unset top_p: no nucleus cut
  EXPECT_TRUE(v.stop_at_eos);                 // unset: true
  EXPECT_EQ(v.ttft_slo_ms, 0);                // unset: the router's default
  EXPECT_EQ(v.request_id, "");
}

TEST_F(RequestValidationTest, TokenIdsAreUsedAsGivenWithinTheVocabulary) {
  GenerateRequest r = Ids({5, 299});
  r.set_max_tokens(3);
  r.set_stop_at_eos(false);
  r.set_request_id("abc");
  r.add_stop("\n");
  r.mutable_sampling()->set_top_p(0.5f);
  ASSERT_OK_AND_ASSIGN(ValidatedRequest v, Validate(r));
  EXPECT_THAT(v.prompt, ElementsAre(5, 299));
  EXPECT_EQ(v.max_tokens, 3);
  EXPECT_FALSE(v.stop_at_eos);
  EXPECT_EQ(v.request_id, "abc");
  EXPECT_THAT(v.stops, ElementsAre("\n"));
  EXPECT_FLOAT_EQ(v.sampling.top_p(), 0.5f);

  EXPECT_THAT(Validate(Ids({5, 300})).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_token_ids: id 300 outside")));
  EXPECT_THAT(Validate(Ids({-1})).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Validate(Ids({})).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_token_ids")));
}

TEST_F(RequestValidationTest, InputMustBeSetAndEncodeToTokens) {
  EXPECT_THAT(Validate(GenerateRequest()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input")));
  GenerateRequest empty;
  empty.set_prompt("");
  EXPECT_THAT(Validate(empty).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt: encodes to no tokens")));
}

TEST_F(RequestValidationTest, MaxTokensMustFitTheContext) {
  GenerateRequest r = Ids(std::vector<int32_t>(10, 7));
  r.set_max_tokens(23);  // 10 + 23 - 1 = 32: fits exactly
  EXPECT_OK(Validate(r).status());
  r.set_max_tokens(24);
  EXPECT_THAT(Validate(r).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceeds the context length 32")));
  r.set_max_tokens(-1);
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_tokens")));
}

TEST_F(RequestValidationTest, SamplingRangesNameTheirField) {
  struct Case {
    float temperature, top_p;
    int32_t top_k;
    std::string field;
  };
  for (const Case& k :
       std::vector<Case>{{-0.1f, 1, 0, "sampling.temperature"},
                         {std::numeric_limits<float>::quiet_NaN(), 1, 0, "sampling.temperature"},
                         {1, 1, -1, "sampling.top_k"},
                         {1, 1.5f, 0, "sampling.top_p"},
                         {1, -0.5f, 0, "sampling.top_p"}}) {
    SCOPED_TRACE(k.field);
    GenerateRequest r = Ids({5});
    r.mutable_sampling()->set_temperature(k.temperature);
    r.mutable_sampling()->set_top_p(k.top_p);
    r.mutable_sampling()->set_top_k(k.top_k);
    EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(k.field)));
  }
  GenerateRequest resumed = Ids({5});
  resumed.mutable_sampling()->set_skip_draws(-1);
  EXPECT_THAT(Validate(resumed).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sampling.skip_draws")));
  resumed.mutable_sampling()->set_skip_draws(40);
  EXPECT_OK(Validate(resumed).status());
}

TEST_F(RequestValidationTest, StopStringsAreBounded) {
  GenerateRequest r = Ids({5});
  for (int i = 0; i < kMaxStopStrings; ++i) r.add_stop("s");
  EXPECT_OK(Validate(r).status());
  r.add_stop("one too many");
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 16")));
  for (const std::string& bad : {std::string(), std::string(kMaxStopStringBytes + 1, 'x')}) {
    GenerateRequest one = Ids({5});
    one.add_stop(bad);
    EXPECT_THAT(Validate(one).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stop")));
  }
}

TEST_F(RequestValidationTest, ModelMustBeTheServedOneByIdOrSpec) {
  GenerateRequest r = Ids({5});
  for (const char* name : {"tiny-model", "synthetic:tiny"}) {
    r.set_model(name);
    SCOPED_TRACE(name);
    EXPECT_OK(Validate(r).status());
  }
  r.set_model("gpt-9");
  EXPECT_THAT(Validate(r).status(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("'gpt-9' is not served")));
}

TEST_F(RequestValidationTest, RequestIdIsBounded) {
  GenerateRequest r = Ids({5});
  r.set_request_id(std::string(kMaxRequestIdBytes, 'r'));
  EXPECT_OK(Validate(r).status());
  r.set_request_id(std::string(kMaxRequestIdBytes + 1, 'r'));
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("request_id")));
}

TEST_F(RequestValidationTest, PriorityInRangeAndTenantBounded) {
  GenerateRequest r = Ids({5});
  r.set_priority(kMaxPriority);
  r.set_tenant(std::string(kMaxTenantBytes, 't'));
  ASSERT_OK_AND_ASSIGN(ValidatedRequest v, Validate(r));
  EXPECT_EQ(v.priority, kMaxPriority);
  EXPECT_EQ(v.tenant.size(), kMaxTenantBytes);
  r.set_priority(kMinPriority - 1);
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority")));
  r.set_priority(kMaxPriority + 1);
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority")));
  r.set_priority(0);
  r.set_tenant(std::string(kMaxTenantBytes + 1, 't'));
  EXPECT_THAT(Validate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tenant")));
}

// One rule for both fronts: a target that is set is a positive, finite number
// of milliseconds; unset takes the router's default.
TEST_F(RequestValidationTest, SloTargetsMustBePositiveWhenSet) {
  GenerateRequest r = Ids({5});
  r.mutable_slo()->set_ttft_ms(250);
  r.mutable_slo()->set_tpot_ms(40);
  ASSERT_OK_AND_ASSIGN(ValidatedRequest v, Validate(r));
  EXPECT_EQ(v.ttft_slo_ms, 250);
  EXPECT_EQ(v.tpot_slo_ms, 40);
  for (double bad :
       {0.0, -5.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    SCOPED_TRACE(bad);
    tandem::v1::SloTargets slo;
    slo.set_ttft_ms(bad);
    EXPECT_THAT(ValidateSlo(slo), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slo.ttft_ms")));
    slo.Clear();
    slo.set_tpot_ms(bad);
    EXPECT_THAT(ValidateSlo(slo), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slo.tpot_ms")));
    GenerateRequest with = Ids({5});
    with.mutable_slo()->set_ttft_ms(bad);
    EXPECT_THAT(Validate(with).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slo.ttft_ms")));
  }
  EXPECT_OK(ValidateSlo(tandem::v1::SloTargets()));
}

}  // namespace
}  // namespace tandem::router
