// The kernel backend tests run on: $TANDEM_DEVICE, "cpu" when unset. CMake's
// tandem_test(... GUARDED) runs a test binary a second time with
// TANDEM_DEVICE=cpu-guarded, whose memory faults when the host touches it
// outside a backend call; the `tandem` processes a test starts read the same
// variable as their --device default.
#ifndef TANDEM_TESTS_TESTING_DEVICE_H_
#define TANDEM_TESTS_TESTING_DEVICE_H_

#include <cstdlib>
#include <memory>
#include <string>

#include "kernels/backend.h"
#include "kernels/backend_factory.h"

namespace tandem::testing {

inline std::string TestDevice() {
  const char* device = std::getenv("TANDEM_DEVICE");
  return device != nullptr && *device != '\0' ? device : "cpu";
}

// A backend on TestDevice(); aborts the test binary if it cannot be made
// (an unknown TANDEM_DEVICE is a broken test setup, not a test result).
// In-process tests check the model's code too: a guarded backend here closes
// its memory after every op (guard_each_op), where the workers' guards
// bracket whole forward passes.
inline std::unique_ptr<kernels::Backend> TestBackend(int num_threads) {
  if (TestDevice() == "cpu-guarded") {
    return kernels::CreateGuardedCpuBackend({.num_threads = num_threads, .guard_each_op = true});
  }
  auto backend = kernels::CreateBackend({.device = TestDevice(), .num_threads = num_threads});
  if (!backend.ok()) std::abort();
  return *std::move(backend);
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_DEVICE_H_
