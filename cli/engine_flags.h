// The flags that size a batching engine, shared by `generate --prompts-file`
// and the two worker subcommands so they read and validate alike.
#ifndef TANDEM_CLI_ENGINE_FLAGS_H_
#define TANDEM_CLI_ENGINE_FLAGS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "kernels/backend_factory.h"
#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"
#include "model/model_config.h"

namespace tandem::cli {

inline void AddEngineFlags(CLI::App* cmd, int32_t* block_size, int32_t* kv_cache_mb, int32_t* max_running,
                           int32_t* max_step_tokens,
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
  cmd->add_option("--max-step-tokens", *max_step_tokens,
                  "Most tokens in one forward pass; 0: per backend (256 on CPU, 512 on a GPU)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

// Which kernel backend runs the model (kernels/backend_factory.h).
struct DeviceFlags {
  std::string device = "auto";    // --device cpu|cuda|auto|cpu-guarded
  bool cuda_fp32 = false;         // --cuda-fp32
  std::string kv_dtype = "auto";  // --kv-dtype f32|bf16|f16|auto
};

inline void AddDeviceFlags(CLI::App* cmd, DeviceFlags* f) {
  cmd->add_option("--device", f->device,
                  "Kernel backend: cpu, cuda, or auto (cuda when a GPU is present); cpu-guarded is the CPU "
                  "backend with its memory unreadable outside backend calls (the GPU's data path, on a CPU)")
      ->capture_default_str()
      ->envname("TANDEM_DEVICE")
      ->check(CLI::IsMember({"auto", "cpu", "cuda", "cpu-guarded"}));
  cmd->add_option(
         "--kv-dtype", f->kv_dtype,
         "KV cache element type: f32, bf16, f16, or auto (bf16 on CUDA, f32 on the CPU); the same on "
         "every worker and store of a cluster")
      ->capture_default_str()
      ->envname("TANDEM_KV_DTYPE")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16"}));
  cmd->add_flag("--cuda-fp32", f->cuda_fp32,
                "CUDA: F32 weights and FP32 GEMMs instead of BF16 (exact checks)");
}

inline absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeBackend(const DeviceFlags& f, int32_t threads) {
  return kernels::CreateBackend({.device = f.device, .num_threads = threads, .cuda_fp32 = f.cuda_fp32});
}

// KV tiers below the engine's pool (kvstore/): off unless --kv-dram-bytes > 0.
struct KvTierFlags {
  int64_t dram_bytes = 0;
  std::string ssd_path;
  int64_t ssd_bytes = int64_t{10} << 30;
};

inline void AddKvTierFlags(CLI::App* cmd, KvTierFlags* f) {
  cmd->add_option("--kv-dram-bytes", f->dram_bytes,
                  "Host-memory KV tier below the pool, in bytes; 0 = no tiers")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-ssd-path", f->ssd_path,
                  "RocksDB directory of the SSD KV tier (needs --kv-dram-bytes); empty = no SSD tier");
  cmd->add_option("--kv-ssd-bytes", f->ssd_bytes, "SSD KV tier budget in bytes")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

// The TieredStore the flags ask for, sized for `config`'s blocks of
// `block_size` tokens of `kv_dtype`; null when --kv-dram-bytes is 0. `remote`
// (borrowed, may be null) is the shared store below the local tiers.
inline absl::StatusOr<std::unique_ptr<kvstore::TieredStore>> MakeKvTiers(
    const KvTierFlags& f, const model::ModelConfig& config, int32_t block_size, DType kv_dtype,
    std::function<void(const kvstore::TierEvent&)> on_event = nullptr,
    kvstore::RemoteTier* remote = nullptr) {
  if (f.dram_bytes <= 0) {
    if (!f.ssd_path.empty()) return absl::InvalidArgumentError("--kv-ssd-path needs --kv-dram-bytes");
    return std::unique_ptr<kvstore::TieredStore>();
  }
  kvstore::TieredStore::Options options;
  options.model_id = config.model_id;
  options.block_tokens = block_size;
  options.payload_bytes = config.KvLayoutFor(block_size, kv_dtype).BlockBytes();
  options.dram_bytes = static_cast<size_t>(f.dram_bytes);
  options.ssd_path = f.ssd_path;
  options.ssd_bytes = static_cast<size_t>(f.ssd_bytes);
  options.on_event = std::move(on_event);
  options.remote = remote;
  return kvstore::TieredStore::Create(options);
}

}  // namespace tandem::cli

#endif  // TANDEM_CLI_ENGINE_FLAGS_H_
