// The router's core: KV index, placement and the asynchronous request path,
// behind the Generator interface both front ends (gRPC, HTTP) call.
//
//   RouterCore core(options, model_info, &registry);
//   core.StartBackground();            // snapshot fetcher + health sweeper
//   registry_service feeds core.OnKvEvents(batch) / core.OnRegistered(id)
//   std::shared_ptr<GenerationCall> call = core.Start(request, deadline, observer);
//   ...
//   core.Stop();                       // before destruction
//
// A request, following DESIGN.md's path: validate and tokenize
// (request_validation.h); hash the
// prompt's full blocks; Placement picks the decode worker, the prefill
// worker (or none: aggregated) and admits or rejects against the SLO; the
// decode worker reserves blocks (Reserve); the prefill worker computes and
// writes the KV into them (Prefill); the decode worker streams tokens
// (Decode), which pass stop-string filtering (stop_filter.h) on their way to
// the observer.
// Every call is asynchronous (gRPC's callback API) with the request's
// deadline, so no thread waits on a request. A worker that fails a call
// leaves the rotation and the request is placed again without it while no
// token has reached the client; after that, the stream migrates: it is
// placed again with the prompt plus the tokens sent as its context and
// continues where the client is (RouterOptions::max_migrations), and fails
// with UNAVAILABLE only when no decode worker can take it.
//
// Gray failures: a worker that is alive but makes no progress (SIGSTOP, a
// stuck device, swapping, a network black hole) must not hang the streams
// already on it. The sweeper (every sweep_interval) judges every call in
// flight (progress_watch.h): a call whose worker left the rotation (missed
// its heartbeat deadline, was marked failed, or came back in a new rotation
// epoch meanwhile), or whose decode worker sent no token on any stream for
// the call's allowance (max(stream_stall_timeout, stream_stall_steps x the
// worker's predicted time per token)), is cancelled, and the request takes
// the failure path: placed again while no token reached the client, else
// migrated, else (no decode worker can take it) UNAVAILABLE "decode worker W
// failed mid-stream after N tokens: W stopped making progress: ...". A stalled worker is held out of the
// rotation for stalled_worker_hold although it heartbeats. Detection takes at most the deadline plus one
// sweep_interval; the cancel reaches the worker (at once, or when it runs again), whose reactors then free
// the request's blocks.
//
// Time: every deadline, timeout and timing the core decides by reads
// RouterOptions::clock (tests pass a FakeClock). gRPC receives the resulting
// absolute deadlines and enforces them in real time, and the background
// threads pace themselves in real time.
//
// Flow control: admitted requests wait at the router (flow_queue.h) until
// a worker has room (max_inflight_prefills_per_worker), then go highest
// priority first and fair across tenants; a full queue sheds the lowest
// priority's newest waiting request for a higher-priority arrival, else
// refuses the arrival; a request waits at most queue_ttl. Every refusal is
// RESOURCE_EXHAUSTED with its reason first in the message (shed_reason.h);
// UNAVAILABLE means no worker can serve. Retries and migrations of an
// admitted request never wait in or are refused by the queue.
//
// Thread safety: all methods are thread-safe.
#ifndef TANDEM_ROUTER_ROUTER_CORE_H_
#define TANDEM_ROUTER_ROUTER_CORE_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "model/model_info.h"
#include "router/flow_queue.h"
#include "router/generation.h"
#include "router/kv_index.h"
#include "router/placement.h"
#include "router/worker_registry.h"
#include "tandem/v1/tandem.pb.h"
#include "tandem/v1/worker.pb.h"

namespace tandem::router {

struct RouterOptions {
  // Default max_tokens when a request leaves it 0. Default: 64.
  int32_t default_max_tokens = 64;
  // Placements per request across workers before giving up. Default: 3.
  int max_attempts = 3;
  // Live migration: how many times one stream may move to another decode
  // worker when its worker dies or stalls after tokens reached the client.
  // The router re-prefills the prompt plus the tokens sent (seeded sampling
  // skips their draws) and resumes where the client is, token-for-token
  // what the lost worker would have sent. 0: such a stream fails with
  // UNAVAILABLE. Default: 3.
  int max_migrations = 3;
  // Deadline for a request whose client set none. Default: 10 min.
  absl::Duration default_deadline = absl::Minutes(10);
  // How long a decode reservation lives unless renewed. While a request's
  // prefill is queued or running the router renews its reservation every
  // reservation_ttl / 4 (DecodeWorker.Renew), so the reservation lives as
  // long as the request; only a router that stopped renewing (it died)
  // leaves blocks held, for one TTL. Default: 10 s — short because renewal
  // keeps every live request's reservation, so the TTL only decides how
  // long a killed router's reservations hold decode blocks (a renewal
  // every 2.5 s per request waiting for its prefill, at most the in-flight
  // prefill limit per prefill worker, is cheap). Was 30 s until 2026-12-04;
  // the fault suite's router kill -9 then left one for 30 s.
  absl::Duration reservation_ttl = absl::Seconds(10);
  // Bound on the router's queue: requests admitted and still waiting for
  // their first token (Reserve, the prefill worker's queue, the prefill),
  // per healthy prefill worker (per decode worker when none prefills). A
  // request beyond it is refused at once with RESOURCE_EXHAUSTED (HTTP 429
  // + Retry-After) naming the bound, before any work, so what is admitted
  // waits a bounded time and is never failed late. 0: no bound.
  // Default: 64 (about 2 s of queue for stories260K on one prefill worker).
  int max_queued_prefills_per_worker = 64;
  // Flow control (flow_queue.h): requests dispatched to workers and not yet
  // past their first token, per healthy prefill worker (per decode worker
  // when none prefills). More admitted requests wait at the router and are
  // dispatched as these finish: highest GenerateRequest.priority first,
  // fair across tenants within a priority (start-time fair queueing, cost
  // = prompt tokens). So the order under overload is the router's, not the
  // workers' FIFO queues'. 0: none held (each admitted request is
  // dispatched at once and queues on its worker; priority and tenant then
  // play no part). Default: 4 — a worker computes one prefill while the
  // next ones reserve decode blocks and the last one's KV is transferred,
  // so a worker is not left idle between prefills (stories260K on one
  // prefill worker served as many requests/s as with 0; 1 cost a fifth:
  // docs/PERFORMANCE.md), and a worker that batches prompts keeps a batch;
  // a request that arrives waits behind at most 4 prefills on the worker.
  int max_inflight_prefills_per_worker = 4;
  // Longest a request waits at the router before it is dispatched; then it
  // is refused (RESOURCE_EXHAUSTED "queue_ttl: ...", HTTP 429). 0: no TTL
  // (its deadline still bounds the wait). Default: 30 s.
  absl::Duration queue_ttl = absl::Seconds(30);
  // Weight of each tenant's fair share within a priority (> 0); tenants
  // not listed weigh 1. Default: none.
  absl::flat_hash_map<std::string, double> tenant_weights;
  // A tenant running fewer than its weighted share of twice the in-flight
  // limit, and fewer than the limit, gets its waiting requests dispatched
  // past the limit (up to twice the limit in all; FlowQueue::Options::below_share_skips_limit): the prefill
  // workers' engines admit them before the other tenants' queued prompts
  // (PrefillRequest.priority/.tenant), so a light tenant waits for a step,
  // not for a heavy tenant's in-flight prefills to finish. Default: true.
  bool below_share_skips_limit = true;
  // Decode admission: the flow queue dispatches a request only while some
  // decode worker would decode it at a predicted TPOT (PredictTpotMs: its
  // reported step time and batch, scaled to the batch it would join) within
  // this many ms; the rest wait at the router in priority and fair-share
  // order (FlowQueue::Limits::dispatch_room), so under overload the queue
  // forms here instead of in the decode batches or in a Reserve waiting
  // for a decode step. It is what paces prefills to what the decode workers
  // decode now that a decode worker answers Reserve beside its step
  // (worker_process.cc). 0: off. Default: 20 — on stories260K (1 + 1
  // workers, 2 cores, 3x overload) it kept TPOT p50 at 0.3-0.6 ms where
  // without it the decode batch ran away (TPOT p50 13-58 ms in 3 of 6
  // runs), and with the decode worker on a contended core it halved TPOT
  // (43-51 -> 25 ms) and served 17% more than Reserve waiting for the step
  // (docs/PERFORMANCE.md, "Seventh pass"); 50 served less there (a bigger
  // batch on a contended core). Set it to the deployment's TPOT target.
  double decode_tpot_limit_ms = 20;
  // The decode worker reserves blocks while the prefill worker computes the
  // prompt (Reserve and Prefill sent together; the reservation follows the
  // Prefill in PrefillWorker.ProvideReservation and only the KV send waits
  // for it), instead of the Prefill starting once the Reserve answered: a
  // Reserve's round trip, a few ms on a busy decode worker, leaves the time
  // to first token. When the Reserve fails the Prefill is cancelled (its
  // computed blocks stay in the prefill worker's prefix cache for the
  // retry). `tandem router` turns it off with TANDEM_RESERVE_BEFORE_PREFILL=1
  // (for comparison). Default: true.
  bool reserve_during_prefill = true;
  // Routing policy, cost model, conditional disaggregation and SLO defaults.
  PlacementOptions placement;
  // Deadline of a KvEventSource.Snapshot call. Default: 5 s.
  absl::Duration snapshot_timeout = absl::Seconds(5);
  // How often dead workers' blocks are dropped from the index and calls in
  // flight are judged (see "Gray failures"). Default: 250 ms.
  absl::Duration sweep_interval = absl::Milliseconds(250);
  // The least time a decode stream (or a Reserve) may go without a token
  // from its worker before it is stalled; the allowance is
  // max(this, stream_stall_steps x the worker's predicted time per token).
  // 2 s: a decode step of a GPU worker takes tens of ms, and the router's
  // own heartbeat deadline is 1.5 s, so a stall is noticed about as fast as
  // a frozen process; the worker-level test (progress_watch.h) keeps
  // preempted or waiting streams on a busy worker from counting.
  // 0: no progress deadline. Default: 2 s.
  absl::Duration stream_stall_timeout = absl::Seconds(2);
  // Steps of the predicted time per token that make the allowance on slow
  // workers (a CPU worker at 200 ms a token: 4 s). Default: 20.
  int stream_stall_steps = 20;
  // A Prefill's allowance, once its worker finished a prefill before:
  // max(stream_stall_timeout, this x the request's predicted TTFT) without
  // the prefill worker finishing any prefill; then
  // it is stalled (held out, the request placed again). Generous because
  // the TTFT prediction errs (docs/PERFORMANCE.md) and a false verdict
  // recomputes a prompt; a hung device is caught all the same. 0: no
  // progress deadline for prefills (heartbeats and keepalive only).
  // Default: 10.
  int prefill_stall_factor = 10;
  // How long a worker whose stream stalled stays out of the rotation
  // although it heartbeats (a stuck device heartbeats). Default: 10 s.
  absl::Duration stalled_worker_hold = absl::Seconds(10);
  // Time for deadlines, timeouts and request timings (borrowed; tests pass
  // a FakeClock). Default: Clock::Real().
  Clock* clock = Clock::Real();
};

class RouterCore final : public Generator {
 public:
  // `model` (tokenizer, config; a LoadedModel is one too) and `registry`
  // are borrowed.
  RouterCore(RouterOptions options, const model::ModelInfo* model, WorkerRegistry* registry);
  ~RouterCore() override;  // calls Stop

  // Starts the snapshot fetcher and the health sweeper threads.
  void StartBackground();
  // Stops and joins them, cancels requests still on a worker and waits (at
  // most 5 s) until no request object is left, so none outlives the core.
  // Call it after the front ends stopped (idempotent).
  void Stop();

  std::shared_ptr<GenerationCall> Start(const tandem::v1::GenerateRequest& request, absl::Time deadline,
                                        std::shared_ptr<GenerationObserver> observer) override;

  // KV events from a worker's PublishKvEvents stream.
  void OnKvEvents(const tandem::v1::KvEventBatch& batch);
  // A worker (re)registered: fetch its snapshot (a router that restarted
  // rebuilds its index this way).
  void OnRegistered(const std::string& worker_id);

  const KvIndex& index() const { return index_; }
  Placement& placement() { return placement_; }
  const RouterOptions& options() const { return options_; }
  const model::ModelInfo& model() const { return *model_; }
  WorkerRegistry* registry() { return registry_; }

  // Requests started and not yet done.
  int64_t in_flight() const { return in_flight_.load(); }
  // Requests admitted and not yet past their first token (the queue that
  // max_queued_prefills_per_worker bounds): waiting at the router or
  // dispatched.
  int64_t queued_prefills() const {
    const FlowQueue::Stats stats = flow_.stats();
    return stats.waiting + stats.running;
  }
  const FlowQueue& flow_queue() const { return flow_; }

  // A worker reported its load (a heartbeat) or a request ended: with
  // decode admission on, requests waiting for decode room are dispatched as
  // soon as there is some, not at the next sweep.
  void OnDecodeRoomChanged();

  // Sends DecodeWorker.Renew for every reservation whose prefill is still
  // pending, without waiting for the answers. The renewer thread calls it
  // every reservation_ttl / 4, in real time (the decode worker expires
  // reservations in real time); tests may call it directly.
  void RenewReservations();

  // Sends DecodeWorker.Release again for reservations a Release (or a
  // Reserve's answer) did not get through for, once their call is gone and
  // the worker is back in the rotation (see releases_). The sweeper calls it
  // every sweep_interval; tests may call it directly.
  void RetryReleases();

  // The model, its context length, the decode workers' block size and the
  // healthy workers per role (tandem.v1.Tandem/GetClusterInfo).
  tandem::v1::ClusterInfo GetClusterInfo() const;

 private:
  class Call;
  friend class Call;

  absl::Time Now() const { return options_.clock->Now(); }
  // The flow queue's bounds at the healthy workers of now.
  FlowQueue::Limits FlowLimits() const;
  // tandem_router_queue_depth{priority} and queue_running from the flow
  // queue; decode_room from `limits` (those its Expire just used).
  void PublishQueueGauges(const FlowQueue::Limits& limits);
  // A reservation to renew until DropReservation(key) (its prefill ended).
  uint64_t KeepReservation(std::string request_id, std::shared_ptr<const WorkerStubs> stubs);
  void DropReservation(uint64_t key);
  void RenewLoop();
  void RequestSnapshot(const std::string& worker_id);
  // tandem_router_kv_index_entries{tier} from the index, after it changed.
  void PublishIndexGauges();
  void SnapshotLoop();
  void SweepLoop();
  // Calls in flight, judged by the sweeper ("Gray failures"). Watch from a
  // call's start, Unwatch when it finishes (with the last token its decode
  // worker sent it, which counts as that worker's progress).
  void Watch(const std::shared_ptr<Call>& call);
  void Unwatch(const Call* call, const std::string& decode_worker, absl::Time last_token);
  // `worker` made progress at `at` (a prefill worker finished a prefill).
  void NoteProgress(const std::string& worker, absl::Time at);
  // Whether `worker` made progress before (NoteProgress or a stream's end).
  bool HasProgressed(const std::string& worker);
  // Judges every watched call and cancels those whose worker left or
  // stalled; holds stalled workers out of the rotation.
  void CheckInFlight();

  // Releases that may not have reached their decode worker: a Release that
  // failed or timed out (its worker was stopped or unreachable), or a
  // Reserve whose answer never came (the worker may hold the reservation).
  // The sweeper re-sends them (RetryReleases) once the call that made them
  // is gone — so no later Reserve of the same request id can be hit — and
  // the worker is in the rotation, until one is answered or the
  // reservation's TTL has freed it on the worker's side. A reservation
  // orphaned while its worker was SIGSTOPped is so freed when the worker
  // runs again instead of 30 s later. Unanswered states: kReleaseInFlight,
  // kReleaseFailed; kReleaseDone ends the entry.
  enum ReleaseState : int { kReleaseInFlight, kReleaseFailed, kReleaseDone };
  struct PendingRelease {
    std::string worker_id;
    std::string request_id;  // re-sent through the worker's current stubs (a restart has new ones)
    std::weak_ptr<const void> call;
    absl::Time expires;     // real time: the worker's reservation TTL has passed
    absl::Time not_before;  // real time: re-sent at most once a second
    std::shared_ptr<std::atomic<int>> state;
  };
  // Sends DecodeWorker.Release for `request_id` (2 s deadline, real time
  // like Renew), runs `then` once it is answered or failed, and tracks it
  // until answered or `expires` (default: reservation_ttl + 1 s from now).
  // `start` kReleaseFailed: tracks it without sending now (runs `then` at
  // once).
  void SendRelease(std::string worker_id, std::string request_id, std::shared_ptr<const WorkerStubs> stubs,
                   std::weak_ptr<const void> call, ReleaseState start, std::function<void()> then = nullptr,
                   absl::Time expires = absl::InfiniteFuture());

  const RouterOptions options_;
  const model::ModelInfo* const model_;
  WorkerRegistry* const registry_;
  KvIndex index_;
  Placement placement_;
  std::atomic<uint64_t> next_request_{1};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> next_flow_key_{1};
  // Priorities whose depth gauge was set (set to 0 when they empty).
  absl::Mutex gauge_mu_;
  std::set<int32_t> depth_priorities_ ABSL_GUARDED_BY(gauge_mu_);

  absl::Notification stop_;
  std::thread snapshot_thread_;
  std::thread sweep_thread_;
  std::thread renew_thread_;
  absl::Mutex snapshot_mu_;
  std::deque<std::string> snapshot_queue_ ABSL_GUARDED_BY(snapshot_mu_);

  absl::Mutex release_mu_;
  std::vector<PendingRelease> releases_ ABSL_GUARDED_BY(release_mu_);

  // Call objects alive (constructed, not destroyed): Stop waits for none.
  absl::Mutex alive_mu_;
  int64_t calls_alive_ ABSL_GUARDED_BY(alive_mu_) = 0;

  // Taken before any Call's own mutex, never after it.
  absl::Mutex watch_mu_;
  absl::flat_hash_map<const Call*, std::weak_ptr<Call>> watched_ ABSL_GUARDED_BY(watch_mu_);
  // The last token each decode worker sent on a stream that has ended; the
  // last prefill each prefill worker finished.
  absl::flat_hash_map<std::string, absl::Time> finished_progress_ ABSL_GUARDED_BY(watch_mu_);

  struct KeptReservation {
    std::string request_id;
    std::shared_ptr<const WorkerStubs> stubs;  // the decode worker's
  };
  absl::Mutex renew_mu_;
  uint64_t next_kept_ ABSL_GUARDED_BY(renew_mu_) = 1;
  std::map<uint64_t, KeptReservation> kept_ ABSL_GUARDED_BY(renew_mu_);

  // Last, so it is destroyed first: a request still waiting in it (none
  // after Stop) holds its Call, whose destructor locks alive_mu_.
  FlowQueue flow_;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_CORE_H_
