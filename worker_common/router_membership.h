// A worker's (or store's) membership in its router: registration, retried
// until the router answers; then a heartbeat thread (re-registering when the
// router has restarted and forgotten it) and the KV-event stream.
//
//   RouterMembership membership({.registration = reg, .load = load_fn}, stub.get(), &kv_events);
//   TANDEM_RETURN_IF_ERROR(FromGrpc(membership.Register()));  // up to register_timeout
//   membership.Start();   // heartbeat + KV events, one owned thread each
//   ...
//   membership.Stop();    // joins both; also done by the destructor
//
// Thread safety: Register/Start/Stop from one thread (the owner).
#ifndef TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_
#define TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_

#include <functional>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/kv_events.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "worker_common/kv_event_publisher.h"

namespace tandem::worker_common {

class RouterMembership {
 public:
  struct Options {
    // Who this process is (worker_id, role, address, model_id, block_size);
    // its load field is filled from `load` on every attempt.
    tandem::v1::RegisterRequest registration;
    // The load reported with registration, heartbeats and KV events.
    std::function<tandem::v1::WorkerLoad()> load;
    // Called with each heartbeat's load (e.g. to refresh /metrics gauges).
    // Default: empty.
    std::function<void(const tandem::v1::WorkerLoad&)> on_heartbeat;
    // How long Register keeps retrying an unreachable router. Default: 30 s.
    absl::Duration register_timeout = absl::Seconds(30);
    // Default: 250 ms.
    absl::Duration heartbeat_interval = absl::Milliseconds(250);
  };

  // `stub` and `kv_events` are borrowed and must outlive this object.
  RouterMembership(Options options, tandem::v1::WorkerRegistry::StubInterface* stub,
                   engine::KvEventLog* kv_events);
  ~RouterMembership();

  // Registers, retrying until the router answers, the timeout passes, or it
  // refuses (INVALID_ARGUMENT: another model, a bad address).
  grpc::Status Register();
  // Starts heartbeats and KV-event publishing. REQUIRES: Register succeeded.
  void Start();
  // Stops and joins (idempotent).
  void Stop();

 private:
  grpc::Status RegisterOnce();

  Options options_;
  tandem::v1::WorkerRegistry::StubInterface* const stub_;
  KvEventPublisher publisher_;
  absl::Notification stop_;
  std::thread heartbeat_;
};

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_
