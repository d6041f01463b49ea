#include "common/metrics.h"

#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, CounterGaugeHistogramValues) {
  MetricsRegistry r;
  Counter* c = r.Counter("c_total", "a counter", {"code"})->WithLabels({"200"});
  c->Increment();
  c->Increment(2.5);
  c->Increment(-4);  // ignored: counters only go up
  EXPECT_DOUBLE_EQ(c->Value(), 3.5);

  Gauge* g = r.Gauge("g", "a gauge")->WithLabels({});
  g->Increment(3);
  g->Decrement();
  EXPECT_DOUBLE_EQ(g->Value(), 2);
  g->Set(-7);
  EXPECT_DOUBLE_EQ(g->Value(), -7);

  Histogram* h = r.Histogram("h_seconds", "a histogram", {}, {0.1, 1, 10})->WithLabels({});
  for (double v : {0.05, 0.1, 0.5, 5.0, 50.0}) h->Observe(v);
  EXPECT_EQ(h->CumulativeCount(0), 2u);  // 0.05 and 0.1 (le is inclusive)
  EXPECT_EQ(h->CumulativeCount(1), 3u);
  EXPECT_EQ(h->CumulativeCount(2), 4u);
  EXPECT_EQ(h->Count(), 5u);
  EXPECT_DOUBLE_EQ(h->Sum(), 55.65);
}

TEST(MetricsTest, SameNameReturnsSameFamilyAndChild) {
  MetricsRegistry r;
  CounterFamily* a = r.Counter("x_total", "x", {"k"});
  EXPECT_EQ(a, r.Counter("x_total", "x", {"k"}));
  EXPECT_EQ(a->WithLabels({"v"}), a->WithLabels({"v"}));
  EXPECT_NE(a->WithLabels({"v"}), a->WithLabels({"w"}));
  // Conflicting redeclaration: usable, but not exported.
  GaugeFamily* conflict = r.Gauge("x_total", "x", {"k"});
  ASSERT_NE(conflict, nullptr);
  conflict->WithLabels({"z"})->Set(5);
  EXPECT_THAT(r.RenderPrometheus(), Not(HasSubstr("z")));
}

TEST(MetricsTest, RenderFormat004) {
  MetricsRegistry r;
  r.Counter("req_total", "Requests.\nSecond line \\ backslash", {"endpoint", "code"})
      ->WithLabels({"/v1/x", "200"})
      ->Increment(3);
  r.Counter("req_total", "", {"endpoint", "code"})->WithLabels({"a\"b\\c\nd", "500"})->Increment();
  r.Gauge("inflight", "In flight")->WithLabels({})->Set(2);
  r.Histogram("lat_seconds", "Latency", {"policy"}, {1, 0.5, 0.5, INFINITY})
      ->WithLabels({"kv"})
      ->Observe(0.7);
  const std::string text = r.RenderPrometheus();
  EXPECT_EQ(text,
            "# HELP inflight In flight\n"
            "# TYPE inflight gauge\n"
            "inflight 2\n"
            "# HELP lat_seconds Latency\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{policy=\"kv\",le=\"0.5\"} 0\n"
            "lat_seconds_bucket{policy=\"kv\",le=\"1\"} 1\n"
            "lat_seconds_bucket{policy=\"kv\",le=\"+Inf\"} 1\n"
            "lat_seconds_sum{policy=\"kv\"} 0.7\n"
            "lat_seconds_count{policy=\"kv\"} 1\n"
            "# HELP req_total Requests.\\nSecond line \\\\ backslash\n"
            "# TYPE req_total counter\n"
            "req_total{endpoint=\"/v1/x\",code=\"200\"} 3\n"
            "req_total{endpoint=\"a\\\"b\\\\c\\nd\",code=\"500\"} 1\n");

  // Every line is a comment or `name{labels} value` per the 0.0.4 grammar.
  const std::regex sample(
      R"re(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? [-+0-9.eE]+(Inf)?$)re");
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
  }
}

TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  MetricsRegistry r;
  HistogramFamily* family = r.Histogram("h", "h", {"t"}, LinearBuckets(1, 1, 4));
  CounterFamily* counters = r.Counter("c_total", "c", {});
  constexpr int kThreads = 4, kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Histogram* h = family->WithLabels({t % 2 == 0 ? "even" : "odd"});
      for (int i = 0; i < kPerThread; ++i) {
        h->Observe(i % 5);
        counters->WithLabels({})->Increment();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_DOUBLE_EQ(counters->WithLabels({})->Value(), kThreads * kPerThread);
  uint64_t total = 0;
  double sum = 0;
  family->ForEach([&](const std::vector<std::string>&, const Histogram& h) {
    total += h.Count();
    sum += h.Sum();
    EXPECT_EQ(h.CumulativeCount(0), 2u * 2 * kPerThread / 5);  // two threads, values 0 and 1
  });
  EXPECT_EQ(total, uint64_t{kThreads} * kPerThread);
  EXPECT_DOUBLE_EQ(sum, kThreads * (kPerThread / 5) * (0 + 1 + 2 + 3 + 4));
}

TEST(MetricsTest, Buckets) {
  EXPECT_EQ(ExponentialBuckets(0.001, 10, 3), (std::vector<double>{0.001, 0.01, 0.1}));
  EXPECT_EQ(LinearBuckets(1, 2, 3), (std::vector<double>{1, 3, 5}));
}

TEST(MetricsTest, DefaultRegistryIsShared) {
  EXPECT_EQ(&DefaultMetricsRegistry(), &DefaultMetricsRegistry());
}

}  // namespace
}  // namespace tandem
