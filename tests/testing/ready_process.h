// A `tandem` server started as a child process, with the JSON ready line it
// prints once it serves (cli/process.h PrintReadyLine).
//
//   ReadyProcess router = StartReady({TANDEM_BINARY, "router", "--port", "0"});
//   const std::string address = router.ready.value("grpc", "");
//
// Thread-compatible.
#ifndef TANDEM_TESTS_TESTING_READY_PROCESS_H_
#define TANDEM_TESTS_TESTING_READY_PROCESS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/subprocess.h"

namespace tandem::testing {

struct ReadyProcess {
  std::unique_ptr<Subprocess> process;
  nlohmann::json ready;  // null when no ready line came
};

// Starts argv and reads its ready line; fails the test (ADD_FAILURE) when
// none comes within `timeout`.
inline ReadyProcess StartReady(const std::vector<std::string>& argv,
                               absl::Duration timeout = absl::Seconds(60)) {
  ReadyProcess p;
  p.process = std::make_unique<Subprocess>(argv);
  std::optional<std::string> line = p.process->ReadLine(absl::Now() + timeout);
  if (!line.has_value()) {
    ADD_FAILURE() << (argv.size() > 1 ? argv[1] : argv[0]) << " not ready";
    return p;
  }
  p.ready = nlohmann::json::parse(*line);
  return p;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_READY_PROCESS_H_
