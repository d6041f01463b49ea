// `tandem bench` end to end: a live local cluster (`tandem up`, synthetic:tiny)
// replaying the head of the Mooncake conversation trace and a synthetic
// workload, the JSON report checked for consistency; the CLI's usage errors;
// and bench/plot_bench.py rendering PNGs from reports.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "loadgen/metrics.h"
#include "nlohmann/json.hpp"
#include "tests/testing/subprocess.h"

namespace tandem {
namespace {

using ::tandem::testing::Subprocess;

const std::string kTrace = TANDEM_SHARED_DIR "/data/traces/mooncake_conversation.jsonl";

struct ExitResult {
  int exit_code;
  std::string out;  // stdout and stderr
};

ExitResult RunCommand(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string TempPath(const std::string& name) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "bench_test_", getpid());
  std::filesystem::create_directories(dir);
  return dir + "/" + name;
}

std::optional<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// The report's internal consistency, whatever the cluster did.
void ExpectConsistentReport(const nlohmann::json& j, int64_t requests) {
  EXPECT_EQ(j["requests"].get<int64_t>(), requests);
  const int64_t completed = j["completed"], rejected = j["rejected"], errors = j["errors"];
  EXPECT_EQ(completed + rejected + errors, requests) << j.dump();
  EXPECT_GT(completed + rejected, 0) << j.dump();
  ASSERT_TRUE(j["samples"].is_array());
  EXPECT_EQ(static_cast<int64_t>(j["samples"].size()), completed);
  // Each sample says when it was sent; it ended within the run.
  const double duration_ms = j["duration_s"].get<double>() * 1000;
  for (const nlohmann::json& s : j["samples"]) {
    EXPECT_GE(s["sent_ms"].get<double>(), 0.0) << s.dump();
    EXPECT_LE(s["sent_ms"].get<double>() + s["e2e_ms"].get<double>(), duration_ms + 1e-3) << s.dump();
  }
  const double hit = j["prefix_hit_rate"];
  EXPECT_GE(hit, 0.0);
  EXPECT_LE(hit, 1.0);
  EXPECT_LE(j["cached_tokens"].get<int64_t>(), j["prompt_tokens"].get<int64_t>());
  EXPECT_GE(j["goodput_rps"].get<double>(), 0.0);
  EXPECT_LE(j["goodput_rps"].get<double>(), j["throughput_rps"].get<double>() + 1e-9);
  for (const char* metric : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    SCOPED_TRACE(metric);
    const nlohmann::json& p = j[metric];
    if (completed == 0) continue;
    ASSERT_TRUE(p["p50"].is_number()) << p.dump();
    EXPECT_GE(p["p50"].get<double>(), 0.0);
    EXPECT_LE(p["p50"].get<double>(), p["p90"].get<double>());
    EXPECT_LE(p["p90"].get<double>(), p["p99"].get<double>());
  }
  if (completed > 0) {  // a request's TTFT is within its E2E
    EXPECT_LE(j["ttft_ms"]["p50"].get<double>(), j["e2e_ms"]["p99"].get<double>());
  }
}

// GET /metrics from the router's HTTP address "host:port" (Connection:
// close, read to EOF, 10 s socket timeouts); the whole response, "" on
// failure.
std::string ScrapeMetrics(const std::string& address) {
  const std::vector<std::string> parts = absl::StrSplit(address, ':');
  int port = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &port)) return "";
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      std::array<char, 4096> buf;
      ssize_t n;
      while ((n = read(fd, buf.data(), buf.size())) > 0) out.append(buf.data(), static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

// The sum of the samples whose line starts with `prefix` (a metric name and
// the start of its labels) in a Prometheus text body; -1 when none.
double SumSamples(const std::string& body, const std::string& prefix) {
  double sum = -1;
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    double v = 0;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &v)) continue;
    sum = (sum < 0 ? 0 : sum) + v;
  }
  return sum;
}

class BenchClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new Subprocess({TANDEM_BINARY, "up", "--model", "synthetic:tiny", "--prefill", "1", "--decode", "1",
                          "--port", "0", "--http-port", "0", "--threads", "1", "--ready-timeout-s", "60"});
    const absl::Time deadline = absl::Now() + absl::Seconds(90);
    while (auto line = up_->ReadLine(deadline)) {
      nlohmann::json j = nlohmann::json::parse(*line, nullptr, false);
      if (j.is_object() && j.value("event", "") == "ready") {
        router_ = new std::string(j["router"].get<std::string>());
        http_ = new std::string(j.value("http", ""));
        break;
      }
    }
  }
  static void TearDownTestSuite() {
    if (up_ != nullptr) {
      up_->Signal(SIGTERM);
      up_->Wait(absl::Now() + absl::Seconds(10));
    }
    delete up_;
    delete router_;
    delete http_;
    up_ = nullptr;
    router_ = nullptr;
    http_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(router_, nullptr) << "tandem up did not become ready"; }

  static Subprocess* up_;
  static std::string* router_;
  static std::string* http_;  // the router's HTTP (OpenAI, /metrics) address
};
Subprocess* BenchClusterTest::up_ = nullptr;
std::string* BenchClusterTest::router_ = nullptr;
std::string* BenchClusterTest::http_ = nullptr;

// The first 40 requests of the trace, 512-token blocks shrunk to 16 (the
// engine's block size, so shared trace blocks are shared cache blocks),
// 12 s of arrivals compressed to 0.6 s. At most 8 in flight: the 10 that
// arrive together at 0 do not all start before any has cached block 0.
std::string TraceArgs() {
  return absl::StrCat(" --trace ", kTrace,
                      " --max-requests 40 --block-tokens 16 --max-input-tokens 256 --max-tokens-cap 4"
                      " --time-scale 0.05 --concurrency-limit 8 --timeout-s 60");
}

TEST_F(BenchClusterTest, ReplaysTheMooncakeTraceHead) {
  if (!std::filesystem::exists(kTrace)) GTEST_SKIP() << "no shared trace at " << kTrace;
  const std::string json = TempPath("trace.json");
  const ExitResult r = RunCommand(
      absl::StrCat(TANDEM_BINARY, " bench --target ", *router_, TraceArgs(), " --label trace --json ", json));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "TTFT")) << r.out;  // the final table
  EXPECT_TRUE(absl::StrContains(r.out, "prefix hit rate")) << r.out;
  std::optional<nlohmann::json> j = ReadJson(json);
  ASSERT_TRUE(j.has_value()) << "unreadable " << json;
  ExpectConsistentReport(*j, 40);
  EXPECT_EQ((*j)["completed"], 40) << r.out;  // no admission control on this cluster, nothing fails
  // Every trace request starts with block 0 (a shared system prompt): once the
  // first is computed, the others find at least its 16 tokens cached.
  EXPECT_GT((*j)["prefix_hit_rate"].get<double>(), 0.0) << j->dump();
  EXPECT_GE((*j)["cached_tokens"].get<int64_t>(), 16) << j->dump();
  EXPECT_EQ((*j)["label"], "trace");
  // Without SLOs, every completed request is good.
  EXPECT_DOUBLE_EQ((*j)["goodput_rps"].get<double>(), (*j)["throughput_rps"].get<double>());
  // The sequential infinite-cache bound: printed beside the measured rate,
  // in the report, and (every request completed) never below it.
  EXPECT_TRUE(absl::StrContains(r.out, "sequential infinite-cache bound")) << r.out;
  ASSERT_TRUE((*j)["hit_rate_bound"].is_number()) << j->dump();
  EXPECT_GT((*j)["hit_rate_bound"].get<double>(), 0.0);
  EXPECT_LE((*j)["prefix_hit_rate"].get<double>(), (*j)["hit_rate_bound"].get<double>() + 1e-9) << j->dump();
}

// Every request carries the router's TTFT prediction back (Timings.
// predicted_ttft_ms); bench reports the error's percentiles, and the router
// exports the same error as a histogram and its learned costs as gauges.
TEST_F(BenchClusterTest, ReportsTheRoutersTtftPredictionError) {
  if (!std::filesystem::exists(kTrace)) GTEST_SKIP() << "no shared trace at " << kTrace;
  const std::string before = ScrapeMetrics(*http_);
  const std::string count = "tandem_router_ttft_prediction_error_seconds_count{";
  const double counted_before = std::max(0.0, SumSamples(before, count));
  const std::string json = TempPath("prediction.json");
  const ExitResult r = RunCommand(
      absl::StrCat(TANDEM_BINARY, " bench --target ", *router_, TraceArgs(), " --quiet --json ", json));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "TTFT prediction error")) << r.out;
  std::optional<nlohmann::json> j = ReadJson(json);
  ASSERT_TRUE(j.has_value());
  ASSERT_EQ((*j)["completed"], 40) << r.out;
  EXPECT_EQ((*j)["predicted_requests"], 40) << j->dump();
  const nlohmann::json& abs_error = (*j)["ttft_prediction_abs_error_ms"];
  ASSERT_TRUE(abs_error["p50"].is_number()) << j->dump();
  EXPECT_GE(abs_error["p50"].get<double>(), 0.0);
  EXPECT_LE(abs_error["p50"].get<double>(), abs_error["p90"].get<double>());
  const nlohmann::json& error = (*j)["ttft_prediction_error_ms"];
  ASSERT_TRUE(error["p90"].is_number());
  EXPECT_LE(error["p90"].get<double>(), abs_error["p90"].get<double>() + 1e-9);
  for (const nlohmann::json& s : (*j)["samples"]) {
    ASSERT_TRUE(s["predicted_ttft_ms"].is_number()) << s.dump();
    EXPECT_GE(s["predicted_ttft_ms"].get<double>(), 0.0);
  }
  // /metrics: the bench's 40 requests are counted in the error histogram
  // (recorded before the summary reaches the client), and the prefill
  // worker's learned cost is there.
  const std::string after = ScrapeMetrics(*http_);
  ASSERT_FALSE(after.empty()) << "no /metrics at " << *http_;
  EXPECT_GE(SumSamples(after, count) - counted_before, 40.0) << after;
  EXPECT_GT(SumSamples(after, "tandem_router_prefill_seconds_per_token{worker="), 0.0) << after;
}

TEST_F(BenchClusterTest, ImpossibleTtftSloGivesZeroGoodput) {
  if (!std::filesystem::exists(kTrace)) GTEST_SKIP() << "no shared trace at " << kTrace;
  const std::string json = TempPath("slo.json");
  const ExitResult r = RunCommand(absl::StrCat(TANDEM_BINARY, " bench --target ", *router_, TraceArgs(),
                                               " --slo-ttft 0.001 --quiet --json ", json));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::optional<nlohmann::json> j = ReadJson(json);
  ASSERT_TRUE(j.has_value());
  ExpectConsistentReport(*j, 40);
  EXPECT_EQ((*j)["goodput_rps"].get<double>(), 0.0) << j->dump();
  EXPECT_EQ((*j)["slo"]["ttft_ms"].get<double>(), 0.001);
  for (const nlohmann::json& s : (*j)["samples"]) EXPECT_EQ(s["met_slo"], false);
}

TEST_F(BenchClusterTest, SyntheticWorkloadAtAPoissonRate) {
  const std::string json = TempPath("synthetic.json");
  const ExitResult r = RunCommand(absl::StrCat(
      TANDEM_BINARY, " bench --target ", *router_,
      " --synthetic --num-requests 16 --input-len 64 --output-len 3 --prefix-fraction 0.5 --num-prefixes 2"
      " --rate 40 --seed 3 --concurrency-limit 1 --quiet --json ",
      json));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::optional<nlohmann::json> j = ReadJson(json);
  ASSERT_TRUE(j.has_value());
  ExpectConsistentReport(*j, 16);
  EXPECT_EQ((*j)["completed"], 16) << r.out;
  EXPECT_EQ((*j)["rate_rps"], 40.0);
  // Two 32-token prefixes among 16 requests: some request reuses one (how
  // many depends on what overlaps in flight).
  EXPECT_GE((*j)["cached_tokens"].get<int64_t>(), 32) << j->dump();
  for (const nlohmann::json& s : (*j)["samples"]) EXPECT_EQ(s["output_tokens"], 3);
}

// Prompts longer than the model's context (synthetic:tiny: 2,048 tokens)
// and no --context-length: bench asks the router for the context length and
// block size and cuts each prompt to fit, so every request completes.
TEST_F(BenchClusterTest, ContextLengthAndBlockSizeComeFromTheCluster) {
  const std::string json = TempPath("cluster_context.json");
  const ExitResult r = RunCommand(absl::StrCat(TANDEM_BINARY, " bench --target ", *router_,
                                               " --synthetic --num-requests 2 --input-len 3000 --output-len 2"
                                               " --concurrency-limit 1 --json ",
                                               json));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "context length 2048")) << r.out;
  std::optional<nlohmann::json> j = ReadJson(json);
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ((*j)["context_length"], 2048) << j->dump();
  EXPECT_EQ((*j)["block_tokens"], 16) << j->dump();  // the workers' KV block size
  EXPECT_EQ((*j)["completed"], 2) << r.out;
  for (const nlohmann::json& s : (*j)["samples"]) {
    EXPECT_EQ(s["prompt_tokens"], 2048 - 2 + 1) << s.dump();  // prompt + max_tokens - 1 fits
  }
  // --context-length still overrides what the cluster says.
  const ExitResult shorter =
      RunCommand(absl::StrCat(TANDEM_BINARY, " bench --target ", *router_,
                              " --synthetic --num-requests 1 --input-len 3000 --output-len 2"
                              " --context-length 500 --json ",
                              json));
  ASSERT_EQ(shorter.exit_code, 0) << shorter.out;
  j = ReadJson(json);
  ASSERT_TRUE(j.has_value());
  EXPECT_EQ((*j)["context_length"], 500);
  ASSERT_EQ((*j)["samples"].size(), 1u);
  EXPECT_EQ((*j)["samples"][0]["prompt_tokens"], 499);
}

TEST(BenchCliTest, HelpAndUsageErrors) {
  ExitResult r = RunCommand(absl::StrCat(TANDEM_BINARY, " bench --help"));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  for (const char* flag :
       {"--target", "--trace", "--synthetic", "--rate", "--time-scale", "--slo-ttft", "--slo-tpot", "--json",
        "--block-tokens", "--max-tokens-cap", "--concurrency-limit"}) {
    EXPECT_TRUE(absl::StrContains(r.out, flag)) << flag << " missing from:\n" << r.out;
  }
  EXPECT_FALSE(absl::StrContains(RunCommand(absl::StrCat(TANDEM_BINARY, " --help")).out,
                                 "[not yet available] Replay"));
  r = RunCommand(absl::StrCat(TANDEM_BINARY, " bench --target 127.0.0.1:1"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "--trace FILE or --synthetic")) << r.out;
  r = RunCommand(
      absl::StrCat(TANDEM_BINARY, " bench --target 127.0.0.1:1 --synthetic --rate 1 --time-scale 2"));
  EXPECT_NE(r.exit_code, 0) << r.out;  // CLI11's own code for a flag conflict
  EXPECT_TRUE(absl::StrContains(r.out, "excludes")) << r.out;
  r = RunCommand(absl::StrCat(TANDEM_BINARY, " bench --target 127.0.0.1:1 --trace /nonexistent.jsonl"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "/nonexistent.jsonl")) << r.out;
}

TEST(BenchCliTest, NoClusterThereIsARuntimeError) {
  // Port 1 on loopback: connection refused, so every request fails at once.
  const ExitResult r =
      RunCommand(absl::StrCat(TANDEM_BINARY,
                              " bench --target 127.0.0.1:1 --synthetic --num-requests 3 --quiet"
                              " --timeout-s 10"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "every request failed")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "errors 3")) << r.out;
}

// bench/plot_bench.py on reports in the real schema (SummaryToJson), two at
// different rates: latency CDFs and goodput against rate, as PNG files.
TEST(PlotBenchTest, RendersPngsFromReports) {
  // Debian's python3 has python3-matplotlib; a python3 earlier on PATH (pyenv) may not.
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    if (RunCommand(absl::StrCat(candidate, " -c 'import matplotlib'")).exit_code == 0) {
      python = candidate;
      break;
    }
  }
  if (python.empty()) GTEST_SKIP() << "no python3 with matplotlib (Debian: python3-matplotlib)";
  std::vector<std::string> files;
  for (double rate : {2.0, 4.0}) {
    std::vector<loadgen::RequestResult> results;
    for (int i = 0; i < 20; ++i) {
      loadgen::RequestResult r;
      r.outcome = loadgen::Outcome::kCompleted;
      r.ttft_ms = 10.0 * (i + 1) * rate;
      r.e2e_ms = *r.ttft_ms + 50;
      r.output_tokens = 6;
      r.itl_ms = {10, 10, 10, 10, 10};
      r.prompt_tokens = 100;
      r.cached_tokens = 16;
      results.push_back(r);
    }
    const loadgen::RunSummary s = loadgen::Summarize(results, {.ttft_ms = 100}, 5.0);
    nlohmann::ordered_json j = loadgen::SummaryToJson(s, results, /*samples=*/true);
    j["label"] = "round-robin";
    j["rate_rps"] = rate;
    files.push_back(TempPath(absl::StrCat("rate", rate, ".json")));
    std::ofstream(files.back()) << j.dump();
  }
  const std::string out_dir = TempPath("plots");
  const ExitResult r = RunCommand(absl::StrCat(python, " " TANDEM_SOURCE_DIR "/bench/plot_bench.py --out ",
                                               out_dir, " ", files[0], " ", files[1]));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* png : {"latency_cdf.png", "goodput_vs_rate.png"}) {
    std::ifstream in(out_dir + "/" + png, std::ios::binary);
    ASSERT_TRUE(in.good()) << png << " not written; output:\n" << r.out;
    std::array<char, 8> magic{};
    in.read(magic.data(), magic.size());
    EXPECT_EQ(std::string(magic.data(), 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
  }
}

}  // namespace
}  // namespace tandem
