// The routers a worker (or store) reports to: one RouterMembership per router
// replica, so every replica has the worker registered, hears its heartbeats
// and keeps its own prefix index from the same numbered KV events
// (engine/kv_events.h: one log, one consumer per router).
//
// Which routers: `--router` is a comma-separated list of host:port entries.
// An entry whose host is a DNS name that resolves to several addresses (a
// Kubernetes headless Service over the router pods) stands for all of them;
// names are resolved again every `resolve_interval`, so a router pod that is
// replaced (new address) or added is joined, and one that left is dropped.
//
//   RouterSet routers({.routers = "router-0:5000,router-1:5000", .channel_factory = channels,
//                      .membership = {.registration = reg, .load = load_fn}}, &kv_events);
//   TANDEM_RETURN_IF_ERROR(routers.Start());
//   TANDEM_RETURN_IF_ERROR(FromGrpc(routers.AwaitRegistration(absl::Seconds(30))));
//   ...
//   routers.Stop();   // joins every thread; also done by the destructor
//
// Resolution picks IPv4 addresses when a name has any (else IPv6), so
// "localhost" is one router, not two. A name that resolves to one address
// keeps its name as the channel target (TLS verifies it as before); with
// several, channels go to the addresses, and TLS needs --tls-server-name
// (or certificates that name the addresses).
//
// Thread safety: Start/Stop from the owner; the rest from any thread.
#ifndef TANDEM_WORKER_COMMON_ROUTER_SET_H_
#define TANDEM_WORKER_COMMON_ROUTER_SET_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/kv_events.h"
#include "grpcpp/support/channel_arguments.h"
#include "worker_common/router_membership.h"

namespace tandem::worker_common {

// The channel targets `routers` stands for (see above), sorted. An entry
// without a port, or with a bad one, is InvalidArgument; a name that does not
// resolve contributes nothing (NotFound only when no entry resolves).
absl::StatusOr<std::vector<std::string>> ResolveRouterTargets(const std::string& routers);

// Channel arguments for a process's channels to routers (and other cluster
// servers): reconnect attempts at most 1 s apart, so a router that restarts
// is found within about a second of listening again rather than after gRPC's
// default backoff, which grows to 2 minutes.
void AddFastReconnect(grpc::ChannelArguments* args);

class RouterSet {
 public:
  struct Options {
    std::string routers;
    std::function<std::shared_ptr<grpc::Channel>(const std::string& target)> channel_factory;
    RouterMembership::Options membership;
    // Default: 5 s (250 ms while nothing resolves).
    absl::Duration resolve_interval = absl::Seconds(5);
    // Default: ResolveRouterTargets; tests substitute their own.
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& routers)> resolve;
  };

  // `kv_events` is borrowed and must outlive this object.
  RouterSet(Options options, engine::KvEventLog* kv_events);
  ~RouterSet();

  // Resolves and joins every router found, then keeps resolving on its own
  // thread. InvalidArgument for a malformed list; a name that does not
  // resolve yet is retried (a router pod that is not up yet).
  absl::Status Start();
  void Stop();

  // Waits until some router has registered this process (OK), every router
  // found refused it (its INVALID_ARGUMENT), or `timeout` passed.
  grpc::Status AwaitRegistration(absl::Duration timeout) const;

  // The channel targets joined now, sorted.
  std::vector<std::string> targets() const;
  // How many of them have registered this process.
  int registered() const;

 private:
  struct Member {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<tandem::v1::WorkerRegistry::Stub> stub;
    engine::KvEventLog::ConsumerId consumer = 0;
    std::unique_ptr<RouterMembership> membership;
  };
  // Joins the targets not yet joined and leaves the ones no longer named.
  void Reconcile(const std::vector<std::string>& targets);
  void ResolveLoop();

  const Options options_;
  engine::KvEventLog* const kv_events_;
  absl::Notification stop_;
  std::thread resolver_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Member>> members_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_ROUTER_SET_H_
