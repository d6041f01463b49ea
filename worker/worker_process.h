// One prefill or decode worker, assembled: the model and its backend, the
// engine and the thread that runs it, the KV tiers (DRAM, SSD, the shared
// store's client) and their prefetcher, the UCX transfer engine, the worker's
// gRPC services, its /metrics server and its membership in the router.
// `tandem prefill` and `tandem decode` (cli/worker_command.cc) only map flags
// onto Options; a test can run several workers in one binary on 127.0.0.1:0.
//
//   WorkerProcess::Options options;
//   options.role = WorkerProcess::Role::kDecode;
//   options.model = "synthetic:tiny";
//   options.router = "";          // no router: the test calls the worker directly
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<WorkerProcess> worker, WorkerProcess::Create(options));
//   auto stub = tandem::v1::DecodeWorker::NewStub(grpc::CreateChannel(
//       worker->info().address, grpc::InsecureChannelCredentials()));
//   std::thread serving([&] { (void)worker->Run(); });
//   ...
//   worker->Stop();               // from any thread, e.g. a signal watcher
//   serving.join();
//
// Create returns a worker that is serving: its gRPC server (and metrics
// server) listen, and with a router it is registered and heartbeating. Run
// blocks until Stop, then shuts down in order: leaves the router, stops the
// servers (in-flight RPCs end), then the engine thread. Destroying a worker
// without Run shuts it down the same way.
//
// Where things happen (for a reader following a request): the transfer engine
// is created in StartTransferAndStore, the decode worker's KV pool is
// registered with it in MakeService, and the services reach the engine
// thread through the EngineRunner built in StartEngine.
//
// Thread safety: Stop and info() may be called from any thread; Run from one
// thread, once; the destructor after Run returned (or without Run).
#ifndef TANDEM_WORKER_WORKER_PROCESS_H_
#define TANDEM_WORKER_WORKER_PROCESS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/dtype.h"
#include "worker_common/server_interceptors.h"

namespace grpc {
class Channel;
class Server;
class ServerCredentials;
class Service;
}  // namespace grpc

namespace tandem {
class MetricsRegistry;
namespace model {
struct LoadedModel;
class LlamaModel;
}  // namespace model
namespace kernels {
class Backend;
}  // namespace kernels
namespace engine {
class Engine;
class EngineRunner;
class KvEventLog;
}  // namespace engine
namespace transfer {
class TransferEngine;
}  // namespace transfer
namespace kvstore {
class Prefetcher;
class StoreClient;
class TieredStore;
}  // namespace kvstore
namespace http {
class Server;
}  // namespace http
namespace decode_worker {
class LandingArea;
class DecodeService;
}  // namespace decode_worker
namespace prefill_worker {
class PrefillService;
}  // namespace prefill_worker
}  // namespace tandem

namespace tandem::worker_common {
class KvSnapshotService;
}  // namespace tandem::worker_common

namespace tandem::worker {

using worker_common::KvSnapshotService;
using worker_common::ServerInterceptorFactories;

class WorkerProcess {
 public:
  enum class Role { kPrefill, kDecode };

  struct Options {
    // Which service the worker serves. Default: kDecode.
    Role role = Role::kDecode;
    // Model spec (GGUF path, Hugging Face directory or synthetic:NAME); must
    // be the router's. Default: "synthetic:tiny".
    std::string model = "synthetic:tiny";
    // Address the gRPC (and metrics) server binds and the router is told.
    // Default: "127.0.0.1".
    std::string host = "127.0.0.1";
    // gRPC port; 0: any free port (info().grpc_port). Default: 0.
    int32_t port = 0;
    // Id registered with the router and used in KV events. Default: ""
    // (ROLE-HOST-PID, e.g. "decode-127.0.0.1-4242").
    std::string worker_id;

    // Kernel backend (kernels/backend_factory.h): "cpu", "cuda", "auto", or
    // "cpu-guarded" (the device data path on a CPU: the pool is unreadable
    // outside backend calls, so KV moves through pinned staging as on a
    // GPU). Default: "cpu".
    std::string device = "cpu";
    // The KV pool's element type: "f32", "bf16", "f16" or "auto"
    // (kernels::ResolveKvDType). Default: "auto".
    std::string kv_dtype = "auto";
    // CUDA: F32 weights and FP32 GEMMs. Default: false.
    bool cuda_fp32 = false;
    // CPU threads of the engine; 0: one per core. Default: 1.
    int32_t threads = 1;

    // Tokens per KV block (the same on every worker). Default: 16.
    int32_t block_size = 16;
    // The engine's KV pool. Default: 256 MiB.
    size_t kv_cache_bytes = size_t{256} << 20;
    // Most sequences in the running batch. Default: 64.
    int32_t max_running = 64;
    // Most tokens in one forward pass; 0: engine::DefaultMaxStepTokens for
    // the backend (256 on CPU, 512 on a GPU). Default: 0.
    int32_t max_step_tokens = 0;

    // Host-memory KV tier below the pool; 0: no tiers. Default: 0.
    int64_t kv_dram_bytes = 0;
    // RocksDB directory of the SSD tier (needs kv_dram_bytes); "": none.
    // Default: "".
    std::string kv_ssd_path;
    // SSD tier budget. Default: 10 GiB.
    int64_t kv_ssd_bytes = int64_t{10} << 30;
    // Promote a request's SSD or store blocks into DRAM when it arrives
    // (with an SSD tier or a store). Default: true.
    bool kv_prefetch = true;
    // The shared KV store's host:port (needs kv_dram_bytes); "": none.
    // Default: "".
    std::string kv_store;
    // How block bytes move to and from kv_store: "ucx" or "grpc".
    // Default: "ucx".
    std::string kv_store_transport = "ucx";
    // Pinned host memory for KV moving in and out of a pool the host may
    // not touch (--device cuda / cpu-guarded): a prefill worker's send
    // staging, a decode worker's landing slots (at most the pool's size).
    // Unused on the plain CPU backend. Default: 64 MiB.
    size_t kv_staging_bytes = size_t{64} << 20;
    // Prefill workers: send the KV blocks each prefill chunk completes while
    // the next chunk computes (prompts longer than max_step_tokens), instead
    // of all of them after the last chunk. Default: true.
    bool kv_stream_chunks = true;

    // HTTP port of /metrics and /health; 0: any free port; -1: none.
    // Default: -1.
    int32_t metrics_port = -1;
    // Where the gauges are recorded and /metrics reads. Default: null
    // (DefaultMetricsRegistry(); give each worker its own in a test that
    // runs several).
    MetricsRegistry* metrics = nullptr;

    // The router replicas: host:port, a comma-separated list, or a DNS name
    // standing for all its addresses (worker_common/router_set.h); "": no
    // membership (nothing registers or heartbeats; a test wires the worker
    // itself). Default: "".
    std::string router;
    // The gRPC server's credentials. Default: null (plaintext).
    std::shared_ptr<grpc::ServerCredentials> server_credentials;
    // Makes the channels to the router and the store. Default: empty
    // (plaintext channels).
    std::function<std::shared_ptr<grpc::Channel>(const std::string& target)> channel_factory;
    // Interceptors on the worker's gRPC server (grpc_server.h); tests inject
    // faults with them. Default: empty (none).
    ServerInterceptorFactories server_interceptors;
  };

  // What the worker serves, for its ready line and for tests. Fixed once
  // Create returns.
  struct Info {
    std::string role;       // "prefill" or "decode"
    std::string worker_id;  // as registered
    std::string model_id;
    std::string address;  // host:port of the gRPC server (the bound port)
    int32_t grpc_port = 0;
    int32_t metrics_port = -1;  // the bound port; -1: no metrics server
    int32_t kv_blocks = 0;      // blocks in the engine's pool
    bool kv_tiers = false;
    int64_t kv_ssd_blocks_reopened = 0;  // found on the SSD tier at start
    bool kv_prefetch = false;
    std::string kv_store_transport;  // "ucx", "grpc", or "" without a store
    std::string device;              // the backend's name: "cpu", "cuda", "cpu-guarded"
    std::string kv_dtype;            // the pool's element type: "F32", "BF16", "F16"
  };

  // Builds and starts the worker. Errors name the part that failed
  // ("cannot load model 'M': ...", "transfer engine: ...", "KV tiers: ...",
  // "cannot listen on H:P", "cannot register with router R: ...").
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Create(Options options);

  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  // Serves until Stop, then shuts down (see above). OK unless shutting down
  // failed.
  absl::Status Run();
  // Makes Run return. Thread-safe, idempotent, never blocks for long (it
  // only notifies), so a signal watcher may call it.
  void Stop();

  const Info& info() const { return info_; }

  // The engine thread, for tests and tools that must act on it directly
  // (tests/request_path_test.cc holds it to play a stuck device). Valid
  // until the worker is destroyed.
  engine::EngineRunner& engine_runner() { return *runner_; }

 private:
  explicit WorkerProcess(Options options);

  // The steps of Create, in order.
  absl::Status LoadModelAndBackend();
  absl::Status StartTransferAndStore();
  absl::Status BuildTiers();
  absl::Status StartPrefetcher();
  absl::Status StartEngine();
  absl::Status StartServices();
  absl::Status StartMetricsServer();
  absl::Status JoinRouter();

  // The role's service, borrowing the runner (and for decode, the KV pool
  // registered with the transfer engine).
  absl::StatusOr<grpc::Service*> MakeService();
  // Leaves the router, stops the servers and the engine thread; once.
  void Shutdown();
  // Engine thread, each tick: a failed device makes the worker unhealthy.
  void CheckDevice();

  const Options options_;
  MetricsRegistry& metrics_;
  Info info_;

  // Declared in the order they are built; destroyed in reverse, so each
  // part outlives those that borrow it.
  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  DType kv_dtype_ = DType::kF32;  // resolved from Options::kv_dtype
  std::unique_ptr<model::LlamaModel> llama_;
  std::unique_ptr<engine::KvEventLog> kv_events_;  // the engine and tiers append until destroyed
  std::unique_ptr<transfer::TransferEngine> transfer_;
  std::unique_ptr<kvstore::StoreClient> store_client_;  // its landing slots are transfer_'s
  std::unique_ptr<kvstore::TieredStore> tiers_;         // calls store_client_
  std::unique_ptr<kvstore::Prefetcher> prefetcher_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::EngineRunner> runner_;
  // A decode worker's landing slots when the pool is not host memory
  // (registered with transfer_; reservations of decode_service_ hold slots).
  std::unique_ptr<decode_worker::LandingArea> landing_;
  // The decode service as the engine thread's tick sees it (reservations
  // expire there); read and written only on the engine thread.
  decode_worker::DecodeService* decode_on_engine_thread_ = nullptr;
  prefill_worker::PrefillService* prefill_on_engine_thread_ = nullptr;  // likewise
  std::unique_ptr<decode_worker::DecodeService> decode_service_;
  std::unique_ptr<prefill_worker::PrefillService> prefill_service_;
  std::unique_ptr<KvSnapshotService> snapshot_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<http::Server> metrics_server_;
  struct RouterLink;  // the registry stub and the membership that calls it
  std::unique_ptr<RouterLink> router_link_;

  absl::Mutex mu_;
  // The backend's sticky error once the engine thread saw it ("": healthy),
  // and the server whose health service then says NOT_SERVING.
  std::string device_error_ ABSL_GUARDED_BY(mu_);
  grpc::Server* grpc_server_for_health_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem::worker

#endif  // TANDEM_WORKER_WORKER_PROCESS_H_
