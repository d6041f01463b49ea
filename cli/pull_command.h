// `tandem pull`: download a model from the Hugging Face hub into the shared
// Hugging Face cache (hub/hub.h) and print its snapshot directory.
//
//   tandem pull hf://HuggingFaceTB/SmolLM2-135M
//   tandem pull hf://org/repo-GGUF@main --include '*Q4_K_M.gguf' --cache-dir /data/hf
//
// stdout: the snapshot directory (one line) on success. stderr: progress (a
// bar on a terminal, a line per file otherwise) and errors. Environment:
// HF_TOKEN, HF_ENDPOINT, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE.
#ifndef TANDEM_CLI_PULL_COMMAND_H_
#define TANDEM_CLI_PULL_COMMAND_H_

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace tandem::cli {

struct PullFlags {
  std::string spec;                  // hf://ORG/REPO[/FILE][@REVISION]
  std::string cache_dir;             // empty: the Hugging Face default
  std::vector<std::string> include;  // globs replacing the default file rule
};

// Adds the flags to `cmd` and makes it run RunPull.
void RegisterPull(CLI::App* cmd, PullFlags* flags);

// Returns the process exit code: 0 ok, 1 a runtime error (printed to stderr).
int RunPull(const PullFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_PULL_COMMAND_H_
