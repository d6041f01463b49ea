// `tandem up`: a whole local cluster (router, prefill and decode workers,
// and with --store a shared KV store) in one command, each a child process
// of this binary.
//
//   tandem up --model synthetic:tiny --prefill 1 --decode 1 --port 0
//   tandem up --store --kv-ssd-dir /nvme/tandem ...  (+ `tandem store`)
//
// stdout carries one JSON line per event, flushed as it happens:
//   - each child's ready line as the child prints it once it serves
//     ({"role":"router","pid":N,"grpc":"host:port",...}), router first,
//     then the store (with --store; it prints its line once registered with
//     the router), then the workers;
//   - {"event":"ready","router":"host:port","http":...,"store":"host:port"}
//     once every child is ready ("store" empty without --store);
//   - {"event":"exited","role":"decode","pid":N,"status":"signal 9"} for each
//     child that dies while the cluster serves. A dead worker is not
//     restarted (the router takes it out of rotation); a dead router stops
//     the cluster (exit 1).
// Everything else (children's stderr included) goes to stderr.
// SIGINT/SIGTERM: SIGTERM to every child, SIGKILL to any still alive after
// 5 s, all reaped, exit 0. Children get PR_SET_PDEATHSIG(SIGTERM), so they do
// not outlive `up` even when it is SIGKILLed.
//
// The Supervisor below is the process-management half, usable with any argv
// (tests drive it with /bin/sh children).
#ifndef TANDEM_CLI_UP_COMMAND_H_
#define TANDEM_CLI_UP_COMMAND_H_

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace tandem::cli {

struct UpFlags {
  std::string model = "synthetic:tiny";
  int32_t prefill = 1;   // prefill workers
  int32_t decode = 1;    // decode workers
  int32_t port = 50051;  // router gRPC port; 0 = ephemeral
  std::string host = "127.0.0.1";
  int32_t threads = 1;  // CPU threads per worker
  int32_t ready_timeout_s = 60;
  // --config FILE (tandem.v1.ClusterConfig JSON): passed to every child; its
  // router.host/port/model and worker.threads also set the flags above that
  // were not given on the command line. Workers always get --port 0.
  std::string config;
  // --tls-cert/--tls-key/--tls-ca, passed to every child (cli/tls.h).
  std::string tls_cert, tls_key, tls_ca;
  // Passed to the router when given (empty / negative: the router's default
  // or the config file's): --policy, --slo-ttft-ms, --slo-tpot-ms.
  std::string policy;
  double slo_ttft_ms = -1;
  double slo_tpot_ms = -1;
  // --max-queued-prefills for the router when >= 0 (-1: the router's default, 64).
  int32_t max_queued_prefills = -1;
  // Router flow control (tandem router --help): -1 / empty: the router's default.
  int32_t max_inflight_prefills = -1;
  int32_t queue_ttl_ms = -1;
  double decode_tpot_limit_ms = -1;
  std::vector<std::string> tenant_weights;
  // --stream-stall-timeout-ms for the router when >= 0 (-1: its default).
  int32_t stream_stall_timeout_ms = -1;
  int32_t http_port = -1;             // --http-port for the router; 0: any free port; -1: off
  std::vector<std::string> api_keys;  // --api-key, passed to the router
  // Passed to every worker when > 0: --kv-cache-mb, --block-size,
  // --max-running.
  int32_t kv_cache_mb = 0;
  int32_t block_size = 0;
  int32_t max_running = 0;
  // --device for every worker; --kv-dtype for every worker and the store,
  // "auto" resolved once for the whole cluster (bf16 when the workers run
  // on CUDA, else f32) so the store's blocks match the workers'.
  std::string device = "auto";
  std::string kv_dtype = "auto";
  // KV tiers on every worker (cli/engine_flags.h): --kv-dram-bytes and
  // --kv-ssd-bytes passed when > 0; --kv-ssd-dir DIR gives worker i of a
  // role --kv-ssd-path DIR/<role>-<i> (so a restarted cluster finds its
  // blocks again); --kv-prefetch passed when given.
  int64_t kv_dram_bytes = 0;
  int64_t kv_ssd_bytes = 0;
  std::string kv_ssd_dir;
  std::string kv_prefetch;  // "", "true" or "false"
  // --store: one shared KV store (`tandem store`, cli/store_command.h),
  // started after the router and registered with it; every worker gets
  // --kv-store ADDR. The store's tiers: DRAM of --store-dram-bytes
  // (default 256 MiB), SSD at
  // --store-ssd-dir, else DIR/store under --kv-ssd-dir, else none. Workers
  // need a DRAM tier in front of the store: without --kv-dram-bytes they get
  // kDefaultStoreWorkerDramBytes. The store's block size is --block-size (or
  // the config file's worker.block_size), else the workers' default 16.
  bool store = false;
  int64_t store_dram_bytes = int64_t{256} << 20;
  std::string store_ssd_dir;
};

// Workers' --kv-dram-bytes under `up --store` when --kv-dram-bytes is not
// given: 64 MiB.
inline constexpr int64_t kDefaultStoreWorkerDramBytes = int64_t{64} << 20;

// Adds the flags to `cmd` and makes it run RunUp (after applying --config).
void RegisterUp(CLI::App* cmd, UpFlags* flags);

// Returns the process exit code: 0 after a clean stop on SIGINT/SIGTERM, 1 a
// runtime error (a child failed to start or the router died; on stderr).
int RunUp(const UpFlags& flags);

// ---------------------------------------------------------------------------
// Internals, exposed for tests.

// Parses a child's ready line: a JSON object with "grpc" (a string) and, when
// present, "role" equal to `role`. Fills in "role" and "pid" when the line
// lacks them; keeps every field it has.
//   NotFound: not a JSON object at all (a stray line, not a ready line).
//   InvalidArgument: a JSON object that breaks the contract.
absl::StatusOr<nlohmann::ordered_json> ParseReadyLine(std::string_view line, std::string_view role,
                                                      pid_t pid);

// "exit 1", "signal 9", from a waitpid status.
std::string DescribeWaitStatus(int status);

// An address a client can dial for a server that reports `address`: a
// wildcard host (0.0.0.0, ::, [::]) becomes the loopback address.
std::string DialableAddress(std::string_view address);

struct ChildSpec {
  // "router", "store", "prefill" or "decode": the role its ready line must
  // name.
  std::string role;
  // For messages: "router", "prefill 0", "decode 1".
  std::string name;
  // Executable and arguments; argv[0] is what ps shows.
  std::string executable;
  std::vector<std::string> argv;
  // When an essential child dies after startup, Watch returns an error.
  bool essential = false;
};

// Owns a set of child processes: spawns them with stdout on a pipe, waits for
// their ready lines, reports their deaths, stops and reaps them.
//
// Signals: Create blocks SIGINT, SIGTERM and SIGCHLD in the calling thread
// and reads them through a signalfd; the destructor restores the mask. So the
// process must not have other threads that could take those signals, and
// every call must come from the thread that called Create (children get
// PR_SET_PDEATHSIG, which fires when the thread that forked them exits).
// Children start with an empty signal mask and default dispositions.
// Not thread-safe.
class Supervisor {
 public:
  struct Options {
    // Ready lines and events, one JSON line each, flushed. Borrowed; must
    // outlive the Supervisor. Default: std::cout.
    std::ostream* out = nullptr;
    // Prefix of stderr messages. Default: "tandem up".
    std::string log_prefix = "tandem up";
    // How long Stop waits after SIGTERM before SIGKILL. Default: 5 s.
    absl::Duration stop_timeout = absl::Seconds(5);
  };

  static absl::StatusOr<std::unique_ptr<Supervisor>> Create(const Options& options);
  // Stops (as Stop) and reaps any child still running; restores the signal
  // mask.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Spawns every child in `specs` at once and waits until each has printed
  // its ready line, printing each line (ParseReadyLine) as it arrives.
  // Returns the lines in `specs` order.
  //   Cancelled: SIGINT or SIGTERM arrived (children left running; call Stop).
  //   DeadlineExceeded: `deadline` passed; the message names who is not ready.
  //   Unavailable / InvalidArgument / Internal: a child exited, printed a bad
  //   ready line, or could not be spawned; the message names it.
  absl::StatusOr<std::vector<nlohmann::ordered_json>> StartAndWaitReady(const std::vector<ChildSpec>& specs,
                                                                        absl::Time deadline);

  // Serves: reports each child death ({"event":"exited",...} on out, a line
  // on stderr) and forwards stray stdout lines from children to stderr.
  //   Ok: SIGINT or SIGTERM arrived.
  //   DeadlineExceeded: `deadline` passed (tests; the server runs forever).
  //   Unavailable: an essential child died (already reported).
  absl::Status Watch(absl::Time deadline = absl::InfiniteFuture());

  // SIGTERM to every live child, waits up to stop_timeout for them to exit,
  // SIGKILL to the rest, reaps all. Another SIGINT/SIGTERM meanwhile skips
  // the rest of the wait. Returns once every child is reaped.
  void Stop();

  // Pids of children not yet reaped.
  std::vector<pid_t> live_pids() const;

 private:
  struct Child;
  explicit Supervisor(const Options& options);

  absl::Status Spawn(const ChildSpec& spec);
  // Waits for a signal or child output until `deadline`; returns true when
  // SIGINT/SIGTERM arrived. Reaps exited children (Child::exited) and splits
  // output into lines (Child::lines).
  bool PollOnce(absl::Time deadline);
  void ReadOutput(Child& c);
  void ReapExited();
  // Passes lines a child printed besides its ready line on to stderr.
  void ForwardStrayLines(Child& c);
  void PrintLine(const nlohmann::ordered_json& j);

  Options options_;
  int signal_fd_ = -1;
  int dev_null_ = -1;
  bool mask_saved_ = false;
  int stop_signals_ = 0;  // SIGINT/SIGTERM received so far
  sigset_t old_mask_;
  std::vector<std::unique_ptr<Child>> children_;
};

}  // namespace tandem::cli

#endif  // TANDEM_CLI_UP_COMMAND_H_
