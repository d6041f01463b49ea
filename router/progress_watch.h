// Gray-failure decisions for the calls the router has in flight: whether a
// call must be abandoned because its worker left the rotation (missed its
// heartbeat deadline, failed a call, or came back in a new rotation epoch
// after either), or because the worker stopped making progress on it (no
// token for longer than the call's allowance). Pure functions over
// snapshots; RouterCore's sweep (router_core.h, "Gray failures") takes the
// snapshots, applies the verdicts and cancels the calls.
//
//   InFlightCall call{.step = InFlightCall::Step::kDecode, .decode = {"decode-0", 3},
//                     .began = t0, .allowance = StallAllowance(absl::Seconds(2), 20, tpot_ms)};
//   std::optional<Verdict> v = JudgeCall(call, workers, last_progress, clock->Now());
//   if (v && v->stalled) registry.MarkFailed(v->worker, hold);
//
// Progress is a worker's, not only a stream's: a stream waits without
// tokens while its worker serves others (it was preempted, or it waits for
// room), so a stream is stalled only when no stream on its worker received
// a token for its allowance. A stuck device stops them all.
//
// Thread safety: pure functions; callers own the snapshots.
#ifndef TANDEM_ROUTER_PROGRESS_WATCH_H_
#define TANDEM_ROUTER_PROGRESS_WATCH_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace tandem::router {

// A worker as a call saw it when the call started.
struct WorkerRef {
  std::string id;
  uint64_t rotation_epoch = 0;
};

// One call's RPC in flight.
struct InFlightCall {
  enum class Step { kReserve, kPrefill, kDecode };
  Step step = Step::kDecode;
  // Reserve and Decode run on it; a Prefill writes into its reservation, so
  // a Prefill is abandoned when either worker leaves.
  WorkerRef decode;
  // Set during a Prefill.
  std::optional<WorkerRef> prefill;
  // When the RPC started (the call's clock).
  absl::Time began;
  // The decode stream's last chunk; InfinitePast before the first.
  absl::Time last_token = absl::InfinitePast();
  // Longest time without progress on the decode worker (a Prefill: on the
  // prefill worker, which progresses when it finishes any prefill) before
  // the call is stalled; InfiniteDuration: never.
  absl::Duration allowance = absl::InfiniteDuration();
  // Added to the allowance until this call's first token (the decode
  // worker prefills an aggregated request first).
  absl::Duration first_token_extra = absl::ZeroDuration();
};

// A worker in the registry's snapshot.
struct WorkerState {
  bool in_rotation = false;
  uint64_t rotation_epoch = 0;
  // Its heartbeat deadline passed (else it is out because it was marked
  // failed).
  bool heartbeat_late = false;
  absl::Duration since_heartbeat;
};

// Why a call must be abandoned.
struct Verdict {
  std::string worker;  // the worker at fault
  std::string reason;  // "<worker> stopped making progress: ..."
  // No progress within the allowance (the worker should be held out of the
  // rotation although it heartbeats), rather than a rotation change.
  bool stalled = false;
};

// max(floor, steps x tpot_ms): the time without a token after which a
// stream is stalled. tpot_ms is the decode worker's predicted time per
// token (0: unknown, the floor alone). InfiniteDuration when floor <= 0
// (detection off).
absl::Duration StallAllowance(absl::Duration floor, int steps, double tpot_ms);

// The verdict on one call, given every worker's state (`workers`; a worker
// missing from it is no longer registered) and each worker's last progress
// (`last_progress`: the last token a decode worker sent on any stream, the
// last prefill a prefill worker finished; missing: none yet), at `now`.
// nullopt: let it run.
std::optional<Verdict> JudgeCall(const InFlightCall& call,
                                 const absl::flat_hash_map<std::string, WorkerState>& workers,
                                 const absl::flat_hash_map<std::string, absl::Time>& last_progress,
                                 absl::Time now);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PROGRESS_WATCH_H_
