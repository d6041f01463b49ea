// A Gate holds a thread at a point (a tier copy on a loader thread, a hook)
// until the test releases it, so a test can act while that thread is known to
// be inside. Every wait is bounded: a test that never releases fails instead
// of hanging.
//
//   Gate gate;
//   hook = [&] { gate.Enter(); };             // on the held thread
//   ASSERT_TRUE(gate.WaitEntered());          // the test thread
//   ... act while it is held ...
//   gate.Release();
//
// Thread safety: every method from any thread.
#ifndef TANDEM_TESTS_TESTING_GATE_H_
#define TANDEM_TESTS_TESTING_GATE_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "gtest/gtest.h"

namespace tandem::testing {

class Gate {
 public:
  static constexpr std::chrono::seconds kTimeout{30};

  // Called where the thread is held; returns when released (or after kTimeout).
  void Enter() {
    std::unique_lock<std::mutex> lock(mu_);
    entered_ = true;
    cv_.notify_all();
    if (!cv_.wait_for(lock, kTimeout, [&] { return released_; })) ADD_FAILURE() << "Gate never released";
  }
  // True once Enter was called; false after kTimeout without it.
  bool WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] { return entered_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool released_ = false;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_GATE_H_
