// The one thread that calls UCX, and how other threads hand it work.
//
// Owns the std::thread, the task queue and the shutdown flags. The thread runs
// Delegate::Setup (which creates the UCX objects and calls Attach), then its
// loop: run the queued tasks, progress the worker until idle,
// Delegate::AfterProgress, Delegate::Housekeep once per kHousekeepingPeriod,
// then sleep on the worker's event fd (ucp_worker_arm + poll) until UCX has an
// event, Submit signals the worker, Delegate::NextDeadline or the next
// housekeeping comes. Stop() ends the loop and the thread runs
// Delegate::Teardown before it exits.
//
// Threads: Submit, RunSync, RunSyncStatus and OnThread from any thread; Start
// and Stop from the owner; the rest (marked below) from the progress thread
// only, i.e. from the delegate. Internal to transfer/.
//
//   ProgressThread thread("decode-0", &delegate);
//   TANDEM_RETURN_IF_ERROR(thread.Start(absl::Seconds(15)));
//   absl::StatusOr<int> n = thread.RunSync<int>([] { return 42; }, absl::Now() + absl::Seconds(1));
//   thread.Stop();
#ifndef TANDEM_TRANSFER_INTERNAL_PROGRESS_THREAD_H_
#define TANDEM_TRANSFER_INTERNAL_PROGRESS_THREAD_H_

#include <ucp/api/ucp.h>

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/status_macros.h"

namespace tandem::transfer::internal {

// How often the loop wakes up with nothing to do (Delegate::Housekeep).
inline constexpr absl::Duration kHousekeepingPeriod = absl::Seconds(1);

class ProgressThread {
 public:
  // What the engine does on the thread. Every method runs on it.
  class Delegate {
   public:
    virtual ~Delegate() = default;
    // First. Creates the UCX objects and calls Attach; an error ends the
    // thread (after Teardown).
    virtual absl::Status Setup() = 0;
    // After every round of worker progress (failed peers, expired writes).
    virtual void AfterProgress(absl::Time now) = 0;
    // Once per kHousekeepingPeriod (forget stale state, free old objects).
    virtual void Housekeep(absl::Time now) = 0;
    // When the loop must look again at the latest (the earliest deadline).
    virtual absl::Time NextDeadline() const = 0;
    // Last, also after a failed Setup. Calls Detach before it destroys the
    // worker.
    virtual void Teardown() = 0;
  };

  // `name` names the engine in errors. `delegate` is borrowed and must
  // outlive the thread: its owner calls Stop() before destroying it.
  ProgressThread(std::string name, Delegate* delegate) : name_(std::move(name)), delegate_(delegate) {}
  ~ProgressThread() { Stop(); }

  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;

  // Starts the thread and waits up to `timeout` for Delegate::Setup: its
  // status, or DEADLINE_EXCEEDED. Once.
  absl::Status Start(absl::Duration timeout);
  // Ends the loop and joins the thread (Teardown runs first). Idempotent.
  void Stop();

  bool OnThread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Queues `task` and wakes the thread. FAILED_PRECONDITION once shutting down.
  absl::Status Submit(absl::AnyInvocable<void()> task);

  // Runs `fn` on the thread and returns its result, waiting at most until
  // `deadline` (DEADLINE_EXCEEDED; `fn` may still run later). Runs `fn`
  // inline when called on the thread.
  template <typename T>
  absl::StatusOr<T> RunSync(absl::AnyInvocable<absl::StatusOr<T>()> fn, absl::Time deadline);
  absl::Status RunSyncStatus(absl::AnyInvocable<absl::Status()> fn, absl::Time deadline);

  // ---- Progress thread only. ----

  // From Setup, once the worker exists: Submit and Stop signal it from now on.
  absl::Status Attach(ucp_worker_h worker);
  // From Teardown, before the worker is destroyed: nobody signals it after.
  void Detach();
  // Refuses later Submit calls.
  void StopAccepting();
  // Runs the tasks queued so far.
  void RunTasks();
  // Calls ucp_worker_progress until it reports nothing; returns how many
  // calls did something.
  int ProgressWorker();
  // Arms the worker and sleeps on its event fd until an event or `until`,
  // at most kHousekeepingPeriod. True when the fd became readable.
  bool WaitForEvents(absl::Time until);
  // Progresses the worker until it has been idle for kDrainQuietPeriod (so
  // connection setup in flight finishes) or until `until`.
  void DrainUntilQuiet(absl::Time until);

 private:
  void Main();
  void Loop();
  bool HasTasks() ABSL_LOCKS_EXCLUDED(mu_);
  bool StopRequested() ABSL_LOCKS_EXCLUDED(mu_);

  const std::string name_;
  Delegate* const delegate_;

  std::thread thread_;
  absl::Notification setup_done_;
  absl::Status setup_status_;  // written before setup_done_

  absl::Mutex mu_;
  // Set once under mu_ by Attach, then read-only (the thread reads it
  // without the lock; Stop and Submit under it).
  ucp_worker_h worker_ = nullptr;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  // Set by Detach before the worker is destroyed: nobody signals it after.
  bool detached_ ABSL_GUARDED_BY(mu_) = false;

  // Progress thread only.
  int efd_ = -1;
  absl::Time next_housekeeping_ = absl::InfinitePast();
};

template <typename T>
absl::StatusOr<T> ProgressThread::RunSync(absl::AnyInvocable<absl::StatusOr<T>()> fn, absl::Time deadline) {
  if (OnThread()) return fn();
  struct Shared {
    absl::Notification done;
    absl::StatusOr<T> result = absl::UnknownError("not run");
  };
  auto shared = std::make_shared<Shared>();
  TANDEM_RETURN_IF_ERROR(Submit([shared, fn = std::move(fn)]() mutable {
    shared->result = fn();
    shared->done.Notify();
  }));
  if (!shared->done.WaitForNotificationWithDeadline(deadline)) {
    return absl::DeadlineExceededError(absl::StrCat("transfer engine '", name_, "': progress thread busy"));
  }
  return std::move(shared->result);
}

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_PROGRESS_THREAD_H_
