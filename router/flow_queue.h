// The router's flow control: a bounded dispatch queue that holds admitted
// requests at the router until a worker has room for one more prefill, and
// releases them in order — highest priority band first, within a band
// weighted fair across tenants — so the router, not the workers' FIFO
// queues, decides who goes next under overload.
//
//   FlowQueue queue({.queue_ttl = absl::Seconds(30), .limits = [&] { return Limits{64, 4}; }});
//   absl::Status s = queue.Enter({.key = 7, .priority = 0, .tenant = "acme", .cost = 512,
//                                 .deadline = deadline,
//                                 .dispatch = [call] { call->Attempt(); },
//                                 .drop = [call](absl::Status why) { call->Finish(why); }});
//   if (!s.ok()) ...                 // refused at once (RESOURCE_EXHAUSTED "queue_full: ...")
//   ...
//   queue.Done(7);                   // its first token came (or it ended): the slot frees
//   queue.Expire();                  // periodically: queue TTL and deadlines
//
// Admission. A request counts from Enter until Done: waiting (held here) or
// running (dispatched, its first token not yet back). At most
// Limits::max_admitted count at once. An arrival beyond it sheds the newest
// waiting request of the lowest priority band below its own (that request's
// `drop` gets RESOURCE_EXHAUSTED "lower_priority: ..."); with none lower,
// the newest waiting request of its own band's tenant furthest ahead of its
// fair share, if that is another tenant which the arrival would be served
// before ("over_share: ..."; so a heavy tenant's backlog cannot fill the
// queue and lock a light tenant out); else it is refused itself
// ("queue_full: ..."). Dispatched requests are never shed.
//
// Dispatch. While fewer than Limits::max_running run (0: no limit, every
// request dispatches at once), the next waiting request is dispatched: the
// highest priority band with a waiting request, and in it the smallest
// virtual start tag. Tags are start-time fair queueing (SFQ: Goyal, Vin and
// Cheng, SIGCOMM'96): a request of tenant t arriving to band b gets
//   start  = max(V_b, F_{b,t}),  finish = start + cost / weight(t)
// where F_{b,t} is t's previous finish tag in b and V_b is the start tag of
// the band's last dispatched request (the largest finish tag dispatched
// once nothing in the band waits). Each tenant gets its weight's share of
// the band's dispatches (in cost), and a tenant below its share (the light
// one, F <= V) starts at V, ahead of every waiting request of a backlogged
// tenant (their starts are > V): it waits only for what is already running,
// not for the heavy tenant's queue. (Ordering by finish tags instead, as
// WFQ/SCFQ do, would put it behind one more of the heavy tenant's.) Cost is
// the prompt's tokens (what a prefill
// computes); weight is Options::tenant_weights (default 1).
//
// With Options::below_share_skips_limit, a tenant below its share of the
// running slots does not wait for one: when max_running run, the first
// waiting request (by start tag) of a tenant running fewer than its
// weighted share of twice max_running (weight over the weights of the
// tenants waiting in the band or running) and fewer than max_running (what
// it may run alone), in the highest band with waiting requests, is
// dispatched anyway, up to twice max_running in all. Without
// this, a light tenant's request waits for a heavy tenant's running ones to
// finish, however fair the order here (dispatched requests are not
// preempted). The workers' engines order their own queues by priority and
// the same fairness (engine.h EngineRequest), so there the extra request
// goes next.
//
// Limits::dispatch_room bounds the first pass besides max_running: the
// router's decode admission (RouterOptions::decode_tpot_limit_ms) sets it to
// the requests its decode workers take before their predicted TPOT passes
// the limit, so under overload requests wait here, in this order, instead
// of swelling the decode batches. When the room is spent, the below-share
// pass dispatches only the waiting requests of a tenant with fewer
// dispatched, not yet Ended requests than its weighted share of all of
// them (weight over the weights of the tenants with such requests or
// waiting in the band), without using room: a light tenant's request more
// in a decode batch costs its TPOT little, and its TTFT would otherwise
// wait for a heavy tenant's request to end; a lone tenant, or tenants at
// their shares, wait.
//
// Waiting is bounded: a request waits at most queue_ttl (then `drop` with
// RESOURCE_EXHAUSTED "queue_ttl: ...") and never past its own deadline
// (`drop` with DEADLINE_EXCEEDED), enforced by Expire, which the router's
// sweeper calls every sweep_interval, and again when a request would be
// dispatched.
//
// Reasons. Every RESOURCE_EXHAUSTED this queue produces is a ShedStatus
// (shed_reason.h): its message starts with the reason.
//
// Thread safety: all methods are thread-safe. `dispatch` and `drop`
// callbacks run on the calling thread after the queue's lock is released
// (never two dispatches of one request, never a dispatch after a drop);
// they may call back into the queue (Done, Enter). Nested calls do not
// recurse: a dispatch that finishes at once (and calls Done) hands the
// next dispatch to the loop already running.
#ifndef TANDEM_ROUTER_FLOW_QUEUE_H_
#define TANDEM_ROUTER_FLOW_QUEUE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "router/shed_reason.h"

namespace tandem::router {

class FlowQueue {
 public:
  struct Limits {
    // Requests waiting or running at once; 0: no bound.
    int64_t max_admitted = 0;
    // Requests running (dispatched, first token not back) at once; 0: no
    // bound (flow control off: nothing waits).
    int64_t max_running = 0;
    // More requests the decode side takes now (the router's decode
    // admission: room under each decode worker's TPOT limit); each
    // dispatch but those of the below-share pass uses one, and nothing more
    // is dispatched once it is spent until the limits are asked again
    // (Pump, Done, Enter, Expire). -1: no bound.
    int64_t dispatch_room = -1;
  };

  struct Options {
    // Longest a request waits before it is dispatched; then it is shed
    // (RESOURCE_EXHAUSTED "queue_ttl"). 0: no TTL (the request's deadline
    // still bounds it). Default: 30 s. Fixed for the queue's life.
    absl::Duration queue_ttl = absl::Seconds(30);
    // Weight of each tenant in its band's fair share (> 0); tenants not
    // listed (and the empty tenant) weigh default_weight. Default: none.
    absl::flat_hash_map<std::string, double> tenant_weights;
    // Default: 1.
    double default_weight = 1;
    // Dispatch the waiting requests of a tenant below its share past
    // max_running (see Dispatch above). Default: false.
    bool below_share_skips_limit = false;
    // The current limits, asked at every Enter, Done and Expire (the router
    // scales them with its healthy workers). Called without the queue's
    // lock held. Default (unset): no limits.
    std::function<Limits()> limits;
    // Called once per refusal or shed with its reason (metrics), without
    // the queue's lock held. Default: none.
    std::function<void(std::string_view reason)> on_shed;
    // Time for the TTL and deadlines (borrowed). Default: Clock::Real().
    Clock* clock = Clock::Real();
  };

  struct Request {
    // The caller's unique name for the request (Done and Remove take it).
    uint64_t key = 0;
    // Higher first. REQUIRES: validated by the caller.
    int32_t priority = 0;
    std::string tenant;
    // Prompt tokens to compute (>= 1 used).
    double cost = 1;
    // The request's own deadline: it does not wait past it.
    absl::Time deadline = absl::InfiniteFuture();
    // Runs once when the request is dispatched.
    std::function<void()> dispatch;
    // Runs once when the request is shed or expires while waiting.
    std::function<void(absl::Status)> drop;
  };

  struct Stats {
    int64_t waiting = 0;
    int64_t running = 0;
    // Waiting requests per priority band (bands with none are absent).
    std::map<int32_t, int64_t> waiting_by_priority;
    // Tenants with fair-queueing state kept.
    int64_t tenants = 0;
  };

  explicit FlowQueue(Options options);
  FlowQueue(const FlowQueue&) = delete;
  FlowQueue& operator=(const FlowQueue&) = delete;

  // Admits `request` (dispatching it at once when there is room to run) or
  // refuses it with RESOURCE_EXHAUSTED "queue_full: ..."; on refusal no
  // callback of it runs. May shed a lower-priority waiting request (its
  // `drop` runs before Enter returns).
  absl::Status Enter(Request request);

  // `key` no longer counts: a running request got its first token or
  // ended; a waiting one (cancelled) leaves without a callback. Frees room
  // and dispatches what fits. Unknown keys are ignored (idempotent).
  void Done(uint64_t key);

  // Removes a waiting request without running its callbacks (the client
  // cancelled it); false if it is not waiting (running, done or unknown).
  bool Remove(uint64_t key);

  // Drops the requests that waited queue_ttl or whose deadline passed, and
  // dispatches what the current limits let run. Returns those limits (the
  // router's sweeper publishes them without asking again).
  Limits Expire();

  // Dispatches what the current limits let run (the decode side freed
  // room: a request ended, a worker reported).
  void Pump();

  // A dispatched request ended (finished, failed or cancelled): it no longer
  // counts toward its tenant's share of the decode side (see dispatch_room
  // above). Callers call it once per request that ends, dispatched or not
  // (unknown keys are ignored).
  void Ended(uint64_t key);

  Stats stats() const;

 private:
  struct Entry {
    Request request;
    absl::Time enqueued;
    double start = 0, finish = 0;  // virtual tags
    uint64_t seq = 0;              // arrival order
  };
  struct Band {
    double virtual_time = 0;
    double max_finish = 0;                                 // the largest finish tag dispatched
    absl::flat_hash_map<std::string, double> last_finish;  // per tenant
    absl::flat_hash_map<std::string, int64_t> waiting;     // per tenant
    std::set<std::pair<double, uint64_t>> by_start;        // (start tag, seq)
    std::set<uint64_t> by_seq;
  };
  // Work to do once the lock is released.
  struct Actions {
    std::vector<std::function<void()>> dispatch;
    std::vector<std::pair<std::function<void(absl::Status)>, absl::Status>> drop;
    std::vector<std::string_view> shed;  // reasons, for on_shed
  };

  Limits CurrentLimits() const { return options_.limits ? options_.limits() : Limits{}; }
  double Weight(const std::string& tenant) const;
  // Takes waiting entry `seq` out; one not `served` (shed, expired,
  // cancelled) gives its share back when it was its tenant's newest.
  Entry TakeLocked(uint64_t seq, bool served) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queue is full: sheds a waiting request for `arrival` (into
  // `actions`), or says why not (queue_full).
  absl::Status MakeRoomLocked(const Request& arrival, const Limits& limits, Actions* actions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The newest waiting request, in `arrival`'s own band, of the tenant
  // furthest ahead of its share (largest finish tag), if that is another
  // tenant and its tag is past the arrival's own finish tag.
  std::optional<uint64_t> OverShareLocked(const Request& arrival) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds an admitted request; then PumpLocked.
  bool InsertLocked(Request request, const Limits& limits, absl::Time now, Actions* actions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Dispatches (into `actions`) while there is room to run, then those of
  // tenants below their share (see Dispatch above); drops
  // expired ones met on the way.
  void DispatchLocked(const Limits& limits, absl::Time now, Actions* actions)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The waiting request to dispatch next: the highest waiting band's first
  // by start tag, or with `below_share_of` > 0 its first whose tenant runs
  // fewer than its weighted share of that many requests and than
  // `share_cap`.
  std::optional<uint64_t> NextLocked(int64_t below_share_of, int64_t share_cap) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The highest priority band with a waiting request; null when none waits.
  const Band* FirstWaitingBandLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The weights of the tenants in `counted` (running, or active) plus those
  // waiting in `band` and not counted: the whole a tenant's share is of.
  double ActiveWeightLocked(const Band& band, const absl::flat_hash_map<std::string, int64_t>& counted) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With the decode room spent: the highest waiting band's first request
  // (by start tag) whose tenant has fewer active requests than its weighted
  // share of all active ones (see dispatch_room above).
  std::optional<uint64_t> NextBelowActiveShareLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `tenant` runs fewer than `cap` and than its weighted share of
  // `slots`.
  bool BelowShareLocked(const std::string& tenant, int64_t slots, int64_t cap, double active_weight) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `seq` out, dispatching it (or dropping it if expired).
  void DispatchOneLocked(uint64_t seq, absl::Time now, Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `e` must leave without running at `now`; sets the status.
  bool ExpiredLocked(const Entry& e, absl::Time now, absl::Status* why) const;
  // Dispatches what fits into `actions` unless another call is running
  // dispatches already (it is told to look again: no recursion); true if
  // this call is now the one that runs them.
  bool PumpLocked(const Limits& limits, absl::Time now, Actions* actions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `actions` (after the lock is released); if `pumping`, dispatches
  // again until nothing more fits.
  void Run(Actions actions, bool pumping);

  const Options options_;
  mutable absl::Mutex mu_;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  // Waiting entries by seq; their band by priority (highest first).
  std::map<uint64_t, Entry> waiting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, uint64_t> waiting_key_ ABSL_GUARDED_BY(mu_);  // key -> seq
  std::map<int32_t, Band, std::greater<int32_t>> bands_ ABSL_GUARDED_BY(mu_);
  // Keys dispatched, not done, with their tenant; running requests per tenant.
  absl::flat_hash_map<uint64_t, std::string> running_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> running_by_tenant_ ABSL_GUARDED_BY(mu_);
  // Dispatched and not Ended (the decode side's share, see dispatch_room).
  absl::flat_hash_map<uint64_t, std::string> active_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> active_by_tenant_ ABSL_GUARDED_BY(mu_);
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  bool pump_again_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_FLOW_QUEUE_H_
