// `tandem store`: the shared KV store server of a node or cluster. It holds
// KV blocks in DRAM and SSD tiers (kvstore/tiered_store.h) for one model,
// serves tandem.v1.KvStore (control over gRPC; block bytes over UCX into
// and out of its registered DRAM pool and staging slots with --ucx, the
// default, or inside the gRPC messages for clients without UCX; see
// kvstore/store_service.h), registers with the router as
// WORKER_ROLE_STORE and publishes KV events (tiers DRAM and SSD), so the
// router's index lists it as a holder. Workers started with
// `--kv-store ADDR` fall through to it when their own tiers miss and offer it
// the blocks their pools evict.
//
//   tandem store --router 127.0.0.1:50051 --model M --block-size 16
//       --dram-bytes 1073741824 --ssd-path /nvme/tandem-store  (one line)
//
// On restart with the same --ssd-path the blocks on SSD are served again
// and announced in the store's KV snapshot. With --metrics-port it serves
// /metrics (tiers, SSD health), /health and /ready (its detail says when the
// SSD tier turned read-only or was quarantined at start). Prints one JSON
// ready line ({"role":"store","grpc":...,"worker_id":...,
// "ssd_blocks_reopened":N,"metrics":"HOST:PORT"}) once registered; stops
// cleanly on SIGINT/SIGTERM.
#ifndef TANDEM_CLI_STORE_COMMAND_H_
#define TANDEM_CLI_STORE_COMMAND_H_

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/tls.h"

namespace tandem::cli {

struct StoreFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  std::string model = "synthetic:tiny";
  int32_t block_size = 16;                    // must equal the workers'
  std::string kv_dtype = "f32";               // --kv-dtype: must equal the workers'
  int64_t dram_bytes = int64_t{1} << 30;      // --dram-bytes
  std::string ssd_path;                       // --ssd-path; empty: DRAM only
  int64_t ssd_bytes = int64_t{10} << 30;      // --ssd-bytes
  std::string store_id;                       // default: store-HOST-PID
  bool ucx = true;                            // --ucx: serve the UCX data path
  int64_t staging_bytes = int64_t{64} << 20;  // --staging-bytes
  int32_t metrics_port = -1;                  // --metrics-port: /metrics, /health, /ready; -1: off
  TlsFlags tls;
  std::string config;    // --config FILE (ClusterConfig's store and tls sections); empty: none
  bool dry_run = false;  // --dry-run
};

void RegisterStore(CLI::App* cmd, StoreFlags* flags);
int RunStore(const StoreFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_STORE_COMMAND_H_
