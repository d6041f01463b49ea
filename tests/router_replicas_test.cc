// Replicated routers (issue #18 item 3) with real processes on loopback: two
// `tandem router` replicas, 2 prefill + 2 decode workers each given both
// (`--router A,B`), and a replay of the Mooncake conversation trace's first
// requests spread over both replicas. Mid-run router A is killed (-9); a
// request that fails on A is retried on B, as a client behind a Service
// would, and every request must succeed. Then A restarts on its port, and
// the time until its prefix index holds what B's holds (the workers
// re-register with it and it fetches their snapshots) is printed.
//
// Prints one line "REPLICAS | ..." with the figures (docs/RELIABILITY.md).
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "loadgen/trace.h"
#include "loadgen/workload.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/poll.h"
#include "tests/testing/ready_process.h"
#include "tests/testing/subprocess.h"
#include "worker_common/router_set.h"

namespace tandem {
namespace {

using ::tandem::testing::PollUntil;
using ::tandem::testing::ReadyProcess;
using ::tandem::testing::StartReady;
using ::tandem::testing::Subprocess;

const std::string kStories = TANDEM_SHARED_DIR "/models/stories260K.gguf";
const std::string kTrace = TANDEM_SHARED_DIR "/data/traces/mooncake_conversation.jsonl";
constexpr int kRequests = 120;
constexpr int kConcurrency = 8;

std::vector<std::string> RouterArgv(int port) {
  return {TANDEM_BINARY,        "router",      "--model", kStories,         "--port",
          std::to_string(port), "--http-port", "0",       "--heartbeat-ms", "200"};
}

// A gauge's value summed over its label sets in a router's /metrics; -1 when
// the router does not answer.
double Gauge(const ReadyProcess& router, const std::string& name) {
  const std::string http = router.ready.value("http", "");
  int port = 0;
  if (http.empty() || !absl::SimpleAtoi(http.substr(http.rfind(':') + 1), &port)) return -1;
  return ::tandem::testing::ScrapeGauge(port, name);
}

int HealthyWorkers(tandem::v1::Tandem::Stub* stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  // Waits out a reconnecting channel (a restarted router) within the
  // deadline: fail-fast calls polled back to back kept one failing for ~8 s.
  ctx.set_wait_for_ready(true);
  tandem::v1::ClusterInfo info;
  if (!stub->GetClusterInfo(&ctx, {}, &info).ok()) return -1;
  return info.prefill_workers() + info.decode_workers();
}

grpc::Status Generate(tandem::v1::Tandem::Stub* stub, const loadgen::LoadRequest& r) {
  tandem::v1::GenerateRequest req;
  *req.mutable_prompt_token_ids()->mutable_ids() = {r.prompt.begin(), r.prompt.end()};
  req.set_max_tokens(r.max_tokens);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = stub->Generate(&ctx, req);
  tandem::v1::GenerateResponse resp;
  bool summary = false;
  while (reader->Read(&resp)) summary |= resp.has_summary();
  grpc::Status s = reader->Finish();
  if (s.ok() && !summary) return grpc::Status(grpc::StatusCode::INTERNAL, "stream ended without a summary");
  return s;
}

// Two routers and 2 prefill + 2 decode workers reporting to both.
class RouterReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStories) || !std::filesystem::exists(kTrace)) {
      GTEST_SKIP() << "needs " << kStories << " and " << kTrace << " (../shared)";
    }
    routers.push_back(StartReady(RouterArgv(0)));
    routers.push_back(StartReady(RouterArgv(0)));
    a = routers[0].ready.value("grpc", "");
    b = routers[1].ready.value("grpc", "");
    ASSERT_FALSE(a.empty() || b.empty());
    for (const char* role : {"prefill", "prefill", "decode", "decode"}) {
      workers.push_back(StartReady({TANDEM_BINARY, role, "--router", a + "," + b, "--model", kStories,
                                    "--port", "0", "--threads", "1", "--kv-cache-mb", "16"}));
      ASSERT_FALSE(workers.back().ready.is_null());
    }
    for (const std::string& target : {a, b}) {
      // Reconnects as the workers do (at most 1 s apart), so a restarted
      // replica is reached again soon.
      grpc::ChannelArguments args;
      worker_common::AddFastReconnect(&args);
      stubs.push_back(tandem::v1::Tandem::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
    }
    for (auto& stub : stubs) {
      ASSERT_TRUE(PollUntil([&] { return HealthyWorkers(stub.get()) == 4; }, absl::Seconds(30)))
          << "every worker registers with both routers";
    }
  }

  // Kills router A (-9) and waits for it to exit.
  void KillRouterA() {
    routers[0].process->Signal(SIGKILL);
    (void)routers[0].process->Wait(absl::Now() + absl::Seconds(10));
  }

  std::vector<ReadyProcess> routers;
  std::string a, b;  // their gRPC addresses
  std::vector<ReadyProcess> workers;
  std::vector<std::unique_ptr<tandem::v1::Tandem::Stub>> stubs;
};

TEST_F(RouterReplicasTest, KillingOneRouterLosesNoRequestAndTheRestartedOneRebuildsItsIndex) {
  absl::StatusOr<std::vector<loadgen::TraceRequest>> trace = loadgen::ReadMooncakeTrace(kTrace, kRequests);
  ASSERT_TRUE(trace.ok()) << trace.status();
  auto synth = loadgen::PromptSynthesizer::Create({.vocab_size = 512,
                                                   .block_tokens = 16,
                                                   .max_tokens_cap = 8,
                                                   .max_input_tokens = 256,
                                                   .context_length = 512});
  ASSERT_TRUE(synth.ok()) << synth.status();
  std::vector<loadgen::LoadRequest> requests;
  for (const loadgen::TraceRequest& t : *trace) {
    absl::StatusOr<loadgen::LoadRequest> r = (*synth)->Synthesize(t);
    ASSERT_TRUE(r.ok()) << r.status();
    requests.push_back(*std::move(r));
  }

  // Replay: request i goes to router i % 2; one that fails there is retried
  // on the other replica.
  std::atomic<int> next{0}, done{0}, retried{0};
  absl::Mutex mu;
  std::vector<std::string> failures;
  auto client = [&] {
    for (int i = next.fetch_add(1); i < kRequests; i = next.fetch_add(1)) {
      const int first = i % 2;
      grpc::Status s = Generate(stubs[first].get(), requests[i]);
      if (!s.ok()) {
        retried.fetch_add(1);
        s = Generate(stubs[1 - first].get(), requests[i]);
      }
      if (!s.ok()) {
        absl::MutexLock lock(&mu);
        failures.push_back(absl::StrCat("request ", i, ": ", s.error_message()));
      }
      done.fetch_add(1);
    }
  };
  std::vector<std::thread> clients;
  for (int c = 0; c < kConcurrency; ++c) clients.emplace_back(client);
  ASSERT_TRUE(PollUntil([&] { return done.load() >= kRequests / 3; }, absl::Seconds(120)));
  const int port_a = std::stoi(a.substr(a.rfind(':') + 1));
  KillRouterA();
  const int done_at_kill = done.load();
  for (std::thread& t : clients) t.join();
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(failures.empty()) << failures.size() << " failed, first: " << failures.front();
  }
  EXPECT_GT(retried.load(), 0) << "requests sent to the killed router were retried on the other";

  // The restarted replica: workers re-register, it fetches their snapshots.
  // Full: it holds as many (block, worker) entries as the replica that never
  // went away (read again each time: the last events may still be arriving).
  const absl::Time restart = absl::Now();
  routers[0] = StartReady(RouterArgv(port_a));
  double a_entries = -1, b_entries = -1;
  ASSERT_TRUE(PollUntil(
      [&] {
        a_entries = Gauge(routers[0], "tandem_router_kv_index_entries");
        b_entries = Gauge(routers[1], "tandem_router_kv_index_entries");
        return a_entries > 0 && a_entries == b_entries;
      },
      absl::Seconds(30), absl::Milliseconds(5)))
      << "restarted router's index: " << a_entries << " entries, the other's " << b_entries;
  const absl::Duration to_full_index = absl::Now() - restart;
  EXPECT_TRUE(PollUntil([&] { return HealthyWorkers(stubs[0].get()) == 4; }, absl::Seconds(10)))
      << "the restarted router has every worker";
  std::printf(
      "REPLICAS | 2 routers, 2P+2D, %d trace requests over both, router A kill -9 after %d | failed %zu, "
      "retried on B %d | A restarted: full index (%.0f entries) %.0f ms after launch\n",
      kRequests, done_at_kill, failures.size(), retried.load(), b_entries,
      absl::ToDoubleMilliseconds(to_full_index));
  // After the restart both replicas serve.
  for (auto& stub : stubs) EXPECT_TRUE(Generate(stub.get(), requests.front()).ok());
}

// The same through `tandem bench --target A,B`: requests alternate between
// the replicas, and those whose router dies are sent again to the other.
TEST_F(RouterReplicasTest, BenchSpreadsOverReplicasAndRetriesOnTheOtherWhenOneDies) {
  const std::string report = ::testing::TempDir() + "/replicas_bench.json";
  Subprocess bench({TANDEM_BINARY, "bench", "--target", a + "," + b, "--trace", kTrace, "--max-requests",
                    std::to_string(kRequests), "--time-scale", "0.02", "--block-tokens", "16",
                    "--max-input-tokens", "256", "--max-tokens-cap", "8", "--json", report, "--quiet"});
  // Router A dies once it has finished some of the run's requests.
  ASSERT_TRUE(
      PollUntil([&] { return Gauge(routers[0], "tandem_router_requests_total") >= 10; }, absl::Seconds(60)));
  KillRouterA();
  std::optional<int> exit_code = bench.Wait(absl::Now() + absl::Seconds(120));
  ASSERT_TRUE(exit_code.has_value()) << "tandem bench did not finish";
  std::ifstream in(report);
  ASSERT_TRUE(in.good()) << report;
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["requests"], kRequests);
  EXPECT_EQ(j["errors"], 0) << j["first_error_by_code"].dump();
  EXPECT_EQ(j["completed"].get<int>() + j["rejected"].get<int>(), kRequests);
  EXPECT_GT(j["retried"].get<int>(), 0) << "requests sent to the dead router went to the other";
  std::printf(
      "REPLICAS | tandem bench --target A,B, %d trace requests, A killed -9 mid-run | completed %d, "
      "errors %d, retried on B %d\n",
      kRequests, j["completed"].get<int>(), j["errors"].get<int>(), j["retried"].get<int>());
}

}  // namespace
}  // namespace tandem
