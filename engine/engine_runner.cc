#include "engine/engine_runner.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

namespace tandem::engine {
namespace {

SequenceUpdate ErrorUpdate(int64_t id, absl::Status status) {
  SequenceUpdate u;
  u.id = id;
  u.end = SequenceEnd::kError;
  u.error = std::move(status);
  return u;
}

}  // namespace

EngineRunner::EngineRunner(Engine* engine, Options options) : engine_(engine), options_(std::move(options)) {
  // Named, so that `top -H`, perf and a deployment's CPU policy (e.g. a
  // lower priority for the compute thread) can tell them apart.
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "engine");
    Loop();
  });
  if (options_.reserve_beside_step) {
    beside_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "engine-reserve");
      BesideLoop();
    });
  }
}

EngineRunner::~EngineRunner() { Stop(); }

void EngineRunner::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (beside_thread_.joinable()) beside_thread_.join();
}

absl::Status EngineRunner::Run(std::function<absl::Status(Engine&)> fn, absl::Time deadline) {
  auto cmd = std::make_shared<Command>();
  cmd->fn = std::move(fn);
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("engine is stopping");
  commands_.push_back(cmd);
  const bool done = mu_.AwaitWithDeadline(absl::Condition(&cmd->done), deadline);
  if (!done) {
    cmd->abandoned = true;  // the engine thread skips it
    return absl::DeadlineExceededError("engine thread did not run the command in time");
  }
  return cmd->result;
}

absl::Status EngineRunner::Post(std::function<absl::Status(Engine&)> fn, absl::Time deadline, Done done) {
  return Enqueue(/*beside_step=*/false, std::move(fn), deadline, std::move(done));
}

absl::Status EngineRunner::PostBesideStep(std::function<absl::Status(Engine&)> fn, absl::Time deadline,
                                          Done done) {
  return Enqueue(options_.reserve_beside_step, std::move(fn), deadline, std::move(done));
}

absl::Status EngineRunner::Enqueue(bool beside_step, std::function<absl::Status(Engine&)> fn,
                                   absl::Time deadline, Done done, std::optional<Arrival> arrival) {
  auto cmd = std::make_shared<Command>();
  cmd->fn = std::move(fn);
  cmd->deadline = deadline;
  cmd->on_done = std::move(done);
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("engine is stopping");
  (beside_step ? beside_commands_ : commands_).push_back(std::move(cmd));
  if (arrival.has_value()) NoteArrivalLocked(*std::move(arrival));
  return absl::OkStatus();
}

void EngineRunner::NoteArrivalLocked(Arrival arrival) {
  if (!options_.preempt_prompt_steps) return;
  if (computing_.has_value() &&
      computing_->GoesBefore(arrival.priority, arrival.tenant, arrival.prompt_tokens)) {
    stop_step_.store(true, std::memory_order_relaxed);
  }
  unplanned_.push_back(std::move(arrival));
}

void EngineRunner::WatchStepLocked(Engine::StepPromptClasses classes) {
  const bool stop = std::any_of(unplanned_.begin(), unplanned_.end(), [&](const Arrival& a) {
    return classes.GoesBefore(a.priority, a.tenant, a.prompt_tokens);
  });
  stop_step_.store(stop, std::memory_order_relaxed);
  computing_ = std::move(classes);
}

void EngineRunner::BesideLoop() {
  for (;;) {
    std::deque<std::shared_ptr<Command>> batch;
    {
      absl::MutexLock lock(&mu_);
      // A wait with a deadline like every other: re-checked each tick.
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](EngineRunner* r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                  return r->stopping_ || !r->beside_commands_.empty();
                                },
                                this),
                            absl::Now() + options_.tick);
      if (stopping_) break;
      batch.swap(beside_commands_);
    }
    for (const std::shared_ptr<Command>& cmd : batch) {
      absl::Status result;
      {
        absl::MutexLock engine_lock(&engine_mu_);
        result = absl::Now() > *cmd->deadline
                     ? absl::DeadlineExceededError("engine did not reach the work in time")
                     : cmd->fn(*engine_);
      }
      if (cmd->on_done) cmd->on_done(result);
    }
    if (!batch.empty()) {
      absl::MutexLock lock(&mu_);
      beside_ran_ = true;
    }
  }
  std::deque<std::shared_ptr<Command>> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(beside_commands_);
  }
  for (const std::shared_ptr<Command>& cmd : left) {
    if (cmd->on_done) cmd->on_done(absl::UnavailableError("engine stopped"));
  }
}

absl::Status EngineRunner::Submit(EngineRequest request, Listener listener, absl::Time deadline) {
  const int64_t id = request.id;
  if (options_.preempt_prompt_steps) {
    // Noted before Run queues the Add (Run waits): if the engine thread
    // takes its commands in between, the Add only misses stopping a step.
    absl::MutexLock lock(&mu_);
    NoteArrivalLocked(ArrivalOf(request));
  }
  return Run(
      [this, id, request = std::move(request), listener = std::move(listener)](Engine& e) mutable {
        absl::Status s = e.Add(std::move(request));
        if (s.ok()) listeners_[id] = {std::move(listener)};
        return s;
      },
      deadline);
}

absl::Status EngineRunner::ListenAndRun(int64_t id, Listener listener,
                                        std::function<absl::Status(Engine&)> fn, absl::Time deadline) {
  return Run(
      [this, id, listener = std::move(listener), fn = std::move(fn)](Engine& e) mutable {
        listeners_[id] = {std::move(listener)};
        absl::Status s = fn(e);
        if (!s.ok()) listeners_.erase(id);
        return s;
      },
      deadline);
}

absl::Status EngineRunner::SubmitAsync(EngineRequest request, Listener listener,
                                       absl::Time request_deadline) {
  const int64_t id = request.id;
  // Shared by the command (which moves it into listeners_ on success) and
  // its `done` (which ends it on failure): exactly one of them uses it.
  auto shared = std::make_shared<Listener>(std::move(listener));
  Arrival arrival = ArrivalOf(request);
  return Enqueue(
      /*beside_step=*/false,
      [this, id, request = std::move(request), shared, request_deadline](Engine& e) mutable {
        absl::Status s = e.Add(std::move(request));
        if (s.ok()) listeners_[id] = {std::move(*shared), request_deadline};
        return s;
      },
      request_deadline,
      [id, shared](const absl::Status& s) {
        if (!s.ok()) (*shared)(ErrorUpdate(id, s));
      },
      std::move(arrival));
}

absl::Status EngineRunner::ListenAndRunAsync(int64_t id, Listener listener,
                                             std::function<absl::Status(Engine&)> fn,
                                             absl::Time request_deadline) {
  auto shared = std::make_shared<Listener>(std::move(listener));
  return Post(
      [this, id, shared, fn = std::move(fn), request_deadline](Engine& e) {
        // Registered first, so the updates fn causes (none today) reach it.
        listeners_[id] = {*shared, request_deadline};
        absl::Status s = fn(e);
        if (!s.ok()) listeners_.erase(id);
        return s;
      },
      // Always run (unless the runner stops): `fn` decides what happens to
      // the existing request, which a skipped command would strand (e.g. a
      // reservation nobody releases). A deadline already past ends the
      // request at the next tick.
      absl::InfiniteFuture(),
      [id, shared](const absl::Status& s) {
        if (!s.ok()) (*shared)(ErrorUpdate(id, s));
      });
}

absl::Status EngineRunner::CancelAsync(int64_t id) {
  return Post(
      [this, id](Engine& e) {
        if (!listeners_.contains(id)) return absl::OkStatus();  // ended already
        return e.Cancel(id);
      },
      absl::InfiniteFuture());
}

EngineLoad EngineRunner::load() const {
  absl::MutexLock lock(&mu_);
  return load_;
}

void EngineRunner::Dispatch(const std::vector<SequenceUpdate>& updates) {
  for (const SequenceUpdate& u : updates) {
    auto it = listeners_.find(u.id);
    if (it == listeners_.end()) continue;
    if (u.end == SequenceEnd::kNone) {
      it->second.listener(u);
      continue;
    }
    // Erased before the call: the final update is the last.
    Listener listener = std::move(it->second.listener);
    listeners_.erase(it);
    listener(u);
  }
}

void EngineRunner::ExpireDeadlines(absl::Time now) {
  std::vector<int64_t> expired;
  for (const auto& [id, entry] : listeners_) {
    if (entry.deadline <= now) expired.push_back(id);
  }
  for (int64_t id : expired) {
    // Its kCancelled update finds no listener and is dropped.
    (void)engine_->Cancel(id);
    auto it = listeners_.find(id);
    Listener listener = std::move(it->second.listener);
    listeners_.erase(it);
    listener(ErrorUpdate(id, absl::DeadlineExceededError("the request did not end by its deadline")));
  }
}

void EngineRunner::FailAll(const absl::Status& status) {
  absl::flat_hash_map<int64_t, ListenerEntry> listeners;
  listeners.swap(listeners_);
  for (auto& [id, entry] : listeners) entry.listener(ErrorUpdate(id, status));
}

void EngineRunner::RunCommands(const std::deque<std::shared_ptr<Command>>& batch) {
  for (const std::shared_ptr<Command>& cmd : batch) {
    if (cmd->deadline.has_value()) {  // Post
      absl::Status result = absl::Now() > *cmd->deadline
                                ? absl::DeadlineExceededError("engine thread did not reach the work in time")
                                : cmd->fn(*engine_);
      if (cmd->on_done) cmd->on_done(result);
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      if (cmd->abandoned) continue;
    }
    absl::Status result = cmd->fn(*engine_);
    absl::MutexLock lock(&mu_);
    cmd->result = std::move(result);
    cmd->done = true;
  }
}

void EngineRunner::StepOnce(bool* stalled) {
  const int64_t decoded_before = engine_->stats().decode_tokens_computed;
  const absl::Time step_start = absl::Now();
  absl::StatusOr<bool> compute = engine_->BeginStep();
  if (!compute.ok()) {
    FailAll(compute.status());
    return;
  }
  if (*compute) {
    if (options_.preempt_prompt_steps) {
      Engine::StepPromptClasses classes = engine_->StepClasses();
      absl::MutexLock lock(&mu_);
      WatchStepLocked(std::move(classes));
    }
    // The forward pass runs unlocked: the reservation thread's work
    // (PostBesideStep) may run beside it (Engine::BeginStep says what).
    engine_mu_.Unlock();
    if (options_.before_compute) options_.before_compute();
    std::function<bool()> stop;
    if (options_.preempt_prompt_steps) stop = [this] { return stop_step_.load(std::memory_order_relaxed); };
    const absl::Status computed = engine_->ComputeStep(stop);
    engine_mu_.Lock();
    if (options_.preempt_prompt_steps) {
      absl::MutexLock lock(&mu_);
      computing_.reset();
    }
    if (!computed.ok()) {
      (void)engine_->EndStep();  // drops the failed step
      FailAll(computed);
      return;
    }
  }
  const std::vector<SequenceUpdate> updates = engine_->EndStep();
  const int64_t decoded = engine_->stats().decode_tokens_computed - decoded_before;
  if (decoded > 0) {
    // Weight 0.1: follows a load change within ~20 steps, smooths jitter.
    const double ms = absl::ToDoubleMilliseconds(absl::Now() - step_start);
    constexpr double kWeight = 0.1;
    decode_step_ms_ = decode_step_ms_ == 0 ? ms : (1 - kWeight) * decode_step_ms_ + kWeight * ms;
    decode_batch_ = decode_batch_ == 0
                        ? static_cast<double>(decoded)
                        : (1 - kWeight) * decode_batch_ + kWeight * static_cast<double>(decoded);
  }
  // Loading sequences are not a stall: the next Step waits on the loader.
  *stalled = !*compute && updates.empty() && engine_->num_loading() == 0;
  Dispatch(updates);
}

void EngineRunner::PublishLoad() {
  EngineLoad load;
  load.running = engine_->num_running();
  load.waiting = engine_->num_waiting();
  load.reserved = engine_->num_reserved();
  load.total_blocks = engine_->kv_manager().pool().num_blocks();
  load.free_blocks = engine_->kv_manager().pool().num_free_blocks();
  load.used_blocks = load.total_blocks - load.free_blocks;
  load.queued_prefill_tokens = engine_->QueuedPrefillTokens();
  load.stats = engine_->stats();
  load.decode_step_ms = decode_step_ms_;
  load.decode_batch = decode_batch_;
  absl::MutexLock lock(&mu_);
  load_ = load;
}

void EngineRunner::Loop() {
  absl::Time next_tick = absl::Now() + options_.tick;
  // True when the last Step could schedule nothing (e.g. every block is held
  // by reservations) or there is no work: wait for a command, the
  // reservation thread's work, or the tick instead of spinning. Decided
  // under engine_mu_; the reservation thread's work never adds a step's
  // work (a reservation is neither waiting nor running).
  bool idle = false;
  for (;;) {
    std::deque<std::shared_ptr<Command>> batch;
    {
      absl::MutexLock lock(&mu_);
      if (idle) {
        mu_.AwaitWithDeadline(absl::Condition(
                                  +[](EngineRunner* r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                    return r->stopping_ || !r->commands_.empty() || r->beside_ran_;
                                  },
                                  this),
                              next_tick);
      }
      if (stopping_) break;
      batch.swap(commands_);
      beside_ran_ = false;
      unplanned_.clear();  // their Adds run now, before the next step is planned
    }
    absl::MutexLock engine_lock(&engine_mu_);
    RunCommands(batch);
    if (const absl::Time now = absl::Now(); now >= next_tick) {
      if (options_.on_tick) options_.on_tick(*engine_);
      ExpireDeadlines(now);
      next_tick = absl::Now() + options_.tick;
    }
    bool stalled = false;
    if (engine_->HasWork()) StepOnce(&stalled);
    PublishLoad();
    idle = !engine_->HasWork() || stalled;
  }
  FailAll(absl::UnavailableError("engine stopped"));
  std::deque<std::shared_ptr<Command>> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(commands_);
    for (const std::shared_ptr<Command>& cmd : left) {
      if (cmd->deadline.has_value()) continue;
      cmd->result = absl::UnavailableError("engine stopped");
      cmd->done = true;
    }
  }
  // Posted work learns it will never run; outside mu_, as a `done` may Post.
  for (const std::shared_ptr<Command>& cmd : left) {
    if (cmd->deadline.has_value() && cmd->on_done) cmd->on_done(absl::UnavailableError("engine stopped"));
  }
}

}  // namespace tandem::engine
