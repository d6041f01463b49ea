// `--config FILE` for the server commands: a JSON tandem.v1.ClusterConfig
// (proto/tandem/v1/config.proto) merged under the flags (a flag given on the
// command line wins over the file, the file over the flag's default), the
// merged values validated, and `--dry-run`, which prints the effective
// configuration as one ClusterConfig JSON line and exits 0 without serving
// (the Helm chart's tests use it to check the chart's arguments).
//
//   AddConfigFlags(cmd, &f->config, &f->dry_run);
//   cmd->callback([cmd, f] { RunConfiguredCommand(cmd, f, "router", ResolveRouterFlags, RunRouter); });
//
// Thread safety: none needed (command-line parsing, one thread).
#ifndef TANDEM_CLI_CONFIG_MERGE_H_
#define TANDEM_CLI_CONFIG_MERGE_H_

#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tandem/v1/config.pb.h"

namespace tandem::cli {

struct RouterFlags;  // cli/router_command.h
struct WorkerFlags;  // cli/worker_command.h
struct StoreFlags;   // cli/store_command.h

// Reads a ClusterConfig from the JSON file at `path`. InvalidArgument naming
// the file and the offending field (unknown field, wrong type); NotFound when
// the file cannot be read.
absl::StatusOr<tandem::v1::ClusterConfig> LoadClusterConfig(const std::string& path);

// Adds --config and --dry-run to `cmd`.
void AddConfigFlags(CLI::App* cmd, std::string* config, bool* dry_run);

// Apply --config to the flags (flags given on `cmd`'s command line win) and
// validate the result; InvalidArgument naming the field and flag.
absl::Status ResolveRouterFlags(const CLI::App& cmd, RouterFlags* flags);
// --tenant-weight's "NAME=W" values as a map; InvalidArgument names the bad
// one (W must be a positive number, NAME at most 128 bytes, no repeats).
absl::StatusOr<absl::flat_hash_map<std::string, double>> ParseTenantWeights(
    const std::vector<std::string>& values);
absl::Status ResolveWorkerFlags(const CLI::App& cmd, WorkerFlags* flags);
absl::Status ResolveStoreFlags(const CLI::App& cmd, StoreFlags* flags);

// The effective configuration as one line of ClusterConfig JSON (--dry-run).
std::string EffectiveConfigJson(const RouterFlags& flags);
std::string EffectiveConfigJson(const WorkerFlags& flags);
std::string EffectiveConfigJson(const StoreFlags& flags);

// A server subcommand's callback: resolve the flags, then print the
// effective configuration (--dry-run) or run. Exits 2 on a bad
// configuration, with run's code when it is not 0.
template <typename Flags, typename Resolve, typename Run>
void RunConfiguredCommand(const CLI::App* cmd, Flags* f, const std::string& name, Resolve resolve, Run run) {
  if (absl::Status s = resolve(*cmd, f); !s.ok()) {
    std::cerr << "tandem " << name << ": " << s.message() << "\n";
    throw CLI::RuntimeError(2);
  }
  if (f->dry_run) {
    std::cout << EffectiveConfigJson(*f) << std::endl;
    return;
  }
  const int code = run(*f);
  if (code != 0) throw CLI::RuntimeError(code);
}

}  // namespace tandem::cli

#endif  // TANDEM_CLI_CONFIG_MERGE_H_
