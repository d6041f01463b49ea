#include "cli/process.h"

#include <time.h>

#include <iostream>
#include <utility>

namespace tandem::cli {
namespace {

// How often the watcher looks at quit_ between signals: the bound on
// joining it.
constexpr long kWatchPollNanos = 100 * 1000 * 1000;

}  // namespace

TerminationSignals::TerminationSignals(std::string log_prefix) : log_prefix_(std::move(log_prefix)) {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
}

TerminationSignals::~TerminationSignals() {
  quit_.Notify();
  if (watcher_.joinable()) watcher_.join();
}

void TerminationSignals::Watch(std::function<void()> on_signal) {
  watcher_ = std::thread([this, on_signal = std::move(on_signal)] { Loop(on_signal); });
}

void TerminationSignals::WaitForSignal() {
  Watch(nullptr);
  signalled_.WaitForNotification();
}

void TerminationSignals::Loop(std::function<void()> on_signal) {
  while (!quit_.HasBeenNotified()) {
    const timespec timeout{0, kWatchPollNanos};
    const int sig = sigtimedwait(&set_, nullptr, &timeout);
    if (sig <= 0 || signalled_.HasBeenNotified()) continue;
    std::cerr << log_prefix_ << "signal " << sig << ", shutting down\n";
    if (on_signal) on_signal();
    signalled_.Notify();
  }
}

void PrintReadyLine(const nlohmann::json& line) {
  std::cout << line.dump() << std::endl;  // endl: flush, `tandem up` is reading
}

}  // namespace tandem::cli
