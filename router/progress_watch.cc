#include "router/progress_watch.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace tandem::router {
namespace {

std::optional<Verdict> JudgeWorker(const WorkerRef& ref,
                                   const absl::flat_hash_map<std::string, WorkerState>& workers) {
  auto it = workers.find(ref.id);
  if (it == workers.end()) {
    return Verdict{ref.id, absl::StrFormat("%s stopped making progress: it is no longer registered", ref.id)};
  }
  const WorkerState& w = it->second;
  if (!w.in_rotation) {
    if (w.heartbeat_late) {
      return Verdict{
          ref.id,
          absl::StrFormat("%s stopped making progress: no heartbeat for %s", ref.id,
                          absl::FormatDuration(absl::Trunc(w.since_heartbeat, absl::Milliseconds(1))))};
    }
    return Verdict{ref.id,
                   absl::StrFormat("%s stopped making progress: taken out of the rotation (a call to it "
                                   "failed or its streams stalled)",
                                   ref.id)};
  }
  if (w.rotation_epoch != ref.rotation_epoch) {
    // It left and came back between two sweeps: what ran on it then may
    // have been lost (a restart) or stalled for the whole absence.
    return Verdict{ref.id,
                   absl::StrFormat("%s stopped making progress: it left the rotation (missed heartbeats or "
                                   "registered again) while the call was in flight",
                                   ref.id)};
  }
  return std::nullopt;
}

}  // namespace

absl::Duration StallAllowance(absl::Duration floor, int steps, double tpot_ms) {
  if (floor <= absl::ZeroDuration()) return absl::InfiniteDuration();
  return std::max(floor, absl::Milliseconds(std::max(0.0, tpot_ms)) * std::max(0, steps));
}

std::optional<Verdict> JudgeCall(const InFlightCall& call,
                                 const absl::flat_hash_map<std::string, WorkerState>& workers,
                                 const absl::flat_hash_map<std::string, absl::Time>& last_progress,
                                 absl::Time now) {
  if (std::optional<Verdict> v = JudgeWorker(call.decode, workers)) return v;
  if (call.prefill.has_value()) {
    if (std::optional<Verdict> v = JudgeWorker(*call.prefill, workers)) return v;
  }
  if (call.allowance == absl::InfiniteDuration()) return std::nullopt;
  if (call.step == InFlightCall::Step::kPrefill) {
    // A prefill sends nothing until it ends: its worker's progress is any
    // prefill it finished (a busy worker finishing others is not stuck).
    absl::Time last = call.began;
    if (auto it = last_progress.find(call.prefill->id); it != last_progress.end())
      last = std::max(last, it->second);
    const absl::Duration idle = now - last;
    if (idle <= call.allowance) return std::nullopt;
    return Verdict{
        call.prefill->id,
        absl::StrFormat("%s stopped making progress: no prefill finished for %s (allowed %s)",
                        call.prefill->id, absl::FormatDuration(absl::Trunc(idle, absl::Milliseconds(1))),
                        absl::FormatDuration(absl::Trunc(call.allowance, absl::Milliseconds(1)))),
        /*stalled=*/true};
  }
  absl::Time last = std::max(call.began, call.last_token);
  if (auto it = last_progress.find(call.decode.id); it != last_progress.end())
    last = std::max(last, it->second);
  const absl::Duration allowance =
      call.allowance +
      (call.last_token == absl::InfinitePast() ? call.first_token_extra : absl::ZeroDuration());
  const absl::Duration idle = now - last;
  if (idle <= allowance) return std::nullopt;
  const char* what = call.step == InFlightCall::Step::kReserve ? "no answer to Reserve" : "no token";
  return Verdict{call.decode.id,
                 absl::StrFormat("%s stopped making progress: %s for %s (allowed %s)", call.decode.id, what,
                                 absl::FormatDuration(absl::Trunc(idle, absl::Milliseconds(1))),
                                 absl::FormatDuration(absl::Trunc(allowance, absl::Milliseconds(1)))),
                 /*stalled=*/true};
}

}  // namespace tandem::router
