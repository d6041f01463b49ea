#include "loadgen/runner.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::loadgen {

using Clock = std::chrono::steady_clock;

namespace {

double MsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace

struct Runner::State {
  // One per router replica: Options::channel, then Options::replicas.
  std::vector<std::unique_ptr<v1::Tandem::Stub>> stubs;
  absl::Mutex mu;
  std::vector<RequestResult>* results ABSL_GUARDED_BY(mu) = nullptr;
  int64_t sent ABSL_GUARDED_BY(mu) = 0;
  int64_t completed ABSL_GUARDED_BY(mu) = 0;
  int64_t rejected ABSL_GUARDED_BY(mu) = 0;
  int64_t errors ABSL_GUARDED_BY(mu) = 0;
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  Clock::time_point last_end ABSL_GUARDED_BY(mu);
  Clock::time_point start ABSL_GUARDED_BY(mu);  // of the run (RequestResult::sent_ms)
};

// One request: a reactor that owns its context, request and response
// buffers, and deletes itself in OnDone after handing its result to State.
class Runner::Call : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  // `replica` picks the stub; `attempt` counts sends of this request (0:
  // the first); a retry keeps the first send's time and deadline.
  Call(State* state, size_t index, v1::GenerateRequest request, absl::Duration timeout, size_t replica,
       int32_t attempt = 0, std::optional<Clock::time_point> first_sent = std::nullopt,
       std::chrono::system_clock::time_point deadline = {})
      : state_(state),
        index_(index),
        request_(std::move(request)),
        timeout_(timeout),
        replica_(replica),
        attempt_(attempt),
        first_sent_(first_sent) {
    result_.tenant = request_.tenant();
    result_.retries = attempt;
    deadline_ = attempt > 0 ? deadline
                            : std::chrono::system_clock::now() +
                                  std::chrono::microseconds(absl::ToInt64Microseconds(timeout));
    context_.set_deadline(deadline_);
  }

  void Start() {
    sent_ = first_sent_.value_or(Clock::now());
    state_->stubs[replica_]->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    const double now_ms = MsBetween(sent_, Clock::now());
    if (response_.has_chunk()) {
      const int n = response_.chunk().token_ids_size();
      if (n > 0) {
        if (!result_.ttft_ms.has_value()) {
          result_.ttft_ms = now_ms;
        } else {
          result_.itl_ms.push_back(now_ms - last_chunk_ms_);
        }
        last_chunk_ms_ = now_ms;
        result_.output_tokens += n;
      }
    } else if (response_.has_summary()) {
      have_summary_ = true;
      const v1::Usage& usage = response_.summary().usage();
      result_.prompt_tokens = usage.prompt_tokens();
      result_.cached_tokens = usage.cached_tokens();
      if (usage.completion_tokens() > 0) result_.output_tokens = usage.completion_tokens();
      const v1::Timings& timings = response_.summary().timings();
      if (timings.has_predicted_ttft_ms()) result_.predicted_ttft_ms = timings.predicted_ttft_ms();
      if (timings.first_token_ms() > 0) result_.router_ttft_ms = timings.first_token_ms();
      if (response_.summary().has_timings()) {
        result_.queue_ms = timings.queue_ms();
        result_.prefill_ms = timings.prefill_ms();
        result_.transfer_ms = timings.transfer_ms();
        if (timings.has_admission_ms()) result_.admission_ms = timings.admission_ms();
        if (timings.has_reserve_ms()) result_.reserve_ms = timings.reserve_ms();
      }
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    // Its router is unreachable or went away: the next replica, whole.
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
        static_cast<size_t>(attempt_) + 1 < state_->stubs.size()) {
      (new Call(state_, index_, std::move(request_), timeout_, (replica_ + 1) % state_->stubs.size(),
                attempt_ + 1, sent_, deadline_))
          ->Start();
      delete this;  // the new call holds this request's place in `in_flight`
      return;
    }
    const Clock::time_point end = Clock::now();
    result_.e2e_ms = MsBetween(sent_, end);
    if (status.ok() && have_summary_) {
      result_.outcome = Outcome::kCompleted;
    } else if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      result_.outcome = Outcome::kRejected;
    } else {
      result_.outcome = Outcome::kError;
      if (status.ok()) {
        result_.error_code = "NO_SUMMARY";
        result_.error_message = "the stream ended without a summary";
      } else {
        result_.error_code = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
        result_.error_message = status.error_message();
      }
    }
    {
      absl::MutexLock lock(&state_->mu);
      switch (result_.outcome) {
        case Outcome::kCompleted:
          ++state_->completed;
          break;
        case Outcome::kRejected:
          ++state_->rejected;
          break;
        case Outcome::kError:
          ++state_->errors;
          break;
      }
      result_.sent_ms = MsBetween(state_->start, sent_);
      (*state_->results)[index_] = std::move(result_);
      state_->last_end = std::max(state_->last_end, end);
    }
    // The call (its gRPC context and buffers) is destroyed before Run may
    // return: destroyed after the count below, it raced the caller's
    // teardown of the stubs and the process's exit (a `tandem bench` aborted
    // with "corrupted size vs. prev_size" after writing its report).
    State* const state = state_;
    delete this;
    absl::MutexLock lock(&state->mu);
    --state->in_flight;  // after this, Run may return
  }

 private:
  State* const state_;  // borrowed; outlives the call (Run waits for it)
  const size_t index_;
  v1::GenerateRequest request_;
  const absl::Duration timeout_;
  const size_t replica_;
  const int32_t attempt_;
  const std::optional<Clock::time_point> first_sent_;
  std::chrono::system_clock::time_point deadline_;
  grpc::ClientContext context_;
  v1::GenerateResponse response_;
  Clock::time_point sent_;
  double last_chunk_ms_ = 0;  // the last token-carrying chunk, ms after sent_
  bool have_summary_ = false;
  RequestResult result_;
};

absl::StatusOr<std::unique_ptr<Runner>> Runner::Create(const Options& options) {
  if (options.channel == nullptr) return absl::InvalidArgumentError("runner: channel is required");
  for (const auto& replica : options.replicas) {
    if (replica == nullptr) return absl::InvalidArgumentError("runner: a replica channel is null");
  }
  if (options.concurrency_limit < 0)
    return absl::InvalidArgumentError("runner: concurrency_limit must be >= 0");
  if (options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("runner: request_timeout must be positive");
  }
  if (options.progress_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("runner: progress_interval must be positive");
  }
  return std::unique_ptr<Runner>(new Runner(options));
}

Runner::Runner(const Options& options) : options_(options), state_(std::make_unique<State>()) {
  state_->stubs.push_back(v1::Tandem::NewStub(options_.channel));
  for (const std::shared_ptr<grpc::Channel>& replica : options_.replicas) {
    state_->stubs.push_back(v1::Tandem::NewStub(replica));
  }
}

Runner::~Runner() = default;

Runner::RunResult Runner::Run(const std::vector<Scheduled>& schedule) {
  RunResult out;
  out.results.resize(schedule.size());
  State& st = *state_;
  const absl::Time start = absl::Now();
  const Clock::time_point start_steady = Clock::now();
  {
    absl::MutexLock lock(&st.mu);
    st.results = &out.results;
    st.sent = st.completed = st.rejected = st.errors = st.in_flight = 0;
    st.last_end = start_steady;
    st.start = start_steady;
  }
  absl::Time next_progress = start + options_.progress_interval;
  auto report = [&] {
    if (!options_.on_progress) return;
    Progress p;
    {
      absl::MutexLock lock(&st.mu);
      p = {st.sent, st.completed, st.rejected, st.errors, st.in_flight, absl::Now() - start};
    }
    options_.on_progress(p);
  };
  auto maybe_report = [&] {
    if (absl::Now() >= next_progress) {
      report();
      while (next_progress <= absl::Now()) next_progress += options_.progress_interval;
    }
  };
  const int64_t limit = options_.concurrency_limit;

  for (size_t i = 0; i < schedule.size(); ++i) {
    const absl::Time due = start + schedule[i].send_at;
    // Wait for the send time (a timed wait, waking for progress lines).
    for (absl::Time now = absl::Now(); now < due; now = absl::Now()) {
      absl::SleepFor(std::min(due, next_progress) - now);
      maybe_report();
    }
    // Wait for room under the concurrency limit.
    if (limit > 0) {
      while (true) {
        bool room;
        {
          absl::MutexLock lock(&st.mu);
          auto has_room = [&st, limit]()
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return st.in_flight < limit; };
          room = st.mu.AwaitWithDeadline(absl::Condition(&has_room), next_progress);
        }
        if (room) break;
        maybe_report();
      }
    }
    v1::GenerateRequest request;
    const LoadRequest& load = schedule[i].request;
    *request.mutable_prompt_token_ids()->mutable_ids() = {load.prompt.begin(), load.prompt.end()};
    request.set_max_tokens(load.max_tokens);
    request.mutable_sampling()->set_temperature(0);
    request.set_stop_at_eos(false);
    if (options_.slo.ttft_ms.has_value()) request.mutable_slo()->set_ttft_ms(*options_.slo.ttft_ms);
    if (options_.slo.tpot_ms.has_value()) request.mutable_slo()->set_tpot_ms(*options_.slo.tpot_ms);
    if (!options_.model.empty()) request.set_model(options_.model);
    request.set_request_id(absl::StrCat(options_.request_id_prefix, i));
    if (!load.tenant.empty()) request.set_tenant(load.tenant);
    if (load.priority != 0) request.set_priority(load.priority);
    {
      absl::MutexLock lock(&st.mu);
      ++st.sent;
      ++st.in_flight;
    }
    (new Call(&st, i, std::move(request), options_.request_timeout, i % st.stubs.size()))->Start();
    maybe_report();
  }
  // Drain: every call has a deadline, so this ends.
  while (true) {
    bool drained;
    {
      absl::MutexLock lock(&st.mu);
      auto none_left = [&st]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return st.in_flight == 0; };
      drained = st.mu.AwaitWithDeadline(absl::Condition(&none_left), next_progress);
    }
    if (drained) break;
    maybe_report();
  }
  report();
  absl::MutexLock lock(&st.mu);
  st.results = nullptr;
  out.duration = absl::FromChrono(st.last_end - start_steady);
  return out;
}

}  // namespace tandem::loadgen
