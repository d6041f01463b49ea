// `tandem generate`: run a model on this machine and print the continuation.
#ifndef TANDEM_CLI_GENERATE_COMMAND_H_
#define TANDEM_CLI_GENERATE_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"

namespace tandem::cli {

struct GenerateFlags {
  std::string model = "synthetic:tiny";
  std::string prompt = "Once upon a time";
  int32_t max_tokens = 64;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  bool json = false;
  int32_t threads = 0;
};

// Adds the flags to `cmd` and makes it run RunGenerate.
void RegisterGenerate(CLI::App* cmd, GenerateFlags* flags);

// Returns the process exit code: 0 ok, 1 a runtime error (printed to stderr).
int RunGenerate(const GenerateFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_GENERATE_COMMAND_H_
