// A child process for integration tests: started with its stdout on a pipe,
// read line by line with deadlines, killed and reaped on destruction.
#ifndef TANDEM_TESTS_TESTING_SUBPROCESS_H_
#define TANDEM_TESTS_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace tandem::testing {

class Subprocess {
 public:
  // Starts argv[0] with argv; stderr is inherited. Aborts the test binary if
  // fork fails (nothing sensible to do then).
  explicit Subprocess(const std::vector<std::string>& argv);
  ~Subprocess();  // SIGKILL if still running, then reap
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // The next line of stdout, or nullopt at EOF or when none came by deadline.
  std::optional<std::string> ReadLine(absl::Time deadline);
  void Signal(int sig);
  // Waits for the exit up to `deadline`; the wait status, or nullopt.
  std::optional<int> Wait(absl::Time deadline);

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
  bool reaped_ = false;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_SUBPROCESS_H_
