// The one `tandem` binary. Subcommands:
//   generate   run a model locally and print the continuation
//   router, prefill, decode, store, up, bench   (coming; see `tandem --help`)
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "cli/generate_command.h"

namespace {

// Subcommands that later issues add; listed now so users see the whole shape.
struct PlannedCommand {
  const char* name;
  const char* description;
};
constexpr PlannedCommand kPlanned[] = {
    {"router", "KV-aware router: gRPC and OpenAI HTTP front for a cluster"},
    {"prefill", "Prefill worker: computes prompt KV and sends it to decode workers over UCX"},
    {"decode", "Decode worker: receives KV and streams tokens"},
    {"store", "Shared KV store server (DRAM + SSD tiers)"},
    {"up", "Start a local cluster (router, prefill and decode workers) in one command"},
    {"bench", "Replay a load trace against a cluster and report TTFT/TPOT"},
};

}  // namespace

int main(int argc, char** argv) {
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions{});

  CLI::App app{"Tandem: LLM serving with disaggregated prefill and decode"};
  app.require_subcommand(1);
  app.fallthrough(false);

  tandem::cli::GenerateFlags generate_flags;
  tandem::cli::RegisterGenerate(
      app.add_subcommand("generate", "Generate text from a prompt with a local model (CPU)"),
      &generate_flags);

  for (const PlannedCommand& p : kPlanned) {
    CLI::App* cmd = app.add_subcommand(p.name, std::string("[not yet available] ") + p.description);
    cmd->allow_extras();
    const std::string name = p.name;
    cmd->callback([name] {
      std::cerr << "tandem " << name << ": not yet available in this build\n";
      throw CLI::RuntimeError(2);
    });
  }

  CLI11_PARSE(app, argc, argv);
  return 0;
}
