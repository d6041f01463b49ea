// A worker's (or store's) membership in one router: registration, retried
// until the router answers; then heartbeats (re-registering when the router
// has restarted and forgotten it) and the KV-event stream. A process that
// reports to several routers holds one membership per router
// (worker_common/router_set.h).
//
//   RouterMembership membership({.registration = reg, .load = load_fn}, stub.get(), &kv_events,
//                               kv_events.AddConsumer());
//   membership.Start();   // one owned thread (registration, heartbeats) + the publisher's
//   TANDEM_RETURN_IF_ERROR(FromGrpc(membership.AwaitRegistration(absl::Seconds(30))));
//   ...
//   membership.Stop();    // joins; also done by the destructor
//
// Thread safety: Start/Stop from one thread (the owner); AwaitRegistration
// and registered() from any.
#ifndef TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_
#define TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_

#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
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
    // Default: 250 ms.
    absl::Duration heartbeat_interval = absl::Milliseconds(250);
    // Called (from the membership's thread, no lock held) when registration
    // succeeds or is refused. Default: empty.
    std::function<void()> on_settled;
  };

  // `stub` and `kv_events` are borrowed and must outlive this object;
  // `consumer` is the log's consumer this membership's publisher drains.
  RouterMembership(Options options, tandem::v1::WorkerRegistry::StubInterface* stub,
                   engine::KvEventLog* kv_events,
                   engine::KvEventLog::ConsumerId consumer = engine::KvEventLog::kFirstConsumer);
  ~RouterMembership();

  // Starts the thread that registers (retrying until the router answers or
  // refuses), then heartbeats and publishes KV events.
  void Start();
  // Stops and joins (idempotent); cancels a registration in flight.
  void Stop();

  // Waits until registered (OK), refused (the router's INVALID_ARGUMENT:
  // another model, a bad address), stopped, or `timeout` passed
  // (DEADLINE_EXCEEDED naming the last error).
  grpc::Status AwaitRegistration(absl::Duration timeout) const;
  bool registered() const;
  bool refused() const;

 private:
  grpc::Status RegisterOnce();
  void Loop();

  Options options_;
  tandem::v1::WorkerRegistry::StubInterface* const stub_;
  KvEventPublisher publisher_;
  absl::Notification stop_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;  // to cancel on Stop
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> refused_ ABSL_GUARDED_BY(mu_);
  grpc::Status last_error_ ABSL_GUARDED_BY(mu_) = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                                               "not tried yet");
};

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_ROUTER_MEMBERSHIP_H_
