// The time source behind deadline, timeout and heartbeat decisions, so tests
// can move time by hand instead of sleeping (LevelDB's Env::NowMicros seam).
//
//   // Production: the wall clock.
//   WorkerRegistry registry({.clock = Clock::Real()});
//   // Tests: a clock that only moves when told.
//   FakeClock clock;
//   WorkerRegistry registry({.clock = &clock});
//   clock.Advance(absl::Seconds(2));      // a heartbeat deadline passes
//
// Only Now() is abstracted: code that must wait for real (a thread's pacing,
// a gRPC deadline handed to the transport) still waits in real time. A
// FakeClock starts at the real time of its construction, so absolute
// deadlines derived from it stay meaningful to gRPC until it is advanced.
//
// Thread safety: Now() may be called from any thread; so may
// FakeClock::Advance and Set.
#ifndef TANDEM_COMMON_CLOCK_H_
#define TANDEM_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide wall clock (absl::Now()); never destroyed.
  static Clock* Real();
};

// A clock that moves only when Advance or Set is called.
class FakeClock final : public Clock {
 public:
  // Default: starts at absl::Now().
  FakeClock();
  explicit FakeClock(absl::Time start) : now_(start) {}

  absl::Time Now() const override;
  // Moves time forward by `d` (a negative `d` moves it back).
  void Advance(absl::Duration d);
  void Set(absl::Time t);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_COMMON_CLOCK_H_
