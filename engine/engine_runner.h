// Runs an Engine on its own thread (the engine thread) for servers: gRPC
// handlers submit work from any thread; the engine thread owns the engine,
// steps it while there is work, and hands each request's updates to that
// request's listener.
//
//   EngineRunner runner(engine.get(), {});
//   // A blocking caller (tests, tools): wait on a queue.
//   runner.Submit(request, [&](const SequenceUpdate& u) { queue.Push(u); }, deadline);
//   // A gRPC callback reactor: never waits; the listener drives the reactor.
//   runner.SubmitAsync(request, [reactor](const SequenceUpdate& u) { reactor->OnUpdate(u); },
//                      request_deadline);
//   runner.Post([id](Engine& e) { return e.Cancel(id); }, deadline);  // e.g. from OnCancel
//   ...
//   runner.Stop();   // also done by the destructor
//
// Listeners and `done` callbacks run on the engine thread (PostBesideStep's
// on the reservation thread; for work still queued when the runner stops,
// on the thread calling Stop): they
// must be quick and never block (push to a queue, start a gRPC write); they
// may call Post and the other *Async methods, never the blocking Run,
// Submit or ListenAndRun. Every wait on the engine thread has a deadline.
//
// Delivery guarantee (what reactors rely on to finish and delete
// themselves): once SubmitAsync or ListenAndRunAsync returns OK, its
// listener is called with exactly one final update (end != kNone), after
// which it is never called again — the engine's own end, or kError when the
// request could not start, outlived its deadline, or the runner stopped.
//
// Thread safety: every public method may be called from any thread except
// where noted above.
#ifndef TANDEM_ENGINE_ENGINE_RUNNER_H_
#define TANDEM_ENGINE_ENGINE_RUNNER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace tandem::engine {

// A snapshot of the engine's load, refreshed after every engine-thread loop.
struct EngineLoad {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t reserved = 0;
  int32_t free_blocks = 0;
  int32_t total_blocks = 0;
  int32_t used_blocks = 0;  // total - free (free counts evictable cached blocks)
  int64_t queued_prefill_tokens = 0;
  // Steps that decoded at least one sequence: exponentially weighted mean
  // duration (ms) and rows decoded per step; 0 before the first.
  double decode_step_ms = 0;
  double decode_batch = 0;
  EngineStats stats;
};

// A request's updates, handed from the engine thread (Push, from a
// listener) to the thread serving the request (Pop). Shared by both, so
// either may go first.
class UpdateQueue {
 public:
  void Push(const SequenceUpdate& u) {
    absl::MutexLock lock(&mu_);
    updates_.push_back(u);
  }
  // The next update, or nullopt when none arrived by `deadline`.
  std::optional<SequenceUpdate> Pop(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](std::deque<SequenceUpdate>* q) { return !q->empty(); }, &updates_),
                          deadline);
    if (updates_.empty()) return std::nullopt;
    SequenceUpdate u = std::move(updates_.front());
    updates_.pop_front();
    return u;
  }

 private:
  absl::Mutex mu_;
  std::deque<SequenceUpdate> updates_ ABSL_GUARDED_BY(mu_);
};

class EngineRunner {
 public:
  // A request's updates, in order, on the engine thread.
  using Listener = std::function<void(const SequenceUpdate&)>;
  // The result of work queued with Post, on the engine thread (PostBesideStep:
  // on the reservation thread).
  using Done = std::function<void(const absl::Status&)>;

  struct Options {
    // Called on the engine thread about every tick (reservation expiry).
    // Default: none.
    std::function<void(Engine&)> on_tick;
    // Default: 100 ms.
    absl::Duration tick = absl::Milliseconds(100);
    // Run PostBesideStep work on the runner's reservation thread, also while
    // a step's forward pass computes (Engine::BeginStep), instead of queueing
    // it behind the step: a decode worker answers Reserve in the time the
    // reservation takes, not a decode step's. Only for a backend whose pool
    // copies any thread may make (Backend::host_accessible; a reservation
    // may copy tier blocks into the pool). Default: false (PostBesideStep is
    // Post).
    bool reserve_beside_step = false;
    // Stop a prompt step's forward pass early (Engine::ComputeStep's `stop`)
    // when a request arrives (Submit, SubmitAsync) that the next plan would
    // admit ahead of every prompt the step computes (Engine::
    // StepPromptClasses: a higher priority, or a tenant with fewer prompt
    // tokens left that is also next in fair order): its rows are computed
    // again after the arrival's, so a light tenant's prompt on a prefill
    // worker waits at most half a heavy tenant's step, not all of it. Steps
    // that decode any row are never stopped. The check runs on the host
    // between layers, so on a device backend that queues layers faster than
    // they run it only catches an arrival while the first half is being
    // queued (not yet measured on a GPU). Default: false.
    bool preempt_prompt_steps = false;
    // Test hook: called on the engine thread before each forward pass,
    // while the engine is unlocked (PostBesideStep work may run). Default: none.
    std::function<void()> before_compute;
  };

  // `engine` is borrowed and must outlive the runner. Starts the thread.
  EngineRunner(Engine* engine, Options options);
  ~EngineRunner();
  EngineRunner(const EngineRunner&) = delete;
  EngineRunner& operator=(const EngineRunner&) = delete;

  // Stops the engine thread (pending requests get a kError update). Idempotent.
  void Stop();

  // Runs `fn` on the engine thread and waits for it. DeadlineExceeded if the
  // engine thread did not run it in time (it then never runs); Unavailable
  // after Stop.
  absl::Status Run(std::function<absl::Status(Engine&)> fn, absl::Time deadline);

  // Adds `request` and routes its updates to `listener` (the last one has
  // end != kNone).
  absl::Status Submit(EngineRequest request, Listener listener, absl::Time deadline);

  // Routes updates of an existing (e.g. reserved) request to `listener`,
  // then runs `fn` (e.g. Activate) — atomically on the engine thread.
  absl::Status ListenAndRun(int64_t id, Listener listener, std::function<absl::Status(Engine&)> fn,
                            absl::Time deadline);

  // Non-blocking forms, for gRPC callback reactors. Each returns at once:
  // Unavailable when the runner is stopping (nothing was queued and no
  // callback will come), otherwise OK.

  // Queues `fn` for the engine thread. `done` (optional) then gets fn's
  // result on the engine thread; or DeadlineExceeded, without running fn,
  // when the engine thread reaches it after `deadline`; or Unavailable when
  // the runner stops first.
  absl::Status Post(std::function<absl::Status(Engine&)> fn, absl::Time deadline, Done done = nullptr);

  // Post for work that only calls Engine::Reserve, ReleaseReserved and
  // const accessors (see Engine::BeginStep): with
  // Options::reserve_beside_step it runs on the reservation thread (never
  // two at once, not during the engine thread's own work on the engine, but
  // during a forward pass) and `done` is called there; otherwise as Post.
  absl::Status PostBesideStep(std::function<absl::Status(Engine&)> fn, absl::Time deadline,
                              Done done = nullptr);

  // Adds `request` on the engine thread and routes its updates to
  // `listener`. `request_deadline` bounds the request's whole life: not
  // added by then, or still live then, it is cancelled (within one tick) and
  // its final update is kError DeadlineExceeded. When Add refuses the
  // request, the final (and only) update is kError with Add's status.
  // absl::InfiniteFuture() for no deadline.
  absl::Status SubmitAsync(EngineRequest request, Listener listener, absl::Time request_deadline);

  // SubmitAsync for an existing request `id` (e.g. reserved): routes its
  // updates to `listener`, then runs `fn` (e.g. Activate) on the engine
  // thread — always, however late (fn owns the request's fate), so fn must
  // be quick. When `fn` fails the listener's final update is kError with
  // fn's status (fn cleans up the request itself, e.g. ReleaseReserved);
  // after it, `request_deadline` bounds the request as in SubmitAsync.
  absl::Status ListenAndRunAsync(int64_t id, Listener listener, std::function<absl::Status(Engine&)> fn,
                                 absl::Time request_deadline);

  // Cancels request `id` on the engine thread if it has not ended yet (its
  // listener has not had its final update; that update is then kCancelled).
  // A request that ended is left alone, one that holds its blocks after
  // finishing (hold_blocks_on_finish) included: ReleaseReserved frees those.
  absl::Status CancelAsync(int64_t id);

  EngineLoad load() const;

 private:
  struct Command {
    std::function<absl::Status(Engine&)> fn;
    // Run: the waiter reads result once done; abandoned when it gave up.
    absl::Status result;
    bool done = false;
    bool abandoned = false;
    // Post: not run after `deadline`; `on_done` gets the result. Empty for Run.
    std::optional<absl::Time> deadline;
    Done on_done;
  };
  struct ListenerEntry {
    Listener listener;
    absl::Time deadline = absl::InfiniteFuture();
  };

  // A request submitted and not yet added (its Add queued behind the step
  // in progress): what Options::preempt_prompt_steps compares with the step.
  struct Arrival {
    int32_t priority = 0;
    std::string tenant;
    int64_t prompt_tokens = 0;
  };
  static Arrival ArrivalOf(const EngineRequest& request) {
    return {request.priority, request.tenant, static_cast<int64_t>(request.prompt_tokens.size())};
  }
  // Post's and PostBesideStep's queueing: onto the reservation thread's
  // queue when `beside_step`, else the engine thread's. With `arrival`
  // (the request `fn` adds) and Options::preempt_prompt_steps, notes it
  // (NoteArrivalLocked).
  absl::Status Enqueue(bool beside_step, std::function<absl::Status(Engine&)> fn, absl::Time deadline,
                       Done done, std::optional<Arrival> arrival = std::nullopt);
  // Keeps `arrival` until the engine thread takes the queued commands, and
  // asks the step in progress to stop if `arrival` goes before it.
  void NoteArrivalLocked(Arrival arrival) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Options::preempt_prompt_steps, after BeginStep planned a step: records
  // its classes and sets stop_step_ when a request that arrived since the
  // commands were taken goes before them.
  void WatchStepLocked(Engine::StepPromptClasses classes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Loop();
  // The reservation thread's loop (Options::reserve_beside_step).
  void BesideLoop();
  void RunCommands(const std::deque<std::shared_ptr<Command>>& batch);
  // One step: plans under engine_mu_, computes without it, then commits and
  // dispatches under it again. REQUIRES: engine_mu_ held; held on return.
  void StepOnce(bool* stalled) ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu_);
  void PublishLoad();
  void Dispatch(const std::vector<SequenceUpdate>& updates);
  // Cancels requests whose deadline passed; their listeners get kError.
  void ExpireDeadlines(absl::Time now);
  void FailAll(const absl::Status& status);

  Engine* const engine_;
  const Options options_;
  // Listeners are touched only on the engine thread.
  absl::flat_hash_map<int64_t, ListenerEntry> listeners_;

  // Held by the engine thread while it works on the engine (everything
  // but the forward pass and the idle wait) and by the reservation thread
  // while it runs a PostBesideStep command. Taken before mu_.
  absl::Mutex engine_mu_;

  mutable absl::Mutex mu_;
  std::deque<std::shared_ptr<Command>> commands_ ABSL_GUARDED_BY(mu_);
  // PostBesideStep work for the reservation thread.
  std::deque<std::shared_ptr<Command>> beside_commands_ ABSL_GUARDED_BY(mu_);
  // Set when the reservation thread ran work (a release may unstall the
  // engine): wakes the engine thread's idle wait.
  bool beside_ran_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  EngineLoad load_ ABSL_GUARDED_BY(mu_);
  // Options::preempt_prompt_steps: requests submitted since the engine
  // thread last took its commands (their Adds are not in the step in
  // progress), the classes of the step computing now (none between steps),
  // and the flag its forward pass reads between layers.
  std::vector<Arrival> unplanned_ ABSL_GUARDED_BY(mu_);
  std::optional<Engine::StepPromptClasses> computing_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_step_{false};
  // Touched by the engine thread only.
  double decode_step_ms_ = 0;
  double decode_batch_ = 0;
  std::thread thread_;
  std::thread beside_thread_;  // with Options::reserve_beside_step
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_ENGINE_RUNNER_H_
