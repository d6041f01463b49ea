// How long a router (re)started beside running workers takes to hold a full
// prefix index (issue #18 item 3: "a restarted replica serves with a full
// index within a stated time; measure it with 1,000,000 indexed blocks").
//
// The workers are this process: `--workers` gRPC servers, each answering
// KvEventSource.Snapshot from a KV event log holding `--blocks / --workers`
// blocks, and each reporting to the router through the same RouterSet a real
// worker uses (registration, heartbeats, KV events). The router is the real
// `tandem router` binary. For each round: launch the router (the first round
// a cold start, the others kill -9 and relaunch on the same port), then time
// until its /metrics says the index holds every (block, worker) entry.
//
//   build/bench/router_restart_bench --tandem build/bin/tandem --blocks 1000000 --rounds 3
//
// Prints one JSON object: per round the time to the router's ready line and
// to a full index, milliseconds.
#include <signal.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/kv_events.h"
#include "grpcpp/server_builder.h"
#include "nlohmann/json.hpp"
#include "tests/testing/metrics_scrape.h"
#include "tests/testing/subprocess.h"
#include "worker_common/kv_event_publisher.h"
#include "worker_common/router_set.h"

namespace tandem {
namespace {

// One stand-in worker: its KV event log, the snapshot service on its own
// gRPC server, and its membership in the router.
struct FakeWorker {
  engine::KvEventLog log;
  std::unique_ptr<worker_common::KvSnapshotService> snapshots;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  std::unique_ptr<worker_common::RouterSet> routers;
};

int Run(const std::string& tandem, int64_t blocks, int workers, int rounds) {
  std::vector<std::unique_ptr<FakeWorker>> fleet;
  for (int w = 0; w < workers; ++w) {
    auto f = std::make_unique<FakeWorker>();
    // Distinct hashes per worker, as after a long run of distinct prompts.
    for (int64_t b = 0; b < blocks / workers; ++b) {
      f->log.Stored(static_cast<BlockHash>((static_cast<uint64_t>(w) << 40) + b + 1), engine::KvTier::kSsd);
    }
    f->snapshots =
        std::make_unique<worker_common::KvSnapshotService>(&f->log, absl::StrCat("bench-", w), nullptr);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(f->snapshots.get());
    f->server = builder.BuildAndStart();
    f->address = absl::StrCat("127.0.0.1:", port);
    fleet.push_back(std::move(f));
  }
  nlohmann::json out = {{"blocks", blocks}, {"workers", workers}, {"rounds", nlohmann::json::array()}};
  int router_port = 0;
  std::unique_ptr<testing::Subprocess> router;
  for (int round = 0; round < rounds; ++round) {
    if (router != nullptr) {
      router->Signal(SIGKILL);
      (void)router->Wait(absl::Now() + absl::Seconds(10));
    }
    const absl::Time launch = absl::Now();
    router = std::make_unique<testing::Subprocess>(
        std::vector<std::string>{tandem, "router", "--port", std::to_string(router_port), "--http-port", "0",
                                 "--heartbeat-ms", "250"});
    std::optional<std::string> line = router->ReadLine(absl::Now() + absl::Seconds(60));
    if (!line.has_value()) {
      std::cerr << "router_restart_bench: the router did not start\n";
      return 1;
    }
    const absl::Time ready = absl::Now();
    const nlohmann::json r = nlohmann::json::parse(*line);
    const std::string grpc_addr = r["grpc"], http_addr = r["http"];
    router_port = std::stoi(grpc_addr.substr(grpc_addr.rfind(':') + 1));
    const int http_port = std::stoi(http_addr.substr(http_addr.rfind(':') + 1));
    if (round == 0) {
      for (int w = 0; w < workers; ++w) {
        worker_common::RouterSet::Options o;
        o.routers = grpc_addr;
        o.membership.registration.set_worker_id(absl::StrCat("bench-", w));
        o.membership.registration.set_role(tandem::v1::WORKER_ROLE_PREFILL);
        o.membership.registration.set_address(fleet[w]->address);
        o.membership.registration.set_model_id("synthetic:tiny");
        o.membership.registration.set_block_size(16);
        fleet[w]->routers = std::make_unique<worker_common::RouterSet>(o, &fleet[w]->log);
        if (!fleet[w]->routers->Start().ok()) return 1;
      }
    }
    const double want = static_cast<double>(blocks / workers * workers);
    double have = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    while ((have = testing::ScrapeGauge(http_port, "tandem_router_kv_index_entries")) < want &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    const absl::Time full = absl::Now();
    out["rounds"].push_back({{"kind", round == 0 ? "cold start" : "kill -9 + restart"},
                             {"ready_ms", absl::ToDoubleMilliseconds(ready - launch)},
                             {"full_index_ms", absl::ToDoubleMilliseconds(full - launch)},
                             {"entries", have}});
    if (have < want) {
      std::cerr << "router_restart_bench: index reached " << have << " of " << want << " entries\n";
      return 1;
    }
  }
  for (auto& f : fleet) f->routers->Stop();
  router->Signal(SIGTERM);
  (void)router->Wait(absl::Now() + absl::Seconds(10));
  for (auto& f : fleet) f->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  CLI::App app{"Time until a (re)started router holds a full prefix index"};
  std::string tandem = "build/bin/tandem";
  int64_t blocks = 1'000'000;
  int workers = 4, rounds = 3;
  app.add_option("--tandem", tandem, "The tandem binary")->capture_default_str();
  app.add_option("--blocks", blocks, "Indexed blocks in all (split over the workers)")->capture_default_str();
  app.add_option("--workers", workers, "Stand-in workers")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--rounds", rounds, "Launches: a cold start, then kill -9 + restart")
      ->check(CLI::Range(1, 20))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return tandem::Run(tandem, blocks, workers, rounds);
}
