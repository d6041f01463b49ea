// The router's view of its workers: who registered, their address and role,
// when they last beat, their load (as last reported, plus the prefill work
// this router has sent them since), and stubs to call them. Pick chooses
// round-robin; ForEachHealthy and WithHealthy let router/placement.h score
// every worker without copying the list.
//
//   WorkerRegistry registry({.heartbeat_interval = absl::Milliseconds(500), .model_id = "m"});
//   registry.Register(request);                 // from RegistryService
//   absl::StatusOr<WorkerHandle> w = registry.Pick(tandem::v1::WORKER_ROLE_DECODE);
//   w->stubs->decode->async()->Reserve(...);    // worker_stubs.h
//
// A worker is healthy (in the rotation) when its last heartbeat is younger
// than the heartbeat deadline (interval x misses_allowed) by Options::clock
// and no call to it failed since then (MarkFailed; with a hold, not before
// the hold ends although it heartbeats). Each time a worker re-enters the
// rotation after leaving it, its rotation_epoch grows: the router's core
// cancels the calls it made through a handle of an older epoch
// (router_core.h, "Gray failures"), so a worker that froze and came back
// within one sweep still loses the streams that stalled on it.
//
// Every channel to a worker carries gRPC keepalive (AddWorkerChannelArgs): a
// peer that stops answering HTTP/2 pings (frozen, partitioned) breaks the
// channel and fails its calls with UNAVAILABLE within keepalive_time +
// keepalive_timeout, whatever the heartbeats say.
//
// The gRPC stubs live behind WorkerHandle::stubs (an opaque WorkerStubs,
// defined in worker_stubs.h), so this header and placement.h, which only
// score workers, include no gRPC header.
//
// Thread safety: all methods are safe to call from any thread.
#ifndef TANDEM_ROUTER_WORKER_REGISTRY_H_
#define TANDEM_ROUTER_WORKER_REGISTRY_H_

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "tandem/v1/worker.pb.h"

namespace grpc {
class Channel;
class ChannelArguments;
}  // namespace grpc

namespace tandem::router {

// The stubs to call one worker (worker_stubs.h).
struct WorkerStubs;

struct WorkerHandle {
  std::string id;
  tandem::v1::WorkerRole role = tandem::v1::WORKER_ROLE_UNSPECIFIED;
  std::string address;
  // Shared by every copy of the handle; set for every registered worker.
  std::shared_ptr<const WorkerStubs> stubs;
  // How many times the worker re-entered the rotation (or registered again)
  // before this handle was taken; calls made through an older epoch's
  // handle are stale.
  uint64_t rotation_epoch = 0;
};

// The arguments of every channel to a worker. Keepalive: an HTTP/2 ping
// every `time` (also while no call is active and no data flows: a stalled
// stream sends none), the channel closed when one is not answered within
// `timeout`; servers must accept such pings (worker_common/grpc_server.cc
// does). Receive size: a KV snapshot carries 8 bytes per held block, so a
// worker or store holding 1,000,000 blocks answers with 8 MB, past gRPC's
// 4 MB default; 256 MB (30 million blocks) matches the store's server.
void AddWorkerChannelArgs(absl::Duration time, absl::Duration timeout, grpc::ChannelArguments* args);

// What placement reads about one healthy worker (valid during the callback).
struct WorkerView {
  const WorkerHandle& handle;
  const tandem::v1::WorkerLoad& load;
  int32_t block_size;
  // Sent by this router and not finished yet: prompt tokens still to prefill
  // and requests, so load between two heartbeats is not underestimated.
  int64_t inflight_prefill_tokens;
  int32_t inflight_requests;
  // The worker's position in registration order: a small integer that names
  // it for as long as the registry lives (workers are never forgotten, only
  // out of the rotation), so placement can keep per-worker facts in arrays
  // instead of maps keyed by id.
  uint32_t slot;
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
    // Keepalive on the channels to workers (AddWorkerChannelArgs). 1 s pings
    // are cheap (one channel per worker) and, with the 2 s timeout, a
    // worker whose process stops answering loses its calls within 3 s, as
    // the heartbeat deadline takes it out of the rotation. Default: 1 s, 2 s.
    absl::Duration keepalive_time = absl::Seconds(1);
    absl::Duration keepalive_timeout = absl::Seconds(2);
    // Creates the channel to a worker's "host:port" (TLS settings live
    // here); it should apply AddWorkerChannelArgs with the values above.
    // Default (empty): plaintext, with keepalive.
    std::function<std::shared_ptr<grpc::Channel>(const std::string& target)> channel_factory;
    // Time for heartbeat deadlines (borrowed; tests pass a FakeClock).
    // Default: Clock::Real().
    Clock* clock = Clock::Real();
    // A router that did not run (SIGSTOP, a starved or swapped-out
    // process) heard no heartbeat meanwhile through no fault of the
    // workers. When the registry's judging (the sweeper runs it every
    // 250 ms) has not run for pause_threshold of `awake_clock` time,
    // silence before that moment is forgiven: deadlines count from it.
    // Without this, a router stopped for 3 s took every worker out of the
    // rotation on waking and failed the streams in flight. 0: off.
    // Default: 1 s (a third of the heartbeat deadline's 1.5 s would be too
    // eager on a loaded machine; 1 s still catches every pause that could
    // push a heartbeat past the deadline). Judged by awake_clock; off when
    // `clock` is a test's clock and awake_clock was left real (such a test
    // judges by its own clock alone; a slow machine must not excuse it).
    absl::Duration pause_threshold = absl::Seconds(1);
    Clock* awake_clock = Clock::Real();
  };

  explicit WorkerRegistry(Options options) : options_(WithPauseDetection(std::move(options))) {}

  // InvalidArgument when the worker serves another model or names no address.
  absl::Status Register(const tandem::v1::RegisterRequest& request);
  // False when the worker is unknown (it should register again).
  bool Heartbeat(const tandem::v1::HeartbeatRequest& request);

  // The next healthy worker of `role` after the previous pick, skipping
  // `exclude`. Unavailable when there is none.
  absl::StatusOr<WorkerHandle> Pick(tandem::v1::WorkerRole role,
                                    const std::vector<std::string>& exclude = {});
  bool HasHealthy(tandem::v1::WorkerRole role);

  // Calls `fn` for each healthy worker of `role` not in `exclude`, under the
  // registry's lock (fn must not call back into the registry).
  void ForEachHealthy(tandem::v1::WorkerRole role, const std::vector<std::string>& exclude,
                      absl::FunctionRef<void(const WorkerView&)> fn);
  // Calls `fn` once with all of them at once (possibly none), in
  // registration order, under the registry's lock: for a choice that needs
  // every candidate before it picks one (fn copies the handle it keeps; the
  // views die when it returns).
  void WithHealthy(tandem::v1::WorkerRole role, const std::vector<std::string>& exclude,
                   absl::FunctionRef<void(absl::Span<const WorkerView>)> fn);
  // The handle of a registered worker (healthy or not).
  std::optional<WorkerHandle> Get(const std::string& worker_id);
  // A registered worker's WorkerView::slot.
  std::optional<uint32_t> SlotOf(const std::string& worker_id);

  // Work this router sent to a worker (AddInflight) and its end
  // (RemoveInflight with the same numbers). Unknown ids are ignored.
  void AddInflight(const std::string& worker_id, int64_t prefill_tokens);
  void RemoveInflight(const std::string& worker_id, int64_t prefill_tokens);

  // A worker's load from a KV-event batch (as fresh as a heartbeat's, but it
  // does not count as one).
  void UpdateLoad(const std::string& worker_id, const tandem::v1::WorkerLoad& load);

  // Workers whose heartbeat deadline passed or that were marked failed (for
  // the KV index to forget).
  std::vector<std::string> Unhealthy();

  // A call to the worker failed in a way that says it is gone: out of
  // rotation until its next heartbeat, and not before `hold` has passed (a
  // worker that heartbeats but makes no progress, e.g. a stuck device).
  // A later, shorter hold does not shorten an earlier one.
  void MarkFailed(const std::string& worker_id, absl::Duration hold = absl::ZeroDuration());

  struct WorkerInfo {
    std::string id;
    tandem::v1::WorkerRole role;
    std::string address;
    bool healthy;
    tandem::v1::WorkerLoad load;
    uint64_t rotation_epoch = 0;
    // Since its last heartbeat, by Options::clock, not counting the router's
    // own pauses (Options::pause_threshold).
    absl::Duration since_heartbeat;
    // Out of the rotation because of MarkFailed (and not only a late
    // heartbeat).
    bool failed = false;
  };
  std::vector<WorkerInfo> List();

  absl::Duration heartbeat_interval() const { return options_.heartbeat_interval; }
  // interval x misses_allowed.
  absl::Duration heartbeat_deadline() const { return options_.heartbeat_interval * options_.misses_allowed; }
  // Since when (Options::clock) silence counts: the end of the last pause
  // of the router itself (Options::pause_threshold); InfinitePast if none.
  absl::Time awake_since();

 private:
  // What a placement scan reads comes first, together (ScanHealthy
  // prefetches it): with 1,000 workers, one scan per role per request, a
  // cache miss per field was a visible share of a decision.
  struct Entry {
    bool failed = false;
    int32_t block_size = 0;
    int32_t inflight_requests = 0;
    uint32_t slot = 0;  // WorkerView::slot
    int64_t inflight_prefill_tokens = 0;
    absl::Time last_heartbeat;
    tandem::v1::WorkerLoad load;
    WorkerHandle handle;
    absl::Time failed_until = absl::InfinitePast();  // MarkFailed's hold
  };
  static Options WithPauseDetection(Options options) {
    if (options.clock != Clock::Real() && options.awake_clock == Clock::Real()) {
      options.pause_threshold = absl::ZeroDuration();
    }
    return options;
  }
  bool Healthy(const Entry& e, absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Healthy(e, now) for a scan: `heard_since` is now - heartbeat_deadline(),
  // computed once for all the workers.
  bool HeardSince(const Entry& e, absl::Time heard_since) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !e.failed && std::max(e.last_heartbeat, awake_since_) >= heard_since;
  }
  // Calls fn with a view of each healthy worker of `role` not in `exclude`
  // (a template so that fn inlines: it runs 1,000 times per placement).
  template <typename Fn>
  void ScanHealthy(tandem::v1::WorkerRole role, const std::vector<std::string>& exclude, Fn fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How long `e` has been silent, not counting the router's own pauses.
  absl::Duration Silence(const Entry& e, absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Every judging method calls this first: detects a pause of the router
  // (Options::pause_threshold) and forgives the silence up to now.
  void NoteRunning() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  absl::Mutex mu_;
  // Node map: entry addresses are stable, so `entries_` can point into it.
  absl::node_hash_map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);  // registration order
  // order_'s entries, for scans that must not hash every id (placement over
  // 1,000 workers per request).
  std::vector<Entry*> entries_ ABSL_GUARDED_BY(mu_);
  // entries_ by role (index: WorkerRole 1..3), so one role's scan does not
  // walk the others'.
  std::vector<Entry*> by_role_[4] ABSL_GUARDED_BY(mu_);
  size_t next_[3] ABSL_GUARDED_BY(mu_) = {0, 0, 0};                     // round-robin cursor per role
  absl::Time last_run_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();   // awake_clock
  absl::Time awake_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // clock
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_REGISTRY_H_
