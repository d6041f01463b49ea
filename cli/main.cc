// The one `tandem` binary. Subcommands:
//   generate   run a model locally and print the continuation
//   router, prefill, decode, up   the disaggregated cluster
//   bench                        replay a load trace against a cluster
//   store                        the shared KV store server
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/synchronization/mutex.h"
#include "cli/bench_command.h"
#include "cli/generate_command.h"
#include "cli/pull_command.h"
#include "cli/router_command.h"
#include "cli/store_command.h"
#include "cli/up_command.h"
#include "cli/worker_command.h"
#include "common/logging.h"

int main(int argc, char** argv) {
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions{});
  tandem::InitLogging(argv[0]);  // libraries LOG to stderr; no log files
  // Debian's Abseil is built without NDEBUG, so absl::Mutex runs its
  // lock-order (deadlock) detection on every acquisition: a global graph
  // under one spinlock, 4.3% of the router's CPU under load (`perf`, 1
  // prefill + 1 decode at ~110 req/s served) and a point of contention
  // between its threads. The tests keep it (their binaries do not run this);
  // TANDEM_MUTEX_DEADLOCK_DETECTION=1 keeps it for a debugging run.
  if (const char* keep = std::getenv("TANDEM_MUTEX_DEADLOCK_DETECTION"); keep == nullptr || keep[0] != '1') {
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  }

  CLI::App app{"Tandem: LLM serving with disaggregated prefill and decode"};
  app.require_subcommand(1);
  app.fallthrough(false);

  tandem::cli::GenerateFlags generate_flags;
  tandem::cli::RegisterGenerate(
      app.add_subcommand("generate", "Generate text from a prompt with a local model (CPU)"),
      &generate_flags);

  tandem::cli::UpFlags up_flags;
  tandem::cli::RegisterUp(
      app.add_subcommand("up", "Start a local cluster (router, prefill and decode workers) in one command"),
      &up_flags);

  tandem::cli::RouterFlags router_flags;
  tandem::cli::RegisterRouter(
      app.add_subcommand("router", "Router: the cluster's gRPC front; routes requests to workers"),
      &router_flags);
  tandem::cli::WorkerFlags prefill_flags, decode_flags;
  tandem::cli::RegisterPrefill(
      app.add_subcommand("prefill",
                         "Prefill worker: computes prompt KV and writes it to decode workers over UCX"),
      &prefill_flags);
  tandem::cli::RegisterDecode(
      app.add_subcommand("decode", "Decode worker: receives KV (or prefills itself) and streams tokens"),
      &decode_flags);

  tandem::cli::PullFlags pull_flags;
  tandem::cli::RegisterPull(
      app.add_subcommand(
          "pull", "Download a model from the Hugging Face hub (hf://ORG/REPO[@REV]) into the HF cache"),
      &pull_flags);

  tandem::cli::BenchFlags bench_flags;
  tandem::cli::RegisterBench(
      app.add_subcommand("bench", "Replay a load trace against a cluster and report TTFT/TPOT/goodput"),
      &bench_flags);

  tandem::cli::StoreFlags store_flags;
  tandem::cli::RegisterStore(
      app.add_subcommand(
          "store", "Shared KV store server (DRAM + SSD tiers) that workers put blocks into and read from"),
      &store_flags);

  CLI11_PARSE(app, argc, argv);
  return 0;
}
