// Waits for a condition that another process or thread makes true, with a
// deadline: for state a test can only observe from outside (a file, a
// /metrics value, a process list). Prefer an event the code reports (a
// notification, a line on a pipe) where there is one.
//
//   ASSERT_TRUE(PollUntil([&] { return Exists(pid_file); }, absl::Seconds(10)));
//
// Thread safety: `condition` runs on the calling thread only.
#ifndef TANDEM_TESTS_TESTING_POLL_H_
#define TANDEM_TESTS_TESTING_POLL_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem::testing {

// Calls `condition` every `interval` until it returns true (true) or
// `timeout` has passed (false).
template <typename F>
bool PollUntil(F condition, absl::Duration timeout, absl::Duration interval = absl::Milliseconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(interval);
  }
  return true;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_POLL_H_
