#include "router/router_core.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/block_hash.h"
#include "common/logging.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/client_callback.h"
#include "model/text_stream.h"
#include "proto/grpc_status.h"
#include "router/progress_watch.h"
#include "router/request_validation.h"
#include "router/router_metrics.h"
#include "router/shed_reason.h"
#include "router/stop_filter.h"
#include "router/worker_stubs.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {
namespace {

// The id the router gives workers for one request (its reservation, prefill,
// decode and release): the client's id plus this process's random tag and a
// counter. Two router replicas both numbering requests "req-1", or a client
// retrying its request on another replica while the first replica's
// reservation still lives on the decode worker, would otherwise collide
// there (the worker refuses a second reservation under one id).
std::string WorkerRequestId(const std::string& client_id) {
  static const uint32_t tag = std::random_device{}();
  static std::atomic<uint64_t> next{1};
  return absl::StrFormat("%s@%08x.%d", client_id, tag, next.fetch_add(1));
}

// How long Stop waits for requests still alive.
constexpr absl::Duration kStopWaitForCalls = absl::Seconds(5);

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// Calls that fail like this mean the worker is gone (or unreachable).
bool WorkerGone(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

}  // namespace

// One request's state machine. Owned by shared_ptrs held by its pending
// callbacks (and the front end's handle); each step starts the next from
// its callback, so at most one step runs at a time.
class RouterCore::Call final : public GenerationCall, public std::enable_shared_from_this<RouterCore::Call> {
 public:
  Call(RouterCore* core, absl::Time deadline, std::shared_ptr<GenerationObserver> observer)
      : core_(core), deadline_(deadline), observer_(std::move(observer)), start_(core->Now()) {
    core_->in_flight_.fetch_add(1);
    RouterMetrics::Get().in_flight->Increment();
    absl::MutexLock lock(&core_->alive_mu_);
    ++core_->calls_alive_;
  }
  // The last thing a call does to its core: RouterCore::Stop waits for this,
  // so no callback still pending on a gRPC thread outlives the core.
  ~Call() override {
    absl::MutexLock lock(&core_->alive_mu_);
    --core_->calls_alive_;
  }

  void Begin(const GenerateRequest& request);

  void Cancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (active_ != nullptr) active_->TryCancel();
      if (reserving_ != nullptr) reserving_->TryCancel();
    }
    // Waiting at the router: nothing is on a worker; it ends now.
    if (core_->flow_.Remove(flow_key_)) Finish(absl::CancelledError("client cancelled"));
  }

  // For the sweeper ("Gray failures" in router_core.h): the RPC in flight
  // and its serial number, if any.
  std::optional<std::pair<uint64_t, InFlightCall>> InFlight() {
    absl::MutexLock lock(&mu_);
    if (active_ == nullptr || !watch_.has_value()) return std::nullopt;
    return std::make_pair(serial_, *watch_);
  }
  // Cancels the RPC numbered `serial` if it is still in flight; its
  // callback then takes the failure path with `verdict`'s reason.
  void Abort(uint64_t serial, Verdict verdict) {
    absl::MutexLock lock(&mu_);
    if (serial != serial_ || active_ == nullptr || abort_.has_value()) return;
    abort_ = std::move(verdict);
    active_->TryCancel();
  }

 private:
  class DecodeStream;

  void Attempt();
  // Reserve and Prefill: with RouterOptions::reserve_during_prefill both
  // go at once (the Prefill with reservation_follows) and OnReserveDone
  // sends the reservation on (SendReservationToPrefill); otherwise
  // OnReserveDone sends the Prefill with the reservation. Each RPC's end
  // calls Arrive; the last one runs AfterReserveAndPrefill, which alone
  // moves the call on.
  void OnReserveDone(const grpc::Status& s);
  // Sends the Prefill (with the reservation, or saying it follows); false
  // when the request was cancelled already (nothing sent).
  bool SendPrefill(bool reservation_follows);
  void SendReservationToPrefill();
  // ProvideReservation of the Prefill numbered `serial` failed: that
  // Prefill would wait for nothing, so it is cancelled, failing with `s`.
  void OnProvideFailed(uint64_t serial, const grpc::Status& s);
  void OnPrefillDone(const grpc::Status& s);
  void Arrive();
  void AfterReserveAndPrefill();
  void OnReserveFailed(const grpc::Status& s);
  void OnPrefilled(const grpc::Status& s);
  void StartDecode();
  // From the decode stream; false stops reading.
  bool OnDecodeResponse(const GenerateResponse& in);
  // Sends `ids` to the client, their text rendered here when resumed_text_
  // is set, else the worker's `worker_text`; false once a stop string
  // matched (finish_ is then STOP).
  bool SendTokens(absl::Span<const int32_t> ids, const std::string& worker_text);
  // The prefill worker's first token goes to the client as soon as the
  // prefill answers, not after the decode worker has opened its stream,
  // landed the KV and reached the request between two of its steps (a step
  // of its whole batch, so under load the larger part of a short prompt's
  // TTFT). The decode worker still sends it first; that echo is dropped
  // (echo_pending_). Needs the tokenizer (the text is rendered here); false
  // when a stop string matched in it.
  bool SendFirstTokenEarly();
  void OnDecodeDone(const grpc::Status& s);
  // The stream ended well (or everything was sent): flush and finish OK.
  void Complete();
  // The decode worker `from` died or stalled after tokens reached the
  // client: continue the stream on another decode worker (see
  // RouterOptions::max_migrations).
  void Migrate(const std::string& from, const grpc::Status& why);
  // Gives the decode worker's reservation back (if any), then runs `then`
  // (on the callback thread) once the worker answered or 2 s passed, so a
  // retry's Reserve of the same request id never races the Release.
  void Release(std::function<void()> then = nullptr);
  void Finish(absl::Status status);
  // The request got its first token (or ended): it leaves the flow queue
  // (its slot frees for the next waiting request). Idempotent.
  void LeaveQueue() {
    if (queued_.exchange(false)) core_->flow_.Done(flow_key_);
  }
  // Sets the context the next call uses as the cancellable one and watched
  // as `step` by the sweeper; false if the request was cancelled already.
  bool Activate(grpc::ClientContext* ctx, InFlightCall::Step step) {
    InFlightCall watch = Watched(step);
    absl::MutexLock lock(&mu_);
    active_ = ctx;
    watch_ = std::move(watch);
    ++serial_;
    abort_.reset();
    return !cancelled_;
  }
  // What the sweeper judges while `step` runs on placement_'s workers.
  InFlightCall Watched(InFlightCall::Step step) const;
  // The active RPC ended with `s`: it is no longer cancellable or watched.
  // If the sweeper cancelled it, the status says why: UNAVAILABLE naming
  // the worker, or `decode_side` when the decode worker was at fault (a
  // Prefill's: ABORTED, as a failed transfer answers).
  grpc::Status Settle(const grpc::Status& s, grpc::StatusCode decode_side = grpc::StatusCode::UNAVAILABLE) {
    std::optional<Verdict> abort;
    {
      absl::MutexLock lock(&mu_);
      active_ = nullptr;
      watch_.reset();
      abort = std::exchange(abort_, std::nullopt);
    }
    if (!abort.has_value() || s.ok()) return s;
    return grpc::Status(abort->worker == placement_->decode.id ? decode_side : grpc::StatusCode::UNAVAILABLE,
                        abort->reason);
  }
  // The worker failed the call in a way that says it is gone. A
  // DEADLINE_EXCEEDED past the request's own deadline is the client's
  // limit, not the worker's fault (and must not take it out of rotation,
  // which would cancel every other call on it).
  bool Gone(const grpc::Status& s) const {
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && core_->Now() >= deadline_) return false;
    return WorkerGone(s);
  }
  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  // The placement recorded the prompt's uncached blocks as in flight to
  // the worker that prefills (Placement::Place, KvIndex::AddInflight); a
  // prefill that will not complete ends them now rather than at their TTL,
  // so later prompts are not sent to wait for blocks nobody computes.
  void ForgetInflight() {
    if (!inflight_recorded_ || !placement_.has_value()) return;
    inflight_recorded_ = false;
    core_->index_.RemoveInflight(
        placement_->prefill.has_value() ? placement_->prefill->id : placement_->decode.id, hashes_);
  }
  // Retries with a new placement, or finishes when attempts are used up.
  void Retry(grpc::Status why) {
    ForgetInflight();
    last_error_ = std::move(why);
    RouterMetrics::Get().retries->Increment();
    Attempt();
  }

  RouterCore* const core_;
  const absl::Time deadline_;
  const std::shared_ptr<GenerationObserver> observer_;
  const absl::Time start_;

  absl::Mutex mu_;
  grpc::ClientContext* active_ ABSL_GUARDED_BY(mu_) = nullptr;
  // A Reserve in flight beside the Prefill (cancelled with the request).
  grpc::ClientContext* reserving_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Reserve and Prefill: RPCs not yet ended, their results, and why a
  // ProvideReservation failed (see Arrive).
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  grpc::Status reserve_status_ ABSL_GUARDED_BY(mu_);
  grpc::Status prefill_status_ ABSL_GUARDED_BY(mu_);
  grpc::Status provide_status_ ABSL_GUARDED_BY(mu_);
  bool reserve_cut_ ABSL_GUARDED_BY(mu_) = false;  // cancelled because the Prefill failed
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  // The active RPC as the sweeper sees it, its number, and the sweeper's
  // verdict once it cancelled it.
  std::optional<InFlightCall> watch_ ABSL_GUARDED_BY(mu_);
  uint64_t serial_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Verdict> abort_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> queued_{false};
  const uint64_t flow_key_ = core_->next_flow_key_.fetch_add(1);

  // Set by Begin, read by later steps (one at a time).
  std::vector<int32_t> prompt_;
  std::vector<BlockHash> hashes_;
  int32_t max_tokens_ = 0;
  int32_t block_size_ = 16;
  bool stop_at_eos_ = true;
  tandem::v1::SamplingParams sampling_;
  std::vector<std::string> stops_;
  double ttft_slo_ms_ = 0, tpot_slo_ms_ = 0;
  std::string request_id_;
  std::string worker_request_id_;  // WorkerRequestId(request_id_)
  tandem::v1::GenerateSummary summary_;
  // What the workers compute from and how many tokens they generate: the
  // prompt and max_tokens_, and after a migration the prompt plus the
  // tokens already sent and what is left to generate.
  std::vector<int32_t> context_;
  int32_t to_generate_ = 0;
  int32_t client_skip_draws_ = 0;  // the request's own sampling.skip_draws
  int32_t priority_ = 0;           // flow control; also sent to the prefill worker
  std::string tenant_;

  // Per attempt.
  int attempts_ = 0;
  grpc::Status last_error_{grpc::StatusCode::UNAVAILABLE, "no healthy decode worker"};
  std::vector<std::string> exclude_decode_, exclude_prefill_;
  std::optional<PlacementDecision> placement_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientContext> reserve_ctx_;
  bool prefill_sent_ = false;  // this attempt's Prefill went out
  tandem::v1::ReserveRequest reserve_req_;
  tandem::v1::KvReservation reservation_;
  bool reserved_ = false;
  absl::Time reserve_sent_;         // the last Reserve's, for Timings.reserve_ms
  bool inflight_recorded_ = false;  // see ForgetInflight
  // RouterCore::KeepReservation's key while the prefill is pending; 0: none.
  uint64_t kept_reservation_ = 0;
  tandem::v1::PrefillRequest prefill_req_;
  tandem::v1::PrefillResponse prefilled_;
  int64_t prefill_inflight_tokens_ = 0;
  int64_t decode_inflight_tokens_ = 0;
  std::optional<int32_t> first_token_;

  // The stream.
  std::optional<StopFilter> filter_;
  int32_t sent_tokens_ = 0;
  std::vector<int32_t> sent_ids_;  // the token ids that reached the client
  // Streams moved to another decode worker so far; whether the last move
  // has not reached a new decode stream yet.
  int migrations_ = 0;
  bool migrating_ = false;
  // After a migration the router renders the text from the token ids: the
  // lost worker may have held back the first bytes of a character
  // (model/text_stream.h), which the router's own stream, fed every id
  // sent, still holds.
  std::optional<model::TextStream> resumed_text_;
  // Token ids the current decode stream will send that reached the client
  // already (SendFirstTokenEarly): dropped from its first chunks.
  int32_t echo_pending_ = 0;
  absl::Time first_token_time_ = absl::InfinitePast();
  // The current decode stream's last chunk (the decode worker's progress).
  absl::Time last_token_ = absl::InfinitePast();
  tandem::v1::FinishReason finish_ = tandem::v1::FINISH_REASON_UNSPECIFIED;
};

class RouterCore::Call::DecodeStream final : public grpc::ClientReadReactor<GenerateResponse> {
 public:
  DecodeStream(std::shared_ptr<Call> call, tandem::v1::DecodeRequest request)
      : call_(std::move(call)), request_(std::move(request)) {}

  grpc::ClientContext* context() { return &ctx_; }
  void Go(tandem::v1::DecodeWorker::Stub* stub) {
    stub->async()->Decode(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (call_->OnDecodeResponse(response_)) {
      StartRead(&response_);
    } else {
      ctx_.TryCancel();
    }
  }
  void OnDone(const grpc::Status& s) override {
    std::shared_ptr<Call> call = std::move(call_);
    call->OnDecodeDone(s);
    delete this;
  }

 private:
  std::shared_ptr<Call> call_;
  grpc::ClientContext ctx_;
  tandem::v1::DecodeRequest request_;
  GenerateResponse response_;
};

InFlightCall RouterCore::Call::Watched(InFlightCall::Step step) const {
  const RouterOptions& options = core_->options_;
  InFlightCall watch;
  watch.step = step;
  watch.decode = {placement_->decode.id, placement_->decode.rotation_epoch};
  watch.began = core_->Now();
  if (step == InFlightCall::Step::kPrefill) {
    // A prefill computes for as long as its prompt (and the queue before
    // it) needs: a generous multiple of the prediction (RouterOptions::
    // prefill_stall_factor).
    watch.prefill = WorkerRef{placement_->prefill->id, placement_->prefill->rotation_epoch};
    // Only once the worker finished a prefill: before, its cost is a guess
    // (PlacementOptions::default_ms_per_token) that a CPU worker exceeds.
    if (options.prefill_stall_factor > 0 && core_->HasProgressed(placement_->prefill->id)) {
      watch.allowance = StallAllowance(options.stream_stall_timeout, options.prefill_stall_factor,
                                       placement_->predicted_ttft_ms);
    }
    return watch;
  }
  watch.allowance =
      StallAllowance(options.stream_stall_timeout, options.stream_stall_steps, placement_->predicted_tpot_ms);
  if (step == InFlightCall::Step::kDecode && !first_token_.has_value()) {
    // Aggregated: the decode worker prefills the prompt before its first token.
    watch.first_token_extra = absl::Milliseconds(std::max(0.0, placement_->predicted_ttft_ms));
  }
  return watch;
}

void RouterCore::Call::Begin(const GenerateRequest& request) {
  absl::StatusOr<ValidatedRequest> valid =
      ValidateRequest(request, *core_->model_, {.default_max_tokens = core_->options_.default_max_tokens});
  if (!valid.ok()) return Finish(valid.status());
  prompt_ = std::move(valid->prompt);
  max_tokens_ = valid->max_tokens;
  sampling_ = std::move(valid->sampling);
  context_ = prompt_;
  to_generate_ = max_tokens_;
  client_skip_draws_ = sampling_.skip_draws();
  stops_ = std::move(valid->stops);
  ttft_slo_ms_ = valid->ttft_slo_ms;
  tpot_slo_ms_ = valid->tpot_slo_ms;
  stop_at_eos_ = valid->stop_at_eos;
  priority_ = valid->priority;
  tenant_ = std::move(valid->tenant);
  request_id_ = valid->request_id.empty() ? absl::StrFormat("req-%d", core_->next_request_.fetch_add(1))
                                          : std::move(valid->request_id);
  summary_.set_request_id(request_id_);
  worker_request_id_ = WorkerRequestId(request_id_);
  summary_.set_model(core_->model_->config.model_id);
  *summary_.mutable_prompt_token_ids() = {prompt_.begin(), prompt_.end()};
  summary_.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
  filter_.emplace(stops_);
  // Admission into the flow queue happens once, here: a retry or a
  // migration of an admitted request never waits or is refused for room.
  queued_ = true;
  core_->Watch(shared_from_this());
  std::shared_ptr<Call> self = shared_from_this();
  absl::Status admitted =
      core_->flow_.Enter({.key = flow_key_,
                          .priority = priority_,
                          .tenant = tenant_,
                          .cost = static_cast<double>(prompt_.size()),
                          .deadline = deadline_,
                          .dispatch = [self] { self->Attempt(); },
                          .drop = [self](absl::Status why) { self->Finish(std::move(why)); }});
  if (!admitted.ok()) {
    queued_ = false;
    Finish(std::move(admitted));
  }
}

void RouterCore::Call::Attempt() {
  if (cancelled()) return Finish(absl::CancelledError("client cancelled"));
  if (attempts_ == 0 && migrations_ == 0)
    summary_.mutable_timings()->set_admission_ms(Ms(core_->Now() - start_));
  if (core_->Now() >= deadline_) return Finish(absl::DeadlineExceededError("request deadline passed"));
  if (attempts_++ >= core_->options_.max_attempts) {
    return Finish(
        absl::UnavailableError(absl::StrFormat("no worker could serve the request after %d attempts: %s",
                                               core_->options_.max_attempts, last_error_.error_message())));
  }
  // Block hashes use the workers' block size (one per cluster; the first
  // decode worker's report decides).
  int32_t block_size = 0;
  core_->registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_DECODE, {}, [&](const WorkerView& w) {
    if (block_size == 0) block_size = w.block_size;
  });
  if (block_size > 0 && (block_size != block_size_ || hashes_.empty())) {
    block_size_ = block_size;
    hashes_ = HashFullBlocks(core_->model_->config.model_id, context_, block_size_);
  }
  PlacementRequest preq;
  preq.block_hashes = hashes_;
  preq.prompt_tokens = static_cast<int32_t>(context_.size());
  preq.max_tokens = to_generate_;
  preq.block_size = block_size_;
  preq.ttft_slo_ms = ttft_slo_ms_;
  preq.tpot_slo_ms = tpot_slo_ms_;
  preq.exclude_decode = exclude_decode_;
  preq.exclude_prefill = exclude_prefill_;
  absl::StatusOr<PlacementDecision> placed = core_->placement_.Place(preq);
  if (!placed.ok()) {
    if (absl::IsUnavailable(placed.status()) && (attempts_ > 1 || migrations_ > 0)) {
      if (last_error_.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        // Every decode worker is full: a refusal before any prefill, not a failure.
        return Finish(ShedStatus(kShedNoRoom, absl::StrFormat("no decode worker has room for the request: %s",
                                                              last_error_.error_message())));
      }
      return Finish(absl::UnavailableError(
          absl::StrFormat("no worker could serve the request: %s", last_error_.error_message())));
    }
    // RESOURCE_EXHAUSTED from placement is its SLO admission.
    if (absl::IsResourceExhausted(placed.status()))
      return Finish(ShedStatus(kShedSlo, std::string(placed.status().message())));
    return Finish(placed.status());
  }
  placement_ = std::move(*placed);
  inflight_recorded_ = true;
  // Sent back to the client and compared with the measured TTFT in Finish
  // (a retry's new placement replaces its prediction; a migration's does
  // not: the first token is long sent).
  if (sent_tokens_ == 0) summary_.mutable_timings()->set_predicted_ttft_ms(placement_->predicted_ttft_ms);
  reserved_ = false;
  first_token_.reset();
  summary_.set_decode_worker(placement_->decode.id);
  summary_.clear_prefill_worker();
  if (!placement_->prefill.has_value()) return StartDecode();

  // 1. The decode worker reserves blocks.
  summary_.set_prefill_worker(placement_->prefill->id);
  reserve_req_.Clear();
  reserve_req_.set_request_id(worker_request_id_);
  *reserve_req_.mutable_prompt_token_ids() = {context_.begin(), context_.end()};
  reserve_req_.set_max_tokens(to_generate_);
  reserve_req_.set_reservation_ttl_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(core_->options_.reservation_ttl)));
  *reserve_req_.mutable_sampling() = sampling_;
  reserve_req_.set_stop_at_eos(stop_at_eos_);
  reserve_ctx_ = std::make_unique<grpc::ClientContext>();
  reserve_ctx_->set_deadline(absl::ToChronoTime(std::min(deadline_, core_->Now() + absl::Seconds(10))));
  const bool overlap = core_->options_.reserve_during_prefill;
  {
    absl::MutexLock lock(&mu_);
    pending_ = 1;
    reserve_status_ = prefill_status_ = provide_status_ = grpc::Status::OK;
    reserve_cut_ = false;
  }
  prefill_sent_ = false;
  reservation_.Clear();
  // 2. (With reserve_during_prefill, at once) a prefill worker computes the
  // prompt; see SendPrefill.
  if (overlap) {
    summary_.mutable_timings()->set_queue_ms(Ms(core_->Now() - start_));
    if (!SendPrefill(/*reservation_follows=*/true)) return Finish(absl::CancelledError("client cancelled"));
  }
  if (!overlap && !Activate(reserve_ctx_.get(), InFlightCall::Step::kReserve))
    return Finish(absl::CancelledError("client cancelled"));
  if (overlap) {
    absl::MutexLock lock(&mu_);
    reserving_ = reserve_ctx_.get();
    if (cancelled_) reserving_->TryCancel();  // Cancel ran before there was one
  }
  reserve_sent_ = core_->Now();
  core_->registry_->AddInflight(placement_->decode.id, 0);
  placement_->decode.stubs->decode->async()->Reserve(
      reserve_ctx_.get(), &reserve_req_, &reservation_,
      [self = shared_from_this()](grpc::Status s) { self->OnReserveDone(s); });
}

bool RouterCore::Call::SendPrefill(bool reservation_follows) {
  prefill_req_.Clear();
  prefill_req_.set_request_id(worker_request_id_);
  *prefill_req_.mutable_prompt_token_ids() = {context_.begin(), context_.end()};
  *prefill_req_.mutable_sampling() = sampling_;
  if (reservation_follows) {
    prefill_req_.set_reservation_follows(true);
    prefill_req_.set_attempt(attempts_);
  } else {
    *prefill_req_.mutable_reservation() = reservation_;
  }
  prefill_req_.set_stop_at_eos(stop_at_eos_);
  prefill_req_.set_priority(priority_);
  prefill_req_.set_tenant(tenant_);
  SetPrefetchHint(*placement_, prefill_req_.mutable_prefetch_hint());
  ctx_ = std::make_unique<grpc::ClientContext>();
  ctx_->set_deadline(absl::ToChronoTime(deadline_));
  if (!Activate(ctx_.get(), InFlightCall::Step::kPrefill)) return false;
  {
    absl::MutexLock lock(&mu_);
    ++pending_;
  }
  prefill_sent_ = true;
  prefill_inflight_tokens_ = static_cast<int64_t>(context_.size()) - placement_->predicted_cached_tokens;
  core_->registry_->AddInflight(placement_->prefill->id, prefill_inflight_tokens_);
  prefilled_.Clear();
  placement_->prefill->stubs->prefill->async()->Prefill(
      ctx_.get(), &prefill_req_, &prefilled_,
      [self = shared_from_this()](grpc::Status s) { self->OnPrefillDone(s); });
  return true;
}

void RouterCore::Call::OnReserveDone(const grpc::Status& result) {
  const bool overlap = core_->options_.reserve_during_prefill;
  const grpc::Status s = overlap ? result : Settle(result);
  if (s.ok()) {
    reserved_ = true;
    if (sent_tokens_ == 0) summary_.mutable_timings()->set_reserve_ms(Ms(core_->Now() - reserve_sent_));
    // The reservation lives as long as the request: renewed while the
    // prefill queues or runs (see RouterOptions::reservation_ttl).
    kept_reservation_ = core_->KeepReservation(worker_request_id_, placement_->decode.stubs);
    if (overlap) {
      SendReservationToPrefill();
    } else {
      summary_.mutable_timings()->set_queue_ms(Ms(core_->Now() - start_));
      (void)SendPrefill(/*reservation_follows=*/false);  // not sent: cancelled, which the join sees
    }
  }
  {
    absl::MutexLock lock(&mu_);
    reserving_ = nullptr;
    reserve_status_ = s;
    // The Prefill would wait for a reservation that will not come.
    if (!s.ok() && prefill_sent_ && active_ != nullptr) active_->TryCancel();
  }
  Arrive();
}

void RouterCore::Call::SendReservationToPrefill() {
  // The call outlives this RPC's callback through `call`.
  struct Pending {
    grpc::ClientContext ctx;
    tandem::v1::ProvideReservationRequest req;
    tandem::v1::ProvideReservationResponse resp;
    std::shared_ptr<Call> call;
    uint64_t serial = 0;
  };
  auto* p = new Pending;
  p->ctx.set_deadline(absl::ToChronoTime(std::min(deadline_, core_->Now() + absl::Seconds(10))));
  p->req.set_request_id(worker_request_id_);
  p->req.set_attempt(prefill_req_.attempt());
  *p->req.mutable_reservation() = reservation_;
  p->call = shared_from_this();
  {
    absl::MutexLock lock(&mu_);
    p->serial = serial_;
  }
  placement_->prefill->stubs->prefill->async()->ProvideReservation(
      &p->ctx, &p->req, &p->resp, [p](grpc::Status s) {
        std::unique_ptr<Pending> owned(p);
        if (!s.ok()) owned->call->OnProvideFailed(owned->serial, s);
      });
}

void RouterCore::Call::OnProvideFailed(uint64_t serial, const grpc::Status& s) {
  absl::MutexLock lock(&mu_);
  if (serial != serial_ || active_ == nullptr) return;  // that Prefill has ended
  provide_status_ = s;
  active_->TryCancel();
}

void RouterCore::Call::OnPrefillDone(const grpc::Status& result) {
  const grpc::Status s = Settle(result, grpc::StatusCode::ABORTED);
  {
    absl::MutexLock lock(&mu_);
    prefill_status_ = s;
    // No use waiting for a reservation (a hung decode worker's, up to the
    // Reserve's deadline) for a prefill that failed.
    if (!s.ok() && reserving_ != nullptr) {
      reserve_cut_ = true;
      reserving_->TryCancel();
    }
  }
  Arrive();
}

void RouterCore::Call::Arrive() {
  {
    absl::MutexLock lock(&mu_);
    if (--pending_ > 0) return;
  }
  AfterReserveAndPrefill();
}

void RouterCore::Call::AfterReserveAndPrefill() {
  grpc::Status reserve, prefill, provide;
  bool reserve_cut;
  {
    absl::MutexLock lock(&mu_);
    reserve = reserve_status_;
    prefill = prefill_status_;
    provide = provide_status_;
    reserve_cut = reserve_cut_;
  }
  if (prefill_sent_) core_->registry_->RemoveInflight(placement_->prefill->id, prefill_inflight_tokens_);
  if (!reserve.ok() && reserve_cut) {
    // The Prefill failed first and the Reserve was cancelled for it. It may
    // have made a reservation: released as if it had (NOT_FOUND is as good),
    // before a retry reserves under the same id. The Prefill's failure
    // decides.
    reserved_ = true;
    return OnPrefilled(prefill);
  }
  // A failed Reserve decides: the Prefill was cancelled for it (or never sent).
  if (!reserve.ok()) return OnReserveFailed(reserve);
  if (!prefill_sent_) {  // cancelled between the two
    core_->registry_->RemoveInflight(placement_->decode.id, 0);
    core_->DropReservation(std::exchange(kept_reservation_, 0));
    Release();
    return Finish(absl::CancelledError("client cancelled"));
  }
  // A Prefill cancelled because its reservation could not be handed over
  // failed the way the handover did (a prefill worker that is gone).
  OnPrefilled(!prefill.ok() && !provide.ok() ? provide : prefill);
}

void RouterCore::Call::OnReserveFailed(const grpc::Status& s) {
  const std::string& decode_id = placement_->decode.id;
  core_->registry_->RemoveInflight(decode_id, 0);
  // A Reserve the worker refused made nothing; one whose answer was lost
  // or abandoned (deadline, cancel, a worker that stopped or went away)
  // may have made a reservation: release it once this call is gone.
  if (s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED &&
      s.error_code() != grpc::StatusCode::INVALID_ARGUMENT &&
      s.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
    core_->SendRelease(decode_id, worker_request_id_, placement_->decode.stubs, weak_from_this(),
                       RouterCore::kReleaseFailed);
  }
  if (cancelled()) return Finish(absl::CancelledError("client cancelled"));
  if (Gone(s)) core_->registry_->MarkFailed(decode_id);
  if (!Gone(s) && s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return Finish(FromGrpc(s));
  exclude_decode_.push_back(decode_id);
  return Retry(s);
}

void RouterCore::Call::OnPrefilled(const grpc::Status& s) {
  const std::string prefill_id = placement_->prefill->id;
  const std::string decode_id = placement_->decode.id;
  core_->DropReservation(std::exchange(kept_reservation_, 0));
  if (s.ok()) core_->NoteProgress(prefill_id, core_->Now());  // the worker is not stuck
  if (!s.ok()) {
    core_->registry_->RemoveInflight(decode_id, 0);
    if (cancelled()) {
      Release();
      return Finish(absl::CancelledError("client cancelled"));
    }
    if (s.error_code() == grpc::StatusCode::ABORTED) {  // the transfer to the decode worker failed
      core_->registry_->MarkFailed(decode_id);
      exclude_decode_.push_back(decode_id);
    } else if (Gone(s)) {
      core_->registry_->MarkFailed(prefill_id);
      exclude_prefill_.push_back(prefill_id);
    } else {
      Release();
      return Finish(FromGrpc(s));
    }
    return Release([self = shared_from_this(), s] { self->Retry(s); });
  }
  PrefillObservation obs;
  obs.prompt_tokens = static_cast<int32_t>(context_.size());
  obs.cached_tokens = prefilled_.cached_tokens();
  obs.prefill_ms = prefilled_.prefill_ms();
  obs.transfer_ms = prefilled_.transfer_ms();
  obs.transferred_blocks =
      reservation_.block_bytes() > 0
          ? static_cast<int32_t>(prefilled_.transferred_bytes() / reservation_.block_bytes())
          : 0;
  core_->placement_.ObservePrefill(prefill_id, obs);
  // The learned cost, visible in /metrics beside the predictions it makes.
  RouterMetrics::Get()
      .prefill_cost->WithLabels({prefill_id})
      ->Set(core_->placement_.MsPerToken(prefill_id) / 1000.0);
  RouterMetrics::Get().kv_bytes->WithLabels({})->Increment(
      static_cast<double>(prefilled_.transferred_bytes()));
  // Usage describes the client's prompt: a migration's prefill of prompt +
  // sent tokens does not replace it.
  if (migrations_ == 0) summary_.mutable_usage()->set_cached_tokens(prefilled_.cached_tokens());
  summary_.mutable_timings()->set_prefill_ms(prefilled_.prefill_ms());
  summary_.mutable_timings()->set_transfer_ms(prefilled_.transfer_ms());
  summary_.mutable_timings()->set_queue_ms(summary_.timings().queue_ms() + prefilled_.queue_ms());
  if (prefilled_.first_token_is_eos()) {
    core_->registry_->RemoveInflight(decode_id, 0);
    Release();
    finish_ = tandem::v1::FINISH_REASON_STOP;
    if (sent_tokens_ == 0) summary_.mutable_timings()->set_first_token_ms(Ms(core_->Now() - start_));
    return Complete();
  }
  first_token_ = prefilled_.first_token();
  inflight_recorded_ = false;  // computed: the worker's Stored events take over
  LeaveQueue();
  core_->registry_->RemoveInflight(decode_id, 0);  // StartDecode counts it again
  if (!SendFirstTokenEarly()) {                    // a stop string in the first token: nothing to decode
    Release();
    return Complete();
  }
  StartDecode();
}

bool RouterCore::Call::SendFirstTokenEarly() {
  if (core_->model_->tokenizer == nullptr) return true;  // the decode worker's stream sends it
  if (!resumed_text_.has_value()) {
    resumed_text_.emplace(core_->model_->tokenizer.get());
    for (int32_t id : sent_ids_) resumed_text_->Push(id);
  }
  echo_pending_ = 1;
  return SendTokens({&*first_token_, 1}, std::string());
}

void RouterCore::Call::StartDecode() {
  // 3. Stream the decode worker's tokens to the client.
  tandem::v1::DecodeRequest req;
  req.set_request_id(worker_request_id_);
  if (first_token_.has_value()) {
    req.set_kv_ready(true);
    req.set_first_token(*first_token_);
    // The decode worker checks the transferred blocks against these.
    *req.mutable_kv_block_crc32c() = prefilled_.kv_block_crc32c();
    decode_inflight_tokens_ = 0;
  } else {  // aggregated: the decode worker prefills too
    *req.mutable_prompt_token_ids() = {context_.begin(), context_.end()};
    req.set_max_tokens(to_generate_);
    *req.mutable_sampling() = sampling_;
    req.set_stop_at_eos(stop_at_eos_);
    SetPrefetchHint(*placement_, req.mutable_prefetch_hint());
    decode_inflight_tokens_ = static_cast<int64_t>(context_.size()) - placement_->predicted_cached_tokens;
    if (summary_.timings().queue_ms() == 0)
      summary_.mutable_timings()->set_queue_ms(Ms(core_->Now() - start_));
  }
  auto* stream = new DecodeStream(shared_from_this(), std::move(req));
  stream->context()->set_deadline(absl::ToChronoTime(deadline_));
  if (!Activate(stream->context(), InFlightCall::Step::kDecode)) {
    delete stream;
    if (reserved_) Release();
    return Finish(absl::CancelledError("client cancelled"));
  }
  core_->registry_->AddInflight(placement_->decode.id, decode_inflight_tokens_);
  if (std::exchange(migrating_, false)) RouterMetrics::Get().migrations->WithLabels({"moved"})->Increment();
  stream->Go(placement_->decode.stubs->decode.get());
}

bool RouterCore::Call::OnDecodeResponse(const GenerateResponse& in) {
  if (cancelled()) return false;
  if (in.has_summary()) {
    finish_ = in.summary().finish_reason();
    if (!first_token_.has_value() && migrations_ == 0) {  // aggregated: the decode worker's cache hit
      summary_.mutable_usage()->set_cached_tokens(in.summary().usage().cached_tokens());
    }
    return true;
  }
  const tandem::v1::TokenChunk& chunk = in.chunk();
  if (chunk.token_ids_size() > 0) {
    last_token_ = core_->Now();
    absl::MutexLock lock(&mu_);
    if (watch_.has_value()) watch_->last_token = last_token_;
  }
  absl::Span<const int32_t> ids(chunk.token_ids().data(), chunk.token_ids_size());
  const size_t echoed = std::min<size_t>(echo_pending_, ids.size());
  if (echoed > 0) {
    // The ids are the sampler's (seeded, batch-invariant kernels): the echo
    // equals the token sent; a difference would mean a broken invariant.
    if (first_token_.has_value() && ids[0] != *first_token_) {
      LOG(WARNING) << "request " << request_id_ << ": the decode worker's first token " << ids[0]
                   << " differs from the prefill worker's " << *first_token_;
    }
    echo_pending_ -= static_cast<int32_t>(echoed);
    ids.remove_prefix(echoed);
    if (ids.empty()) return true;  // its text is rendered here (resumed_text_)
  }
  return SendTokens(ids, chunk.text());
}

bool RouterCore::Call::SendTokens(absl::Span<const int32_t> ids, const std::string& worker_text) {
  tandem::v1::TokenChunk out;
  *out.mutable_token_ids() = {ids.begin(), ids.end()};
  sent_tokens_ += static_cast<int32_t>(ids.size());
  sent_ids_.insert(sent_ids_.end(), ids.begin(), ids.end());
  if (resumed_text_.has_value()) {
    std::string text;
    for (int32_t id : ids) text += resumed_text_->Push(id);
    out.set_text(filter_->Push(text));
  } else {
    out.set_text(filter_->Push(worker_text));
  }
  if (!ids.empty()) inflight_recorded_ = false;  // an aggregated prefill is done
  if (first_token_time_ == absl::InfinitePast() && !ids.empty()) {
    first_token_time_ = core_->Now();
    LeaveQueue();
    summary_.mutable_timings()->set_first_token_ms(Ms(first_token_time_ - start_));
  }
  observer_->OnChunk(out);
  if (filter_->stopped()) {
    finish_ = tandem::v1::FINISH_REASON_STOP;
    return false;
  }
  return true;
}

void RouterCore::Call::OnDecodeDone(const grpc::Status& result) {
  const grpc::Status s = Settle(result);
  const std::string decode_id = placement_->decode.id;
  core_->registry_->RemoveInflight(decode_id, decode_inflight_tokens_);
  if (cancelled()) return Finish(absl::CancelledError("client cancelled"));
  if (!filter_->stopped() && !s.ok()) {
    if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !Gone(s)) {
      return Finish(absl::DeadlineExceededError("request deadline passed"));
    }
    if (!Gone(s)) {
      return Finish(absl::UnavailableError(
          absl::StrFormat("decode worker %s failed mid-stream: %s", decode_id, s.error_message())));
    }
    core_->registry_->MarkFailed(decode_id);
    exclude_decode_.push_back(decode_id);
    if (sent_tokens_ == 0) return Retry(s);  // nothing reached the client: try another decode worker
    return Migrate(decode_id, s);
  }
  Complete();
}

void RouterCore::Call::Complete() {
  std::string rest = resumed_text_.has_value() ? filter_->Push(resumed_text_->Finish()) : std::string();
  rest += filter_->Flush();
  if (!rest.empty()) {
    tandem::v1::TokenChunk out;
    out.set_text(rest);
    observer_->OnChunk(out);
  }
  summary_.set_finish_reason(finish_);
  summary_.mutable_usage()->set_completion_tokens(sent_tokens_);
  Finish(absl::OkStatus());
}

// The continuation is exact: the workers compute the KV of prompt + sent
// tokens with batch-invariant kernels (bit-identical to the KV the lost
// worker built token by token), and a seeded sampler skips the draws the
// sent tokens used, so the new worker sends what the lost one would have.
void RouterCore::Call::Migrate(const std::string& from, const grpc::Status& why) {
  last_error_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                             absl::StrFormat("decode worker %s failed mid-stream after %d tokens: %s", from,
                                             sent_tokens_, why.error_message()));
  if (migrations_ >= core_->options_.max_migrations) {
    RouterMetrics::Get().migrations->WithLabels({"failed"})->Increment();
    return Finish(absl::UnavailableError(migrations_ == 0
                                             ? last_error_.error_message()
                                             : absl::StrFormat("%s (the stream had moved %d times already)",
                                                               last_error_.error_message(), migrations_)));
  }
  const int32_t remaining = max_tokens_ - sent_tokens_;
  if (remaining <= 0) {  // every token was sent; only the summary was lost
    finish_ = tandem::v1::FINISH_REASON_LENGTH;
    return Complete();
  }
  ++migrations_;
  migrating_ = true;
  echo_pending_ = 0;  // the next stream continues after the sent tokens
  context_ = prompt_;
  context_.insert(context_.end(), sent_ids_.begin(), sent_ids_.end());
  to_generate_ = remaining;
  sampling_.set_skip_draws(client_skip_draws_ + sent_tokens_);
  hashes_.clear();  // recomputed over the new context
  attempts_ = 0;    // the moved stream gets max_attempts placements of its own
  if (!resumed_text_.has_value() && core_->model_->tokenizer != nullptr) {
    resumed_text_.emplace(core_->model_->tokenizer.get());
    for (int32_t id : sent_ids_) resumed_text_->Push(id);  // already sent: only its held bytes matter
  }
  LOG(INFO) << "request " << request_id_ << ": moving its stream off " << from << " after " << sent_tokens_
            << " tokens (" << why.error_message() << ")";
  Attempt();
}

void RouterCore::Call::Release(std::function<void()> then) {
  if (!reserved_ || !placement_.has_value()) {
    if (then) then();
    return;
  }
  reserved_ = false;
  // If the decode worker is alive it frees the blocks now rather than at the
  // reservation's TTL; if this Release does not reach it, the sweeper sends
  // it again once this call is gone (RouterCore::RetryReleases).
  core_->SendRelease(placement_->decode.id, worker_request_id_, placement_->decode.stubs, weak_from_this(),
                     RouterCore::kReleaseInFlight, std::move(then));
}

void RouterCore::SendRelease(std::string worker_id, std::string request_id,
                             std::shared_ptr<const WorkerStubs> stubs, std::weak_ptr<const void> call,
                             ReleaseState start, std::function<void()> then, absl::Time expires) {
  if (stubs == nullptr || stubs->decode == nullptr) {
    if (then) then();
    return;
  }
  auto state = std::make_shared<std::atomic<int>>(start);
  {
    absl::MutexLock lock(&release_mu_);
    // Past the reservation's TTL on the worker's clock (plus a margin), it
    // has freed the blocks itself; a re-sent Release keeps the first one's
    // expiry, so a worker that never answers is not retried forever.
    if (expires == absl::InfiniteFuture())
      expires = absl::Now() + options_.reservation_ttl + absl::Seconds(1);
    releases_.push_back(
        {std::move(worker_id), request_id, std::move(call), expires, absl::Now() + absl::Seconds(1), state});
  }
  if (start != kReleaseInFlight) {
    if (then) then();
    return;
  }
  // The callback owns what it needs (not the core, which it may outlive).
  struct Pending {
    grpc::ClientContext ctx;
    tandem::v1::ReleaseRequest req;
    tandem::v1::ReleaseResponse resp;
    std::shared_ptr<tandem::v1::DecodeWorker::Stub> stub;
    std::shared_ptr<std::atomic<int>> state;
    std::function<void()> then;
  };
  auto* p = new Pending;
  p->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  p->req.set_request_id(std::move(request_id));
  p->stub = stubs->decode;
  p->state = std::move(state);
  p->then = std::move(then);
  p->stub->async()->Release(&p->ctx, &p->req, &p->resp, [p](grpc::Status s) {
    std::unique_ptr<Pending> owned(p);
    // NOT_FOUND: the worker holds no reservation of that id (it ended, or
    // the Reserve never created one) — as good as released.
    const bool answered = s.ok() || s.error_code() == grpc::StatusCode::NOT_FOUND;
    owned->state->store(answered ? kReleaseDone : kReleaseFailed);
    if (owned->then) owned->then();
  });
}

void RouterCore::RetryReleases() {
  {
    absl::MutexLock lock(&release_mu_);
    if (releases_.empty()) return;
  }
  std::vector<std::string> unhealthy = registry_->Unhealthy();
  std::vector<PendingRelease> resend;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&release_mu_);
    std::erase_if(releases_, [&](PendingRelease& r) {
      const int state = r.state->load();
      if (state == kReleaseDone || now >= r.expires) return true;
      if (state == kReleaseInFlight || now < r.not_before || !r.call.expired()) return false;
      if (std::find(unhealthy.begin(), unhealthy.end(), r.worker_id) != unhealthy.end()) return false;
      resend.push_back(std::move(r));
      return true;
    });
  }
  for (PendingRelease& r : resend) {
    // A worker that registered again (a restart) has new stubs.
    std::optional<WorkerHandle> handle = registry_->Get(r.worker_id);
    if (!handle.has_value()) continue;  // gone from the registry: nothing to free
    RouterMetrics::Get().releases_resent->Increment();
    SendRelease(std::move(r.worker_id), std::move(r.request_id), handle->stubs, {}, kReleaseInFlight, nullptr,
                r.expires);
  }
}

void RouterCore::Call::Finish(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    done_ = true;
    active_ = nullptr;
    watch_.reset();
  }
  if (!status.ok()) ForgetInflight();
  core_->Unwatch(this, placement_.has_value() ? placement_->decode.id : std::string(), last_token_);
  LeaveQueue();
  core_->flow_.Ended(flow_key_);
  // Its decode slot is free: what waited for decode room may go now.
  core_->OnDecodeRoomChanged();
  summary_.set_migrations(migrations_);
  if (migrating_ && !status.ok()) RouterMetrics::Get().migrations->WithLabels({"failed"})->Increment();
  const absl::Time now = core_->Now();
  summary_.mutable_timings()->set_total_ms(Ms(now - start_));
  RouterMetrics& m = RouterMetrics::Get();
  m.requests->WithLabels({RequestOutcome(status)})->Increment();
  if (const std::string_view reason = ShedReasonOf(status); !reason.empty()) {
    m.shed->WithLabels({std::string(reason)})->Increment();
  }
  if (status.ok()) {
    const std::string policy = PolicyName(core_->options_.placement.policy);
    m.prompt_tokens->WithLabels({})->Increment(summary_.usage().prompt_tokens());
    m.cached_tokens->WithLabels({summary_.prefill_worker().empty() ? "decode" : "prefill"})
        ->Increment(summary_.usage().cached_tokens());
    m.e2e->WithLabels({policy})->Observe(absl::ToDoubleSeconds(now - start_));
    if (summary_.timings().has_predicted_ttft_ms() && summary_.timings().first_token_ms() > 0) {
      m.ttft_prediction_error->WithLabels({policy})->Observe(
          (summary_.timings().first_token_ms() - summary_.timings().predicted_ttft_ms()) / 1000.0);
    }
    if (first_token_time_ != absl::InfinitePast()) {
      m.ttft->WithLabels({policy})->Observe(absl::ToDoubleSeconds(first_token_time_ - start_));
      if (sent_tokens_ > 1) {
        m.tpot->WithLabels({policy})->Observe(absl::ToDoubleSeconds(now - first_token_time_) /
                                              (sent_tokens_ - 1));
      }
    }
  }
  m.in_flight->Decrement();
  core_->in_flight_.fetch_sub(1);
  observer_->OnDone(status, summary_);
}

// --- RouterCore.

RouterCore::RouterCore(RouterOptions options, const model::ModelInfo* model, WorkerRegistry* registry)
    : options_(std::move(options)),
      model_(model),
      registry_(registry),
      placement_(options_.placement, registry, &index_),
      flow_({.queue_ttl = options_.queue_ttl,
             .tenant_weights = options_.tenant_weights,
             .below_share_skips_limit = options_.below_share_skips_limit,
             .limits = [this] { return FlowLimits(); },
             .clock = options_.clock}) {}

RouterCore::~RouterCore() { Stop(); }

void RouterCore::StartBackground() {
  if (!snapshot_thread_.joinable()) snapshot_thread_ = std::thread([this] { SnapshotLoop(); });
  if (!sweep_thread_.joinable()) sweep_thread_ = std::thread([this] { SweepLoop(); });
  if (!renew_thread_.joinable()) renew_thread_ = std::thread([this] { RenewLoop(); });
}

void RouterCore::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (snapshot_thread_.joinable()) snapshot_thread_.join();
  if (sweep_thread_.joinable()) sweep_thread_.join();
  if (renew_thread_.joinable()) renew_thread_.join();
  // Calls still alive (a front end stopped without waiting for them, or
  // their last worker callbacks are still pending on gRPC's threads) hold a
  // pointer to this core: cancel those on a worker and wait, bounded, until
  // every call object is gone.
  std::vector<std::shared_ptr<Call>> live;
  {
    absl::MutexLock lock(&watch_mu_);
    for (const auto& [key, weak] : watched_) {
      if (std::shared_ptr<Call> call = weak.lock()) live.push_back(std::move(call));
    }
  }
  for (const std::shared_ptr<Call>& call : live) call->Cancel();
  live.clear();
  absl::MutexLock lock(&alive_mu_);
  auto none_alive = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(alive_mu_) { return calls_alive_ == 0; };
  if (!alive_mu_.AwaitWithTimeout(absl::Condition(&none_alive), kStopWaitForCalls)) {
    LOG(WARNING) << "router: " << calls_alive_ << " request(s) still alive " << kStopWaitForCalls
                 << " after stopping; their late callbacks may touch a destroyed core";
  }
}

std::shared_ptr<GenerationCall> RouterCore::Start(const GenerateRequest& request, absl::Time deadline,
                                                  std::shared_ptr<GenerationObserver> observer) {
  const absl::Time cap = Now() + options_.default_deadline;
  auto call = std::make_shared<Call>(this, std::min(deadline, cap), std::move(observer));
  call->Begin(request);
  return call;
}

FlowQueue::Limits RouterCore::FlowLimits() const {
  int prefill_workers = 0, decode_workers = 0;
  registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_PREFILL, {},
                            [&](const WorkerView&) { ++prefill_workers; });
  if (prefill_workers == 0) {
    registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_DECODE, {},
                              [&](const WorkerView&) { ++decode_workers; });
  }
  // With no healthy worker one request goes through, to be told so (503).
  const int64_t workers = std::max(1, prefill_workers > 0 ? prefill_workers : decode_workers);
  FlowQueue::Limits limits{.max_admitted = std::max(0, options_.max_queued_prefills_per_worker) * workers,
                           .max_running = std::max(0, options_.max_inflight_prefills_per_worker) * workers};
  if (options_.decode_tpot_limit_ms > 0) {
    // Room summed over the healthy decode workers (-1: one has reported no
    // step yet, no bound); with none healthy, no bound either, so the
    // request is dispatched and told so (503).
    int64_t room = 0;
    bool any = false;
    registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_DECODE, {}, [&](const WorkerView& w) {
      any = true;
      const int64_t r = DecodeRoomOf(w, options_.decode_tpot_limit_ms);
      room = (room < 0 || r < 0) ? -1 : room + r;
    });
    limits.dispatch_room = any ? room : -1;
  }
  return limits;
}

void RouterCore::OnDecodeRoomChanged() {
  if (options_.decode_tpot_limit_ms > 0) flow_.Pump();
}

void RouterCore::PublishQueueGauges(const FlowQueue::Limits& limits) {
  const FlowQueue::Stats stats = flow_.stats();
  RouterMetrics& m = RouterMetrics::Get();
  m.queue_running->Set(static_cast<double>(stats.running));
  m.decode_room->Set(static_cast<double>(limits.dispatch_room));
  absl::MutexLock lock(&gauge_mu_);
  for (int32_t priority : depth_priorities_) {
    if (!stats.waiting_by_priority.contains(priority))
      m.queue_depth->WithLabels({absl::StrCat(priority)})->Set(0);
  }
  for (const auto& [priority, n] : stats.waiting_by_priority) {
    depth_priorities_.insert(priority);
    m.queue_depth->WithLabels({absl::StrCat(priority)})->Set(static_cast<double>(n));
  }
}

uint64_t RouterCore::KeepReservation(std::string request_id, std::shared_ptr<const WorkerStubs> stubs) {
  absl::MutexLock lock(&renew_mu_);
  const uint64_t key = next_kept_++;
  kept_[key] = {std::move(request_id), std::move(stubs)};
  return key;
}

void RouterCore::DropReservation(uint64_t key) {
  if (key == 0) return;
  absl::MutexLock lock(&renew_mu_);
  kept_.erase(key);
}

void RouterCore::RenewReservations() {
  std::vector<KeptReservation> due;
  {
    absl::MutexLock lock(&renew_mu_);
    due.reserve(kept_.size());
    for (const auto& [key, kept] : kept_) due.push_back(kept);
  }
  const int32_t ttl_ms = static_cast<int32_t>(absl::ToInt64Milliseconds(options_.reservation_ttl));
  for (KeptReservation& kept : due) {
    if (kept.stubs == nullptr || kept.stubs->decode == nullptr) continue;
    // Fire and forget, like Release: a lost renewal is covered by the next
    // (every TTL/4); NOT_FOUND means the reservation ended on the worker's
    // side and the request learns of it from its own calls.
    struct Pending {
      grpc::ClientContext ctx;
      tandem::v1::RenewRequest req;
      tandem::v1::RenewResponse resp;
      std::shared_ptr<tandem::v1::DecodeWorker::Stub> stub;
    };
    auto* p = new Pending;
    p->ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.reservation_ttl / 4));
    p->req.set_request_id(std::move(kept.request_id));
    p->req.set_reservation_ttl_ms(ttl_ms);
    p->stub = kept.stubs->decode;
    p->stub->async()->Renew(&p->ctx, &p->req, &p->resp, [p](grpc::Status) { delete p; });
  }
}

void RouterCore::RenewLoop() {
  // Real time on purpose: the decode worker expires reservations by its own
  // real clock, whatever clock this core decides by.
  const absl::Duration period = std::max(options_.reservation_ttl / 4, absl::Milliseconds(10));
  while (!stop_.WaitForNotificationWithTimeout(period)) RenewReservations();
}

tandem::v1::ClusterInfo RouterCore::GetClusterInfo() const {
  tandem::v1::ClusterInfo info;
  info.set_model(model_->config.model_id);
  info.set_context_length(model_->config.context_length);
  int32_t block_size = 0, decode_workers = 0, prefill_workers = 0;
  registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_DECODE, {}, [&](const WorkerView& w) {
    if (block_size == 0) block_size = w.block_size;
    ++decode_workers;
  });
  registry_->ForEachHealthy(tandem::v1::WORKER_ROLE_PREFILL, {},
                            [&](const WorkerView&) { ++prefill_workers; });
  info.set_block_size(block_size);
  info.set_decode_workers(decode_workers);
  info.set_prefill_workers(prefill_workers);
  return info;
}

void RouterCore::OnKvEvents(const tandem::v1::KvEventBatch& batch) {
  if (batch.has_load()) registry_->UpdateLoad(batch.worker_id(), batch.load());
  if (index_.Apply(batch) == KvIndex::Outcome::kNeedSnapshot) RequestSnapshot(batch.worker_id());
  PublishIndexGauges();
}

void RouterCore::PublishIndexGauges() {
  static Gauge* const gauges[3] = {RouterMetrics::Get().kv_index_entries->WithLabels({"hbm"}),
                                   RouterMetrics::Get().kv_index_entries->WithLabels({"dram"}),
                                   RouterMetrics::Get().kv_index_entries->WithLabels({"ssd"})};
  const KvIndex::Stats stats = index_.stats();
  for (int tier = 1; tier <= 3; ++tier) gauges[tier - 1]->Set(static_cast<double>(stats.tier_entries[tier]));
}

void RouterCore::OnRegistered(const std::string& worker_id) { RequestSnapshot(worker_id); }

void RouterCore::RequestSnapshot(const std::string& worker_id) {
  absl::MutexLock lock(&snapshot_mu_);
  if (std::find(snapshot_queue_.begin(), snapshot_queue_.end(), worker_id) == snapshot_queue_.end()) {
    snapshot_queue_.push_back(worker_id);
  }
}

void RouterCore::SnapshotLoop() {
  while (!stop_.HasBeenNotified()) {
    std::string worker_id;
    {
      absl::MutexLock lock(&snapshot_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(snapshot_mu_) {
        return !snapshot_queue_.empty() || stop_.HasBeenNotified();
      };
      // Bounded wait so Stop (a Notification, not this mutex) is seen.
      snapshot_mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
      if (snapshot_queue_.empty()) continue;
      worker_id = snapshot_queue_.front();
      snapshot_queue_.pop_front();
    }
    std::optional<WorkerHandle> worker = registry_->Get(worker_id);
    if (!worker.has_value() || worker->stubs == nullptr || worker->stubs->kv_events == nullptr) continue;
    const std::vector<std::string> unhealthy = registry_->Unhealthy();
    if (std::find(unhealthy.begin(), unhealthy.end(), worker_id) != unhealthy.end()) {
      continue;  // asked again when its events resume (an unknown worker's batch)
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(Now() + options_.snapshot_timeout));
    tandem::v1::KvSnapshotRequest req;
    tandem::v1::KvEventBatch snapshot;
    grpc::Status s = worker->stubs->kv_events->Snapshot(&ctx, req, &snapshot);
    if (s.ok()) {
      snapshot.set_worker_id(worker_id);  // trust the registry's name, not the payload's
      index_.ApplySnapshot(snapshot);
      PublishIndexGauges();
    } else if (s.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
      // Try again later (the worker may be starting); a dead one leaves the
      // registry's healthy set and the sweeper drops it.
      stop_.WaitForNotificationWithTimeout(absl::Milliseconds(200));
      RequestSnapshot(worker_id);
    }
  }
}

void RouterCore::Watch(const std::shared_ptr<Call>& call) {
  absl::MutexLock lock(&watch_mu_);
  watched_[call.get()] = call;
}

void RouterCore::Unwatch(const Call* call, const std::string& decode_worker, absl::Time last_token) {
  absl::MutexLock lock(&watch_mu_);
  watched_.erase(call);
  if (decode_worker.empty() || last_token == absl::InfinitePast()) return;
  absl::Time& progress = finished_progress_[decode_worker];
  progress = std::max(progress, last_token);
}

bool RouterCore::HasProgressed(const std::string& worker) {
  absl::MutexLock lock(&watch_mu_);
  return finished_progress_.contains(worker);
}

void RouterCore::NoteProgress(const std::string& worker, absl::Time at) {
  absl::MutexLock lock(&watch_mu_);
  absl::Time& progress = finished_progress_[worker];
  progress = std::max(progress, at);
}

void RouterCore::CheckInFlight() {
  std::vector<std::shared_ptr<Call>> calls;
  absl::flat_hash_map<std::string, absl::Time> progress;
  {
    absl::MutexLock lock(&watch_mu_);
    progress = finished_progress_;
    calls.reserve(watched_.size());
    for (auto it = watched_.begin(); it != watched_.end();) {
      if (std::shared_ptr<Call> call = it->second.lock()) {
        calls.push_back(std::move(call));
        ++it;
      } else {
        watched_.erase(it++);
      }
    }
  }
  // The calls first, then the registry: a handle a call took is never newer
  // than the registry's state it is judged against.
  std::vector<std::pair<Call*, std::pair<uint64_t, InFlightCall>>> in_flight;
  for (const std::shared_ptr<Call>& call : calls) {
    std::optional<std::pair<uint64_t, InFlightCall>> watched = call->InFlight();
    if (!watched.has_value()) continue;
    const InFlightCall& c = watched->second;
    if (c.last_token != absl::InfinitePast()) {
      absl::Time& p = progress[c.decode.id];
      p = std::max(p, c.last_token);
    }
    in_flight.emplace_back(call.get(), *std::move(watched));
  }
  if (in_flight.empty()) return;
  const absl::Duration heartbeat_deadline = registry_->heartbeat_deadline();
  absl::flat_hash_map<std::string, WorkerState> workers;
  for (const WorkerRegistry::WorkerInfo& w : registry_->List()) {
    workers[w.id] = WorkerState{.in_rotation = w.healthy,
                                .rotation_epoch = w.rotation_epoch,
                                .heartbeat_late = w.since_heartbeat > heartbeat_deadline,
                                .since_heartbeat = w.since_heartbeat};
  }
  const absl::Time now = Now();
  // Time the router itself did not run (WorkerRegistry::Options::
  // pause_threshold) is no worker's stall: progress counts from its end.
  if (const absl::Time awake = registry_->awake_since(); awake != absl::InfinitePast()) {
    for (auto& [worker, last] : progress) last = std::max(last, awake);
    for (auto& [call, watched] : in_flight) watched.second.began = std::max(watched.second.began, awake);
  }
  absl::flat_hash_set<std::string> judged;  // workers at fault, acted on and logged once per sweep
  for (auto& [call, watched] : in_flight) {
    std::optional<Verdict> verdict = JudgeCall(watched.second, workers, progress, now);
    if (!verdict.has_value()) continue;
    if (judged.insert(verdict->worker).second) {
      if (verdict->stalled) {
        // Out of the rotation before the stream fails, so a retry or the
        // client's next request goes elsewhere.
        registry_->MarkFailed(verdict->worker, options_.stalled_worker_hold);
        LOG(WARNING) << verdict->reason << "; out of the rotation for at least "
                     << absl::FormatDuration(options_.stalled_worker_hold) << "; cancelling its calls";
      } else {
        LOG(WARNING) << verdict->reason << "; cancelling its calls";
      }
    }
    call->Abort(watched.first, *std::move(verdict));
  }
}

void RouterCore::SweepLoop() {
  RouterMetrics& metrics = RouterMetrics::Get();
  Gauge* const workers[3] = {metrics.workers->WithLabels({"prefill"}),
                             metrics.workers->WithLabels({"decode"}), metrics.workers->WithLabels({"store"})};
  while (!stop_.WaitForNotificationWithTimeout(options_.sweep_interval)) {
    // Queue TTL and deadlines of waiting requests; room from workers that
    // joined.
    PublishQueueGauges(flow_.Expire());
    CheckInFlight();
    RetryReleases();
    for (const std::string& id : registry_->Unhealthy()) {
      if (index_.Known(id)) {
        index_.RemoveWorker(id);
        PublishIndexGauges();
      }
    }
    int healthy[3] = {0, 0, 0};
    for (const WorkerRegistry::WorkerInfo& w : registry_->List()) {
      const int i = w.role == tandem::v1::WORKER_ROLE_PREFILL  ? 0
                    : w.role == tandem::v1::WORKER_ROLE_DECODE ? 1
                    : w.role == tandem::v1::WORKER_ROLE_STORE  ? 2
                                                               : -1;
      if (w.healthy && i >= 0) ++healthy[i];
    }
    for (int i = 0; i < 3; ++i) workers[i]->Set(healthy[i]);
  }
}

}  // namespace tandem::router
