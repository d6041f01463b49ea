// The router's view of its workers: who registered, their address and role,
// when they last beat, and their load. Picks workers round-robin among the
// healthy ones (the KV-aware cost model replaces the pick later).
//
// A worker is healthy when its last heartbeat is younger than the heartbeat
// deadline (interval x misses_allowed) and no call to it failed since then.
//
// Thread safety: all methods are safe to call from any thread.
#ifndef TANDEM_ROUTER_WORKER_REGISTRY_H_
#define TANDEM_ROUTER_WORKER_REGISTRY_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {

struct WorkerHandle {
  std::string id;
  tandem::v1::WorkerRole role = tandem::v1::WORKER_ROLE_UNSPECIFIED;
  std::string address;
  std::shared_ptr<tandem::v1::DecodeWorker::Stub> decode;    // decode workers
  std::shared_ptr<tandem::v1::PrefillWorker::Stub> prefill;  // prefill workers
};

class WorkerRegistry {
 public:
  struct Options {
    // Default: 500 ms.
    absl::Duration heartbeat_interval = absl::Milliseconds(500);
    // Heartbeats a worker may miss before it leaves the rotation. Default: 3.
    int misses_allowed = 3;
    // The model every worker must serve.
    std::string model_id;
    // Creates the channel to a worker's "host:port" (TLS settings live
    // here). Default (empty): plaintext grpc::CreateChannel.
    std::function<std::shared_ptr<grpc::Channel>(const std::string& target)> channel_factory;
  };

  explicit WorkerRegistry(Options options) : options_(std::move(options)) {}

  // InvalidArgument when the worker serves another model or names no address.
  absl::Status Register(const tandem::v1::RegisterRequest& request);
  // False when the worker is unknown (it should register again).
  bool Heartbeat(const tandem::v1::HeartbeatRequest& request);

  // The next healthy worker of `role` after the previous pick, skipping
  // `exclude`. Unavailable when there is none.
  absl::StatusOr<WorkerHandle> Pick(tandem::v1::WorkerRole role,
                                    const std::vector<std::string>& exclude = {});
  bool HasHealthy(tandem::v1::WorkerRole role);

  // A call to the worker failed in a way that says it is gone: out of
  // rotation until its next heartbeat.
  void MarkFailed(const std::string& worker_id);

  struct WorkerInfo {
    std::string id;
    tandem::v1::WorkerRole role;
    std::string address;
    bool healthy;
    tandem::v1::WorkerLoad load;
  };
  std::vector<WorkerInfo> List();

  absl::Duration heartbeat_interval() const { return options_.heartbeat_interval; }

 private:
  struct Entry {
    WorkerHandle handle;
    absl::Time last_heartbeat;
    bool failed = false;
    tandem::v1::WorkerLoad load;
  };
  bool Healthy(const Entry& e, absl::Time now) const;

  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // registration order
  size_t next_[3] ABSL_GUARDED_BY(mu_) = {0, 0, 0};       // round-robin cursor per role
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_REGISTRY_H_
