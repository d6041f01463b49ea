#include "engine/engine_runner.h"

namespace tandem::engine {

EngineRunner::EngineRunner(Engine* engine, Options options) : engine_(engine), options_(std::move(options)) {
  thread_ = std::thread([this] { Loop(); });
}

EngineRunner::~EngineRunner() { Stop(); }

void EngineRunner::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
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

absl::Status EngineRunner::Submit(EngineRequest request, Listener listener, absl::Time deadline) {
  const int64_t id = request.id;
  return Run(
      [this, id, request = std::move(request), listener = std::move(listener)](Engine& e) mutable {
        absl::Status s = e.Add(std::move(request));
        if (s.ok()) listeners_[id] = std::move(listener);
        return s;
      },
      deadline);
}

absl::Status EngineRunner::ListenAndRun(int64_t id, Listener listener,
                                        std::function<absl::Status(Engine&)> fn, absl::Time deadline) {
  return Run(
      [this, id, listener = std::move(listener), fn = std::move(fn)](Engine& e) mutable {
        listeners_[id] = std::move(listener);
        absl::Status s = fn(e);
        if (!s.ok()) listeners_.erase(id);
        return s;
      },
      deadline);
}

EngineLoad EngineRunner::load() const {
  absl::MutexLock lock(&mu_);
  return load_;
}

void EngineRunner::Dispatch(const std::vector<SequenceUpdate>& updates) {
  for (const SequenceUpdate& u : updates) {
    auto it = listeners_.find(u.id);
    if (it == listeners_.end()) continue;
    it->second(u);
    if (u.end != SequenceEnd::kNone) listeners_.erase(it);
  }
}

void EngineRunner::FailAll(const absl::Status& status) {
  for (auto& [id, listener] : listeners_) {
    SequenceUpdate u;
    u.id = id;
    u.end = SequenceEnd::kError;
    u.error = status;
    listener(u);
  }
  listeners_.clear();
}

void EngineRunner::Loop() {
  absl::Time next_tick = absl::Now() + options_.tick;
  // True when the last Step could schedule nothing (e.g. every block is held
  // by reservations): wait for a command or the tick instead of spinning.
  bool stalled = false;
  for (;;) {
    std::deque<std::shared_ptr<Command>> batch;
    {
      absl::MutexLock lock(&mu_);
      if (!engine_->HasWork() || stalled) {
        // Idle: sleep until a command, a stop, or the next tick.
        mu_.AwaitWithDeadline(absl::Condition(
                                  +[](EngineRunner* r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                    return r->stopping_ || !r->commands_.empty();
                                  },
                                  this),
                              next_tick);
      }
      if (stopping_) break;
      batch.swap(commands_);
    }
    for (const std::shared_ptr<Command>& cmd : batch) {
      {
        absl::MutexLock lock(&mu_);
        if (cmd->abandoned) continue;
      }
      absl::Status result = cmd->fn(*engine_);
      absl::MutexLock lock(&mu_);
      cmd->result = std::move(result);
      cmd->done = true;
    }
    if (options_.on_tick && absl::Now() >= next_tick) {
      options_.on_tick(*engine_);
      next_tick = absl::Now() + options_.tick;
    } else if (absl::Now() >= next_tick) {
      next_tick = absl::Now() + options_.tick;
    }
    stalled = false;
    if (engine_->HasWork()) {
      const int64_t steps_before = engine_->stats().steps;
      const int64_t decoded_before = engine_->stats().decode_tokens_computed;
      const absl::Time step_start = absl::Now();
      absl::StatusOr<std::vector<SequenceUpdate>> updates = engine_->Step();
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
      if (!updates.ok()) {
        FailAll(updates.status());
      } else {
        // Loading sequences are not a stall: the next Step waits on the loader.
        stalled = updates->empty() && engine_->stats().steps == steps_before && engine_->num_loading() == 0;
        Dispatch(*updates);
      }
    }
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
  FailAll(absl::UnavailableError("engine stopped"));
  absl::MutexLock lock(&mu_);
  for (const std::shared_ptr<Command>& cmd : commands_) {
    cmd->result = absl::UnavailableError("engine stopped");
    cmd->done = true;
  }
  commands_.clear();
}

}  // namespace tandem::engine
