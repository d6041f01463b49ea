#include "loadgen/metrics.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::loadgen {
namespace {

RequestResult Completed(double ttft, double e2e, int32_t tokens, std::vector<double> itl = {},
                        int32_t prompt = 0, int32_t cached = 0) {
  RequestResult r;
  r.outcome = Outcome::kCompleted;
  r.ttft_ms = ttft;
  r.e2e_ms = e2e;
  r.output_tokens = tokens;
  r.itl_ms = std::move(itl);
  r.prompt_tokens = prompt;
  r.cached_tokens = cached;
  return r;
}

TEST(PercentileTest, InterpolatesBetweenClosestRanks) {
  // Sorted: 1 2 3 4 10. Rank of q: q / 100 * 4.
  const std::vector<double> v = {10, 3, 1, 4, 2};
  EXPECT_DOUBLE_EQ(*Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(*Percentile(v, 50), 3);     // rank 2
  EXPECT_DOUBLE_EQ(*Percentile(v, 90), 7.6);   // rank 3.6: 4 + 0.6 * 6
  EXPECT_DOUBLE_EQ(*Percentile(v, 99), 9.76);  // rank 3.96: 4 + 0.96 * 6
  EXPECT_DOUBLE_EQ(*Percentile(v, 100), 10);
  EXPECT_DOUBLE_EQ(*Percentile({5}, 99), 5);
  EXPECT_FALSE(Percentile({}, 50).has_value());
  const Percentiles p = ComputePercentiles(v);
  EXPECT_DOUBLE_EQ(*p.mean, 4);
  EXPECT_DOUBLE_EQ(*p.p90, 7.6);
}

TEST(TpotTest, ExcludesTheFirstToken) {
  // 100 ms to the first token, 5 tokens by 500 ms: 4 gaps in 400 ms.
  EXPECT_DOUBLE_EQ(*TpotMs(Completed(100, 500, 5)), 100);
  EXPECT_DOUBLE_EQ(*TpotMs(Completed(30, 60, 2)), 30);
  EXPECT_FALSE(TpotMs(Completed(100, 500, 1)).has_value());
  RequestResult no_token = Completed(0, 50, 0);
  no_token.ttft_ms.reset();
  EXPECT_FALSE(TpotMs(no_token).has_value());
}

TEST(MeetsSloTest, EveryGivenTargetMustHold) {
  const RequestResult r = Completed(100, 500, 5);  // TTFT 100, TPOT 100
  EXPECT_TRUE(MeetsSlo(r, {}));
  EXPECT_TRUE(MeetsSlo(r, {.ttft_ms = 100, .tpot_ms = 100}));
  EXPECT_FALSE(MeetsSlo(r, {.ttft_ms = 99.9}));
  EXPECT_FALSE(MeetsSlo(r, {.tpot_ms = 99.9}));
  EXPECT_TRUE(MeetsSlo(Completed(100, 100, 1), {.tpot_ms = 1}));  // one token: no TPOT to miss
  RequestResult rejected;
  rejected.outcome = Outcome::kRejected;
  EXPECT_FALSE(MeetsSlo(rejected, {}));
}

TEST(SummarizeTest, CountsRatesAndHitRate) {
  std::vector<RequestResult> results = {
      Completed(100, 500, 5, {100, 100, 100, 100}, /*prompt=*/40, /*cached=*/16),
      Completed(300, 1300, 3, {400, 600}, /*prompt=*/60, /*cached=*/0),
  };
  results[1].sent_ms = 250;
  RequestResult rejected;
  rejected.outcome = Outcome::kRejected;
  results.push_back(rejected);
  RequestResult error;
  error.outcome = Outcome::kError;
  error.error_code = "UNAVAILABLE";
  error.error_message = "no healthy decode worker";
  results.push_back(error);
  results.push_back(error);

  const RunSummary s = Summarize(results, {.ttft_ms = 200}, /*duration_s=*/2.0);
  EXPECT_EQ(s.requests, 5);
  EXPECT_EQ(s.completed, 2);
  EXPECT_EQ(s.rejected, 1);
  EXPECT_EQ(s.errors, 2);
  EXPECT_EQ(s.errors_by_code.at("UNAVAILABLE"), 2);
  EXPECT_EQ(s.first_error_by_code.at("UNAVAILABLE"), "no healthy decode worker");
  EXPECT_EQ(s.good, 1);  // the second misses TTFT 200
  EXPECT_DOUBLE_EQ(s.goodput_rps, 0.5);
  EXPECT_DOUBLE_EQ(s.throughput_rps, 1.0);
  EXPECT_DOUBLE_EQ(s.prefix_hit_rate, 16.0 / 100.0);
  EXPECT_DOUBLE_EQ(s.output_tokens_per_s, 4.0);
  EXPECT_DOUBLE_EQ(*s.ttft_ms.p50, 200);  // of {100, 300}
  EXPECT_DOUBLE_EQ(*s.tpot_ms.p50, 300);  // of {100, 500}
  EXPECT_DOUBLE_EQ(*s.itl_ms.p50, 100);   // of {100 x4, 400, 600}
  EXPECT_DOUBLE_EQ(*s.e2e_ms.p90, 500 + 0.9 * 800);

  const nlohmann::ordered_json j = SummaryToJson(s, results, /*samples=*/true);
  EXPECT_EQ(j["requests"], 5);
  EXPECT_EQ(j["completed"], 2);
  EXPECT_EQ(j["rejected"], 1);
  EXPECT_EQ(j["errors"], 2);
  EXPECT_DOUBLE_EQ(j["goodput_rps"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["ttft_ms"]["p50"].get<double>(), 200);
  EXPECT_EQ(j["slo"]["ttft_ms"], 200.0);
  EXPECT_TRUE(j["slo"]["tpot_ms"].is_null());
  ASSERT_EQ(j["samples"].size(), 2u);  // completed requests only
  EXPECT_DOUBLE_EQ(j["samples"][1]["tpot_ms"].get<double>(), 500);
  EXPECT_DOUBLE_EQ(j["samples"][1]["sent_ms"].get<double>(), 250);
  EXPECT_EQ(j["samples"][0]["met_slo"], true);
  EXPECT_EQ(j["samples"][1]["met_slo"], false);
  EXPECT_FALSE(SummaryToJson(s, results, /*samples=*/false).contains("samples"));
}

TEST(SummarizeTest, NoCompletedRequestsGivesNullPercentiles) {
  RequestResult rejected;
  rejected.outcome = Outcome::kRejected;
  const RunSummary s = Summarize({rejected}, {}, 1.0);
  EXPECT_EQ(s.goodput_rps, 0);
  EXPECT_EQ(s.prefix_hit_rate, 0);
  const nlohmann::ordered_json j = SummaryToJson(s, {rejected}, false);
  EXPECT_TRUE(j["ttft_ms"]["p50"].is_null());
}

TEST(SummarizeTest, RefusalLatencyIsMeasuredOverRejectedRequests) {
  std::vector<RequestResult> results(3);
  for (int i = 0; i < 2; ++i) {
    results[i].outcome = Outcome::kRejected;
    results[i].e2e_ms = 2.0 + 2.0 * i;  // 2 and 4 ms
  }
  results[2].outcome = Outcome::kCompleted;
  results[2].e2e_ms = 900;  // not a refusal
  const RunSummary s = Summarize(results, {}, 1.0);
  EXPECT_DOUBLE_EQ(*s.rejected_ms.p50, 3.0);
  EXPECT_DOUBLE_EQ(s.rejected_max_ms, 4.0);
  const nlohmann::ordered_json j = SummaryToJson(s, results, false);
  EXPECT_DOUBLE_EQ(j["rejected_ms"]["p50"].get<double>(), 3.0);
  EXPECT_DOUBLE_EQ(j["rejected_max_ms"].get<double>(), 4.0);
}

TEST(SummarizeTest, TtftPredictionErrorIsMeasuredMinusPredictedOverPredictedRequests) {
  std::vector<RequestResult> results;
  const double predicted[] = {100, 100, 100, 50};
  const double measured[] = {90, 130, 160, 50};  // errors -10, 30, 60, 0
  for (int i = 0; i < 4; ++i) {
    RequestResult r = Completed(measured[i] + 2, 500, 4);
    r.predicted_ttft_ms = predicted[i];
    r.router_ttft_ms = measured[i];
    r.queue_ms = 1.5 * i;
    r.prefill_ms = 20;
    r.transfer_ms = 3;
    r.admission_ms = 0.5 * i;
    r.reserve_ms = 0.25 * i;
    r.tenant = i == 0 ? "light" : "";
    results.push_back(r);
  }
  results.push_back(Completed(10, 20, 2));  // an old router: no prediction
  RequestResult only_predicted = Completed(10, 20, 2);
  only_predicted.predicted_ttft_ms = 5;  // no first token at the router
  results.push_back(only_predicted);
  EXPECT_DOUBLE_EQ(*TtftPredictionErrorMs(results[0]), -10);
  EXPECT_FALSE(TtftPredictionErrorMs(results[4]).has_value());
  EXPECT_FALSE(TtftPredictionErrorMs(results[5]).has_value());

  RunSummary s = Summarize(results, {}, 1.0);
  EXPECT_EQ(s.predicted, 4);
  // Signed, sorted -10 0 30 60: p50 at rank 1.5 = 15, p90 at rank 2.7 = 30 + 0.7 * 30 = 51.
  EXPECT_DOUBLE_EQ(*s.ttft_prediction_error_ms.p50, 15);
  EXPECT_DOUBLE_EQ(*s.ttft_prediction_error_ms.p90, 51);
  // Absolute, sorted 0 10 30 60: p50 = 20, p90 = 51.
  EXPECT_DOUBLE_EQ(*s.ttft_prediction_abs_error_ms.p50, 20);
  EXPECT_DOUBLE_EQ(*s.ttft_prediction_abs_error_ms.p90, 51);

  s.hit_rate_bound = 0.5;
  const nlohmann::ordered_json j = SummaryToJson(s, results, /*samples=*/true);
  EXPECT_EQ(j["predicted_requests"].get<int64_t>(), 4);
  EXPECT_DOUBLE_EQ(j["ttft_prediction_error_ms"]["p50"].get<double>(), 15);
  EXPECT_DOUBLE_EQ(j["ttft_prediction_abs_error_ms"]["p90"].get<double>(), 51);
  EXPECT_DOUBLE_EQ(j["hit_rate_bound"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["samples"][1]["predicted_ttft_ms"].get<double>(), 100);
  EXPECT_TRUE(j["samples"][4]["predicted_ttft_ms"].is_null());
  // Where each request's TTFT went, and its tenant when it has one.
  EXPECT_DOUBLE_EQ(j["samples"][2]["queue_ms"].get<double>(), 3);
  EXPECT_DOUBLE_EQ(j["samples"][2]["prefill_ms"].get<double>(), 20);
  EXPECT_DOUBLE_EQ(j["samples"][2]["transfer_ms"].get<double>(), 3);
  EXPECT_DOUBLE_EQ(j["samples"][2]["admission_ms"].get<double>(), 1);
  EXPECT_DOUBLE_EQ(j["samples"][2]["reserve_ms"].get<double>(), 0.5);
  EXPECT_TRUE(j["samples"][4]["queue_ms"].is_null());
  EXPECT_TRUE(j["samples"][4]["reserve_ms"].is_null());
  EXPECT_EQ(j["samples"][0]["tenant"], "light");
  EXPECT_FALSE(j["samples"][1].contains("tenant"));
  // Without a bound computed, the key is null.
  EXPECT_TRUE(SummaryToJson(Summarize(results, {}, 1.0), results, false)["hit_rate_bound"].is_null());
}

TEST(SummarizeTest, ByTenantSplitsTheRequests) {
  std::vector<RequestResult> results(3);
  for (RequestResult& r : results) {
    r.outcome = Outcome::kCompleted;
    r.output_tokens = 1;
  }
  results[0].tenant = "a";
  results[0].ttft_ms = 10;
  results[1].tenant = "b";
  results[1].ttft_ms = 30;
  results[2].tenant = "a";
  results[2].ttft_ms = 20;
  results[2].outcome = Outcome::kRejected;
  const std::map<std::string, RunSummary> by = SummarizeByTenant(results, {}, 1.0);
  ASSERT_EQ(by.size(), 2u);
  EXPECT_EQ(by.at("a").completed, 1);
  EXPECT_EQ(by.at("a").rejected, 1);
  EXPECT_EQ(by.at("b").ttft_ms.p50, 30);
  results[0].tenant = results[1].tenant = results[2].tenant = "";
  EXPECT_TRUE(SummarizeByTenant(results, {}, 1.0).empty());
}

}  // namespace
}  // namespace tandem::loadgen
