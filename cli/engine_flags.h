// The flags that size a batching engine, shared by `generate --prompts-file`
// and the two worker subcommands so they read and validate alike.
#ifndef TANDEM_CLI_ENGINE_FLAGS_H_
#define TANDEM_CLI_ENGINE_FLAGS_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"

namespace tandem::cli {

inline void AddEngineFlags(CLI::App* cmd, int32_t* block_size, int32_t* kv_cache_mb,
                           int32_t* max_running, int32_t* max_step_tokens,
                           const std::string& block_size_help = "Tokens per KV block") {
  cmd->add_option("--block-size", *block_size, block_size_help)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--kv-cache-mb", *kv_cache_mb, "KV cache size in MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-running", *max_running, "Most sequences in the running batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-step-tokens", *max_step_tokens, "Most tokens in one forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

}  // namespace tandem::cli

#endif  // TANDEM_CLI_ENGINE_FLAGS_H_
