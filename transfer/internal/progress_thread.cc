#include "transfer/internal/progress_thread.h"

#include <poll.h>

#include <algorithm>
#include <cstdint>

#include "absl/time/clock.h"
#include "transfer/internal/ucx_status.h"

namespace tandem::transfer::internal {
namespace {

// DrainUntilQuiet: how long the worker must have been idle.
constexpr absl::Duration kDrainQuietPeriod = absl::Milliseconds(20);

// A poll timeout for `d`, rounded up to whole milliseconds and capped at the
// housekeeping period.
int PollTimeoutMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1))),
                                            absl::ToInt64Milliseconds(kHousekeepingPeriod)));
}

}  // namespace

absl::Status ProgressThread::Start(absl::Duration timeout) {
  thread_ = std::thread([this] { Main(); });
  if (!setup_done_.WaitForNotificationWithTimeout(timeout)) {
    // ucp_init does not take this long; the thread is joined in Stop().
    return absl::DeadlineExceededError(
        absl::StrCat("transfer engine '", name_, "': UCX setup did not finish"));
  }
  return setup_status_;
}

void ProgressThread::Stop() {
  if (!thread_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;
    accepting_ = false;
    if (worker_ != nullptr && !detached_) ucp_worker_signal(worker_);
  }
  thread_.join();
}

void ProgressThread::Main() {
  absl::Status status = delegate_->Setup();
  setup_status_ = status;
  if (!status.ok()) {
    StopAccepting();
    setup_done_.Notify();
    delegate_->Teardown();
    return;
  }
  setup_done_.Notify();
  Loop();
  delegate_->Teardown();
}

void ProgressThread::Loop() {
  for (;;) {
    RunTasks();
    ProgressWorker();
    absl::Time now = absl::Now();
    delegate_->AfterProgress(now);
    if (now >= next_housekeeping_) {
      delegate_->Housekeep(now);
      next_housekeeping_ = now + kHousekeepingPeriod;
    }
    if (StopRequested()) return;
    ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (HasTasks()) continue;
    int timeout_ms =
        st == UCS_OK ? PollTimeoutMs(std::min(delegate_->NextDeadline(), next_housekeeping_) - absl::Now())
                     : 1;  // arm failed (never seen): poll gently
    pollfd pfd{efd_, POLLIN, 0};
    poll(&pfd, 1, timeout_ms);
  }
}

absl::Status ProgressThread::Submit(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (!accepting_) {
    return absl::FailedPreconditionError(absl::StrCat("transfer engine '", name_, "' is shutting down"));
  }
  tasks_.push_back(std::move(task));
  // Thread safe in every UCX thread mode; under mu_ so that Teardown cannot
  // destroy the worker in between.
  ucp_worker_signal(worker_);
  return absl::OkStatus();
}

absl::Status ProgressThread::RunSyncStatus(absl::AnyInvocable<absl::Status()> fn, absl::Time deadline) {
  absl::StatusOr<bool> result = RunSync<bool>(
      [fn = std::move(fn)]() mutable -> absl::StatusOr<bool> {
        TANDEM_RETURN_IF_ERROR(fn());
        return true;
      },
      deadline);
  return result.status();
}

absl::Status ProgressThread::Attach(ucp_worker_h worker) {
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_worker_get_efd(worker, &efd_), "ucp_worker_get_efd"));
  absl::MutexLock lock(&mu_);  // Stop() may read it if Start() gave up waiting
  worker_ = worker;
  return absl::OkStatus();
}

void ProgressThread::Detach() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
  detached_ = true;
}

void ProgressThread::StopAccepting() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
}

void ProgressThread::RunTasks() {
  std::deque<absl::AnyInvocable<void()>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) task();
}

bool ProgressThread::HasTasks() {
  absl::MutexLock lock(&mu_);
  return !tasks_.empty();
}

bool ProgressThread::StopRequested() {
  absl::MutexLock lock(&mu_);
  return stop_requested_;
}

int ProgressThread::ProgressWorker() {
  int events = 0;
  while (ucp_worker_progress(worker_) != 0) ++events;
  return events;
}

bool ProgressThread::WaitForEvents(absl::Time until) {
  if (ucp_worker_arm(worker_) != UCS_OK) return false;  // UCS_ERR_BUSY: events are waiting
  pollfd pfd{efd_, POLLIN, 0};
  return poll(&pfd, 1, PollTimeoutMs(until - absl::Now())) > 0;
}

void ProgressThread::DrainUntilQuiet(absl::Time until) {
  absl::Time last_activity = absl::Now();
  for (;;) {
    const int events = ProgressWorker();
    absl::Time now = absl::Now();
    if (events > 0) last_activity = now;
    absl::Time quiet_at = last_activity + kDrainQuietPeriod;
    if (now >= quiet_at || now >= until) return;
    if (WaitForEvents(std::min(quiet_at, until))) last_activity = now;
  }
}

}  // namespace tandem::transfer::internal
