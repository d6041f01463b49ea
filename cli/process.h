// What every `tandem` server process (router, prefill, decode, store) does
// alike around its own work: SIGINT/SIGTERM turn into a call to its Stop, and
// it prints one JSON ready line on stdout once it serves. Its gRPC server is
// started by worker_common::StartGrpcServer (worker_common/grpc_server.h).
//
//   int RunSomething(const Flags& f) {
//     TerminationSignals signals("tandem something: ");  // first: before any thread starts
//     ... build and start serving ...
//     PrintReadyLine({{"role", "something"}, {"pid", getpid()}, {"grpc", address}});
//     signals.WaitForSignal();   // or: signals.Watch([&] { process->Stop(); }); process->Run();
//     ... shut down ...
//   }
//
// Thread safety: one owner thread constructs, calls Watch/WaitForSignal and
// destroys; the callback given to Watch runs on the watcher thread.
#ifndef TANDEM_CLI_PROCESS_H_
#define TANDEM_CLI_PROCESS_H_

#include <signal.h>

#include <functional>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "nlohmann/json.hpp"

namespace tandem::cli {

// Owns SIGINT and SIGTERM for the process: the constructor blocks both in
// the calling thread, and so in every thread started after it (the mask is
// inherited), so they are taken only by this object's watcher thread and
// never interrupt a library's thread. Construct it first, before any thread
// exists; a signal that arrives before Watch stays pending until then.
class TerminationSignals {
 public:
  // `log_prefix` starts the "signal N, shutting down" line on stderr.
  explicit TerminationSignals(std::string log_prefix);
  // Stops and joins the watcher thread. The signals stay blocked, so one
  // arriving during the rest of shutdown is not fatal.
  ~TerminationSignals();
  TerminationSignals(const TerminationSignals&) = delete;
  TerminationSignals& operator=(const TerminationSignals&) = delete;

  // Starts the watcher thread: on the first SIGINT or SIGTERM it logs the
  // signal and calls `on_signal` once (it must not block for long: e.g. a
  // Stop that only notifies). Later signals are taken and ignored. Call at
  // most once.
  void Watch(std::function<void()> on_signal);

  // Watch with nothing to call, then blocks until the first signal (the
  // main thread's wait of a process that serves on other threads).
  void WaitForSignal();

 private:
  void Loop(std::function<void()> on_signal);

  const std::string log_prefix_;
  sigset_t set_;
  absl::Notification signalled_;
  absl::Notification quit_;  // set by the destructor
  std::thread watcher_;
};

// Prints `line` as one line of JSON on stdout and flushes: the ready line
// `tandem up`, tests and users' scripts wait for. nlohmann::json (not
// ordered_json): keys come out sorted, as they always have.
void PrintReadyLine(const nlohmann::json& line);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_PROCESS_H_
