// `tandem generate`: run a model on this machine and print the continuation.
#ifndef TANDEM_CLI_GENERATE_COMMAND_H_
#define TANDEM_CLI_GENERATE_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/engine_flags.h"

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
  DeviceFlags device;  // --device, --cuda-fp32 (cli/engine_flags.h)
  // Batch mode: one JSON object per line ({"prompt": ..., optional
  // "max_tokens", "temperature", "top_k", "top_p", "seed"}), run concurrently
  // through one engine; one JSON line out per prompt, in input order.
  std::string prompts_file;
  int32_t block_size = 16;
  int32_t kv_cache_mb = 256;
  int32_t max_running = 64;
  int32_t max_step_tokens = 0;  // 0: per backend (engine::DefaultMaxStepTokens)
  KvTierFlags kv_tiers;         // --kv-dram-bytes, --kv-ssd-path, --kv-ssd-bytes (--prompts-file)
  // Remote mode (cli/remote_generate.h): the router's host:port; empty = run
  // the model locally.
  std::string remote;
  // Remote mode: deadline of the whole call, seconds.
  int32_t timeout_s = 300;
  // Remote mode, TLS (all PEM files; empty: off): the CA that signs the
  // router's certificate (setting it turns TLS on), and this client's
  // certificate and key for a router that requires mutual TLS.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Whether --model was given (remote mode sends it only then).
  bool model_given = false;
};

// Adds the flags to `cmd` and makes it run RunGenerate.
void RegisterGenerate(CLI::App* cmd, GenerateFlags* flags);

// Returns the process exit code: 0 ok, 1 a runtime error (printed to stderr).
int RunGenerate(const GenerateFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_GENERATE_COMMAND_H_
