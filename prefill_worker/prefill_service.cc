#include "prefill_worker/prefill_service.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"
#include "proto/grpc_status.h"
#include "transfer/ucx_region_proto.h"
#include "worker_common/sampling.h"
#include "worker_common/worker_status.h"

namespace tandem::prefill_worker {
namespace {

int64_t PromptBlocks(int64_t prompt_tokens, int32_t block_size) {
  return (prompt_tokens + block_size - 1) / block_size;
}
int64_t PromptBlocks(const tandem::v1::PrefillRequest& r, int32_t block_size) {
  return PromptBlocks(r.prompt_token_ids_size(), block_size);
}

std::string AwaitKey(const std::string& request_id, int32_t attempt) {
  return absl::StrCat(request_id, "#", attempt);
}

// Time finished prompts waited for a reservation that follows the request
// (PrefillRequest.reservation_follows): what the overlap of Reserve and
// prefill did not hide.
void RecordReservationWait(absl::Duration time) {
  static Counter* const seconds_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_prefill_reservation_wait_seconds_total",
                   "Time computed prompts waited for their decode reservation before the KV send")
          ->WithLabels({});
  seconds_total->Increment(absl::ToDoubleSeconds(time));
}

// GB/s = rate(bytes_total) / rate(seconds_total); the gauge keeps the last
// request's figure for a glance.
void RecordTransfer(uint64_t bytes, absl::Duration time) {
  static Counter* const bytes_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_transfer_bytes_total", "KV bytes written to decode workers over UCX")
          ->WithLabels({});
  static Counter* const seconds_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_transfer_seconds_total", "Time spent writing KV to decode workers")
          ->WithLabels({});
  static Gauge* const gbps =
      DefaultMetricsRegistry()
          .Gauge("tandem_worker_kv_transfer_last_gbps", "The last request's KV transfer rate, GB/s")
          ->WithLabels({});
  bytes_total->Increment(static_cast<double>(bytes));
  seconds_total->Increment(absl::ToDoubleSeconds(time));
  if (time > absl::ZeroDuration()) {
    gbps->Set(static_cast<double>(bytes) / absl::ToDoubleSeconds(time) / 1e9);
  }
}

// KV written while later prefill chunks computed (chunk streaming), and the
// time those writes took: transfer time hidden behind compute.
void RecordStreamed(uint64_t bytes, absl::Duration time) {
  static Counter* const bytes_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_streamed_bytes_total",
                   "KV bytes sent while later prefill chunks computed (chunk streaming)")
          ->WithLabels({});
  static Counter* const seconds_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_streamed_seconds_total",
                   "Time spent writing KV while later prefill chunks computed (hidden behind compute)")
          ->WithLabels({});
  bytes_total->Increment(static_cast<double>(bytes));
  seconds_total->Increment(absl::ToDoubleSeconds(time));
}

// Reservations kept for a Prefill not yet arrived, at most.
constexpr size_t kMaxEarlyReservations = 4096;

}  // namespace

// One Prefill call. gRPC owns the reactor until OnDone, which deletes it.
// Its phases hand it from one thread to the next, and only the last one
// finishes the RPC: the engine thread (the request's listener, which the
// runner calls until exactly one final update), then a SendQueue thread
// (the send, the release of the held blocks, Finish). So every call into
// the reactor finds it alive.
class PrefillCall final : public grpc::ServerUnaryReactor {
 public:
  PrefillCall(PrefillService* service, grpc::CallbackServerContext* context,
              const tandem::v1::PrefillRequest* request, tandem::v1::PrefillResponse* response)
      : service_(service),
        request_(*request),
        response_(response),
        start_(absl::Now()),
        deadline_(
            std::min(absl::FromChrono(context->deadline()), start_ + service->options_.max_request_time)) {
    const absl::Status started = Start();
    if (!started.ok()) End(started);
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    // While it computes, the engine ends it (kCancelled finishes the call).
    // Later, its blocks are held for the send: SendBlocks sees cancelled_.
    if (phase_ == Phase::kComputing && submitted_) (void)service_->runner_->CancelAsync(id_);
    // A send waiting for its reservation stops waiting.
    OpenGateLocked(nullptr, absl::CancelledError("cancelled while waiting for the decode reservation"));
  }

  void OnDone() override { delete this; }

  // The reservation that followed the request (ProvideReservation), or
  // why none will: the waiting sends go on. Returns the reservation's check
  // (INVALID_ARGUMENT: the call fails with it too). Called under the
  // service's awaiting_mu_, so the call is alive.
  absl::Status Provide(const tandem::v1::KvReservation& reservation) {
    absl::Status valid = service_->CheckReservation(request_.prompt_token_ids_size(), reservation);
    absl::MutexLock lock(&mu_);
    if (gate_open_) return absl::OkStatus();  // a second copy, or the call stopped waiting
    if (valid.ok()) provided_ = reservation;
    OpenGateLocked(valid.ok() ? &provided_ : nullptr, valid);
    return valid;
  }
  // ExpireReservationWaits: past reservation_wait, the wait ends.
  void ExpireWait(absl::Time now) {
    absl::MutexLock lock(&mu_);
    if (gate_open_ || now < wait_deadline_) return;
    OpenGateLocked(nullptr, absl::DeadlineExceededError(
                                absl::StrFormat("no decode reservation arrived within %s of the request",
                                                absl::FormatDuration(service_->options_.reservation_wait))));
  }

 private:
  enum class Phase { kComputing, kSending, kDone };

  // Opens the gate the KV sends wait behind (see Post): with the
  // reservation, or with `error` when none will come.
  void OpenGateLocked(const tandem::v1::KvReservation* reservation, absl::Status error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (gate_open_) return;
    gate_open_ = true;
    gate_opened_ = absl::Now();
    reservation_ = reservation;
    gate_error_ = std::move(error);
    if (!jobs_.empty() && !draining_) {
      draining_ = true;
      service_->senders_.Push([this] { Drain(); });
    }
  }

  absl::Status Start();
  // Engine thread: the prompt's updates; the final one moves the call on.
  void OnUpdate(const engine::SequenceUpdate& u);
  // The first token and timings into the response; Internal when the engine
  // broke its promise (no token, or too few held blocks).
  absl::Status TakeResult(const engine::SequenceUpdate& done);
  // A SendQueue thread: writes the blocks the decode worker lacks, releases
  // the held blocks and finishes the call.
  void SendBlocks(std::vector<int32_t> held_blocks);
  absl::Status WriteBlocks(absl::Span<const int32_t> held_blocks);
  // Finishes the RPC; called exactly once.
  void End(const absl::Status& status);

  // Chunk streaming (PrefillServiceOptions::stream_kv). Engine thread: copies
  // the prompt blocks a prefill chunk completed (the engine may reuse them
  // after this update) and queues their send.
  void StreamChunk(const engine::SequenceUpdate& u);
  // Strand: writes blocks [first, first + n) of the prompt from `bytes`.
  void WriteChunk(int64_t first, const std::vector<uint8_t>& bytes);
  // The call's strand: jobs run one at a time, in order, on SendQueue
  // threads, so streamed chunks, the final send and End never overlap and
  // the checksums stay in block order. `last` ends the call (nothing of the
  // call is touched after it runs). A job that `needs_reservation` waits
  // until the gate opens (OpenGateLocked), and the jobs after it with it; a
  // last job that does not need it (the call failed) drops the waiting
  // sends and runs at once.
  struct Job {
    std::function<void()> run;
    bool last = false;
    bool needs_reservation = false;
  };
  void Post(std::function<void()> job, bool last, bool needs_reservation = false);
  void Drain();

  PrefillService* const service_;
  const tandem::v1::PrefillRequest& request_;  // gRPC's, valid until Finish
  tandem::v1::PrefillResponse* const response_;
  const absl::Time start_;
  const absl::Time deadline_;
  int64_t id_ = 0;  // written by Start, before any other thread sees the call
  bool eos_ = false;
  absl::Time computed_;

  // With reservation_follows, AwaitKey of the request: registered with the
  // service until End. Empty otherwise.
  std::string await_key_;
  absl::Time wait_deadline_ = absl::InfiniteFuture();

  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kComputing;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // The gate: open once the reservation is known (at once when the request
  // carries it). reservation_ (null when it opened with gate_error_) and
  // gate_error_ are written once, under mu_, as it opens, and read by
  // strand jobs that need the reservation, which run only after.
  bool gate_open_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time gate_opened_;
  const tandem::v1::KvReservation* reservation_ = nullptr;
  absl::Status gate_error_;
  tandem::v1::KvReservation provided_;  // ProvideReservation's copy

  // Strand-only (see Post): prompt blocks sent ahead of the final update
  // end at streamed_upto_ (0: none), their bytes and write time, and the
  // first failure, which the final send reports.
  int64_t streamed_upto_ = 0;
  uint64_t streamed_bytes_ = 0;
  absl::Duration streamed_time_;
  absl::Status stream_error_;
};

absl::Status PrefillCall::Start() {
  if (request_.prompt_token_ids_size() == 0) return absl::InvalidArgumentError("prompt_token_ids: empty");
  if (request_.reservation_follows()) {
    if (request_.has_reservation()) {
      return absl::InvalidArgumentError("reservation: set, and reservation_follows says it follows");
    }
    wait_deadline_ = std::min(deadline_, start_ + service_->options_.reservation_wait);
    await_key_ = AwaitKey(request_.request_id(), request_.attempt());
    // Opens the gate at once when the reservation came first.
    service_->AwaitReservation(await_key_, this);
    absl::MutexLock lock(&mu_);
    if (!gate_error_.ok()) return gate_error_;  // it came first and does not fit
  } else {
    TANDEM_RETURN_IF_ERROR(
        service_->CheckReservation(request_.prompt_token_ids_size(), request_.reservation()));
    absl::MutexLock lock(&mu_);
    OpenGateLocked(&request_.reservation(), absl::OkStatus());
  }
  id_ = service_->next_engine_id_.fetch_add(1);
  engine::EngineRequest req;
  req.id = id_;
  req.prompt_tokens.assign(request_.prompt_token_ids().begin(), request_.prompt_token_ids().end());
  if (service_->options_.on_prompt) {
    service_->options_.on_prompt(req.prompt_tokens,
                                 request_.has_prefetch_hint() ? &request_.prefetch_hint() : nullptr);
  }
  req.max_tokens = 1;
  req.sampling = worker_common::SamplingFromProto(request_.sampling());
  req.stop_at_eos = request_.stop_at_eos();
  req.priority = request_.priority();
  req.tenant = request_.tenant();
  req.hold_blocks_on_finish = true;
  req.stream_prompt_blocks = service_->options_.stream_kv;
  absl::MutexLock lock(&mu_);
  absl::Status queued = service_->runner_->SubmitAsync(
      std::move(req), [this](const engine::SequenceUpdate& u) { OnUpdate(u); }, deadline_);
  submitted_ = queued.ok();
  return queued;
}

void PrefillCall::OnUpdate(const engine::SequenceUpdate& u) {
  switch (u.end) {
    case engine::SequenceEnd::kNone:
      if (!u.computed_blocks.empty()) StreamChunk(u);
      return;
    case engine::SequenceEnd::kError:
      Post([this, error = u.error] { End(error); }, /*last=*/true);
      return;
    case engine::SequenceEnd::kCancelled:
      Post([this] { End(absl::CancelledError("cancelled")); }, /*last=*/true);
      return;
    case engine::SequenceEnd::kLength:
    case engine::SequenceEnd::kStop:
      break;
  }
  if (absl::Status taken = TakeResult(u); !taken.ok()) {
    service_->ReleaseHeldAsync(id_);
    Post([this, taken] { End(taken); }, /*last=*/true);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    phase_ = Phase::kSending;
  }
  // Even a first token that ends the generation (nothing to send) answers
  // only once the reservation is known: the router handles a Prefill's
  // answer after its Reserve's.
  Post([this, held = u.held_blocks]() mutable { SendBlocks(std::move(held)); }, /*last=*/true,
       /*needs_reservation=*/true);
}

void PrefillCall::Post(std::function<void()> job, bool last, bool needs_reservation) {
  absl::MutexLock lock(&mu_);
  if (last && !needs_reservation && !gate_open_) {
    // The call failed before its reservation came: its sends are moot.
    std::erase_if(jobs_, [](const Job& j) { return j.needs_reservation; });
  }
  jobs_.push_back({std::move(job), last, needs_reservation});
  if (draining_ || (jobs_.front().needs_reservation && !gate_open_)) return;
  draining_ = true;
  service_->senders_.Push([this] { Drain(); });
}

void PrefillCall::Drain() {
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      if (jobs_.empty() || (jobs_.front().needs_reservation && !gate_open_)) {
        draining_ = false;  // OpenGateLocked or Post starts draining again
        return;
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    const bool last = job.last;
    job.run();
    if (last) return;  // the call may be gone
  }
}

void PrefillCall::StreamChunk(const engine::SequenceUpdate& u) {
  const PrefillServiceOptions& options = service_->options_;
  // Blocks the decode worker holds are not copied, when that is known yet
  // (a reservation that follows the request is read on the strand only;
  // WriteChunk skips them then).
  const int64_t cached = request_.reservation_follows() ? 0 : request_.reservation().cached_blocks();
  const int64_t first = std::max<int64_t>(u.first_computed_block, cached);
  const int64_t end =
      std::min<int64_t>(u.first_computed_block + static_cast<int64_t>(u.computed_blocks.size()),
                        PromptBlocks(request_, options.block_size));
  if (first >= end || eos_) return;
  std::vector<uint8_t> bytes((end - first) * options.block_bytes);
  absl::Status copied = [&]() -> absl::Status {
    TANDEM_ASSIGN_OR_RETURN(engine::PoolCopier * copier, service_->StreamCopier());
    for (int64_t begin = first; begin < end;) {
      const int64_t stop = std::min<int64_t>(end, begin + copier->capacity());
      std::vector<absl::Span<const uint8_t>> pool_blocks;
      for (int64_t i = begin; i < stop; ++i) {
        const int32_t block = u.computed_blocks[i - u.first_computed_block];
        pool_blocks.emplace_back(options.kv_base + static_cast<uint64_t>(block) * options.block_bytes,
                                 options.block_bytes);
      }
      TANDEM_ASSIGN_OR_RETURN(std::vector<absl::Span<const uint8_t>> host, copier->ReadBlocks(pool_blocks));
      for (int64_t i = begin; i < stop; ++i) {
        std::memcpy(bytes.data() + (i - first) * options.block_bytes, host[i - begin].data(),
                    options.block_bytes);
      }
      begin = stop;
    }
    return absl::OkStatus();
  }();
  if (!copied.ok()) {
    Post([this, copied] { stream_error_.Update(copied); }, /*last=*/false);
    return;
  }
  Post([this, first, bytes = std::move(bytes)] { WriteChunk(first, bytes); }, /*last=*/false,
       /*needs_reservation=*/true);
}

void PrefillCall::WriteChunk(int64_t first, const std::vector<uint8_t>& bytes) {
  if (!stream_error_.ok() || !gate_error_.ok()) return;  // SendBlocks reports either
  const PrefillServiceOptions& options = service_->options_;
  const tandem::v1::KvReservation& res = *reservation_;
  const int64_t n = static_cast<int64_t>(bytes.size() / options.block_bytes);
  // The decode worker's cached blocks (known now) are not written.
  const int64_t skip = std::clamp<int64_t>(res.cached_blocks() - first, 0, n);
  std::vector<transfer::WriteRequest> writes;
  for (int64_t i = skip; i < n; ++i) {
    const uint8_t* block = bytes.data() + i * options.block_bytes;
    response_->add_kv_block_crc32c(kvstore::Crc32c(absl::MakeConstSpan(block, options.block_bytes)));
    writes.push_back(
        {block, static_cast<uint64_t>(res.block_ids(first + i)) * res.block_bytes(), options.block_bytes});
  }
  if (writes.empty()) {
    streamed_upto_ = first + n;
    return;
  }
  const absl::Time start = absl::Now();
  const absl::Status sent = service_->transfer_->Write(
      transfer::RegionFromProto(res.region(), "decode reservation " + request_.request_id()), writes,
      std::min(deadline_, absl::Now() + options.transfer_timeout));
  if (!sent.ok()) {
    stream_error_ =
        absl::AbortedError(absl::StrFormat("transfer to decode worker failed: %s", sent.message()));
    return;
  }
  streamed_upto_ = first + n;
  streamed_bytes_ += (n - skip) * options.block_bytes;
  streamed_time_ += absl::Now() - start;
}

absl::Status PrefillCall::TakeResult(const engine::SequenceUpdate& done) {
  computed_ = absl::Now();
  eos_ = done.end == engine::SequenceEnd::kStop;
  if (!eos_ && done.new_tokens.empty()) {
    return absl::InternalError(
        absl::StrFormat("request %d: the engine ended the prefill without a token", id_));
  }
  const int64_t blocks = PromptBlocks(request_, service_->options_.block_size);
  if (!eos_ && static_cast<int64_t>(done.held_blocks.size()) < blocks) {
    return absl::InternalError(absl::StrFormat("request %d: the engine held %d blocks of the prompt's %d",
                                               id_, done.held_blocks.size(), blocks));
  }
  response_->set_first_token_is_eos(eos_);
  response_->set_first_token(eos_ ? 0 : done.new_tokens[0]);
  // Tokens this worker did not compute (its own prefix cache and tiers).
  // Blocks the decode worker already held save transfer, not compute, so
  // they do not count: usage.cached_tokens is the compute a cache saved.
  response_->set_cached_tokens(done.cached_tokens);
  response_->set_prefill_ms(absl::ToDoubleMilliseconds(computed_ - start_));
  return absl::OkStatus();
}

void PrefillCall::SendBlocks(std::vector<int32_t> held_blocks) {
  bool cancelled;
  {
    absl::MutexLock lock(&mu_);
    cancelled = cancelled_;
  }
  // The send starts when both the prompt and its reservation are there.
  const absl::Duration reservation_wait = std::max(absl::ZeroDuration(), gate_opened_ - computed_);
  const absl::Time send_start = computed_ + reservation_wait;
  absl::Status sent = cancelled           ? absl::CancelledError("cancelled before the KV transfer")
                      : !gate_error_.ok() ? gate_error_
                      : eos_              ? absl::OkStatus()
                                          : WriteBlocks(held_blocks);
  const absl::Duration transfer_time = absl::Now() - send_start;
  service_->ReleaseHeldAsync(id_);
  if (sent.ok()) {
    if (request_.reservation_follows()) {
      response_->set_reservation_wait_ms(absl::ToDoubleMilliseconds(reservation_wait));
      RecordReservationWait(reservation_wait);
    }
    // transfer_ms is what the prompt waited for after its last chunk; the
    // streamed chunks were written while later chunks computed.
    response_->set_transfer_ms(absl::ToDoubleMilliseconds(transfer_time));
    if (response_->transferred_bytes() > 0) {
      RecordTransfer(response_->transferred_bytes(), transfer_time + streamed_time_);
    }
    if (streamed_bytes_ > 0) RecordStreamed(streamed_bytes_, streamed_time_);
  }
  End(sent);
}

// Blocks copied pool -> pinned staging before their UCX write (a device
// pool), and the time the copies took.
void RecordStaging(uint64_t bytes, absl::Duration time) {
  static Counter* const bytes_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_staged_bytes_total",
                   "KV bytes copied between the device pool and pinned host staging", {"direction"})
          ->WithLabels({"out"});
  static Counter* const seconds_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_staging_copy_seconds_total",
                   "Time spent copying KV between the device pool and pinned host staging", {"direction"})
          ->WithLabels({"out"});
  bytes_total->Increment(static_cast<double>(bytes));
  seconds_total->Increment(absl::ToDoubleSeconds(time));
}

absl::Status PrefillCall::WriteBlocks(absl::Span<const int32_t> held_blocks) {
  // The held blocks are not touched by the engine until released: full ones
  // are immutable cache entries, the partial last one belongs to this request.
  const PrefillServiceOptions& options = service_->options_;
  const tandem::v1::KvReservation& res = *reservation_;
  TANDEM_RETURN_IF_ERROR(stream_error_);
  // Blocks streamed ahead while later chunks computed are already there.
  const int64_t first = std::max<int64_t>(res.cached_blocks(), streamed_upto_);
  const int64_t end = PromptBlocks(request_, options.block_size);
  response_->set_transferred_bytes(streamed_bytes_);
  if (first >= end) return absl::OkStatus();
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<engine::PoolCopier> copier, service_->AcquireCopier());
  const transfer::RemoteRegion region =
      transfer::RegionFromProto(res.region(), "decode reservation " + request_.request_id());
  const absl::Time deadline = std::min(deadline_, absl::Now() + options.transfer_timeout);
  absl::Status sent;
  // Batches of at most the copier's staging capacity (all at once when the
  // pool is host memory): stage, checksum, write.
  for (int64_t begin = first; begin < end && sent.ok();) {
    const int64_t stop = std::min<int64_t>(end, begin + copier->capacity());
    std::vector<absl::Span<const uint8_t>> pool_blocks;
    for (int64_t i = begin; i < stop; ++i) {
      pool_blocks.emplace_back(options.kv_base + static_cast<uint64_t>(held_blocks[i]) * options.block_bytes,
                               options.block_bytes);
    }
    const absl::Time copy_start = absl::Now();
    absl::StatusOr<std::vector<absl::Span<const uint8_t>>> host = copier->ReadBlocks(pool_blocks);
    if (host.ok() && !copier->direct()) {
      RecordStaging(pool_blocks.size() * options.block_bytes, absl::Now() - copy_start);
    }
    if (!host.ok()) {
      sent = absl::Status(host.status().code(), absl::StrCat("staging KV blocks: ", host.status().message()));
      break;
    }
    std::vector<transfer::WriteRequest> writes;
    for (int64_t i = begin; i < stop; ++i) {
      const absl::Span<const uint8_t> bytes = (*host)[i - begin];
      // The checksums travel with the blocks (issue #6: integrity end to
      // end): the decode worker verifies what landed against what was sent.
      response_->add_kv_block_crc32c(kvstore::Crc32c(bytes));
      writes.push_back(
          {bytes.data(), static_cast<uint64_t>(res.block_ids(i)) * res.block_bytes(), bytes.size()});
    }
    sent = service_->transfer_->Write(region, writes, deadline);
    if (!sent.ok()) {
      sent = absl::AbortedError(absl::StrFormat("transfer to decode worker failed: %s", sent.message()));
    }
    begin = stop;
  }
  service_->ReturnCopier(std::move(copier));
  TANDEM_RETURN_IF_ERROR(sent);
  response_->set_transferred_bytes(streamed_bytes_ + (end - first) * options.block_bytes);
  return absl::OkStatus();
}

void PrefillCall::End(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    phase_ = Phase::kDone;
  }
  if (!await_key_.empty()) service_->StopAwaiting(await_key_, this);
  Finish(ToGrpc(status));
}

absl::Status PrefillService::CheckReservation(int64_t prompt_tokens,
                                              const tandem::v1::KvReservation& res) const {
  if (res.block_size() != options_.block_size || res.block_bytes() != options_.block_bytes ||
      res.model_id() != options_.model_id) {
    return absl::InvalidArgumentError(
        absl::StrFormat("reservation: layout (model %s, block %d tokens, %d bytes) differs "
                        "from this worker's (model %s, %d, %d)",
                        res.model_id(), res.block_size(), res.block_bytes(), options_.model_id,
                        options_.block_size, options_.block_bytes));
  }
  const int64_t blocks = PromptBlocks(prompt_tokens, options_.block_size);
  if (res.block_ids_size() < blocks || res.cached_blocks() < 0 || res.cached_blocks() > blocks) {
    return absl::InvalidArgumentError("reservation: block_ids do not cover the prompt");
  }
  // Only the blocks this worker writes must lie in the region: the decode
  // worker's cached ones stay where they are (and, when it stages through
  // landing slots, are named by pool ids the region does not cover).
  for (int64_t i = res.cached_blocks(); i < blocks; ++i) {
    const uint64_t end = (static_cast<uint64_t>(res.block_ids(i)) + 1) * res.block_bytes();
    if (res.block_ids(i) < 0 || end > res.region().bytes()) {
      return absl::InvalidArgumentError("reservation: block id outside the region");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::PoolCopier*> PrefillService::StreamCopier() {
  if (stream_copier_ == nullptr) {
    TANDEM_ASSIGN_OR_RETURN(stream_copier_, engine::PoolCopier::Create(options_.backend, options_.block_bytes,
                                                                       options_.staging_blocks));
  }
  return stream_copier_.get();
}

absl::StatusOr<std::unique_ptr<engine::PoolCopier>> PrefillService::AcquireCopier() {
  {
    absl::MutexLock lock(&copiers_mu_);
    if (!idle_copiers_.empty()) {
      std::unique_ptr<engine::PoolCopier> copier = std::move(idle_copiers_.back());
      idle_copiers_.pop_back();
      return copier;
    }
  }
  return engine::PoolCopier::Create(options_.backend, options_.block_bytes, options_.staging_blocks);
}

void PrefillService::ReturnCopier(std::unique_ptr<engine::PoolCopier> copier) {
  absl::MutexLock lock(&copiers_mu_);
  idle_copiers_.push_back(std::move(copier));
}

void PrefillService::ReleaseHeldAsync(int64_t id) {
  (void)runner_->Post([id](engine::Engine& e) { return e.ReleaseReserved(id); }, absl::InfiniteFuture());
}

grpc::ServerUnaryReactor* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                  const tandem::v1::PrefillRequest* request,
                                                  tandem::v1::PrefillResponse* response) {
  return new PrefillCall(this, context, request, response);
}

void PrefillService::AwaitReservation(const std::string& key, PrefillCall* call) {
  absl::MutexLock lock(&awaiting_mu_);
  auto early = early_.find(key);
  if (early != early_.end()) {
    (void)call->Provide(early->second.reservation);  // a bad one fails the call
    early_.erase(early);
    return;
  }
  awaiting_[key] = call;
}

void PrefillService::StopAwaiting(const std::string& key, PrefillCall* call) {
  absl::MutexLock lock(&awaiting_mu_);
  auto it = awaiting_.find(key);
  if (it != awaiting_.end() && it->second == call) awaiting_.erase(it);
}

void PrefillService::ExpireReservationWaits(absl::Time now) {
  absl::MutexLock lock(&awaiting_mu_);
  for (auto& [key, call] : awaiting_) call->ExpireWait(now);
  absl::erase_if(early_,
                 [&](const auto& entry) { return now - entry.second.arrived >= options_.reservation_wait; });
}

int PrefillService::AwaitingReservations() {
  absl::MutexLock lock(&awaiting_mu_);
  return static_cast<int>(awaiting_.size());
}

int PrefillService::EarlyReservations() {
  absl::MutexLock lock(&awaiting_mu_);
  return static_cast<int>(early_.size());
}

grpc::ServerUnaryReactor* PrefillService::ProvideReservation(
    grpc::CallbackServerContext* context, const tandem::v1::ProvideReservationRequest* request,
    tandem::v1::ProvideReservationResponse*) {
  absl::Status result;
  {
    const std::string key = AwaitKey(request->request_id(), request->attempt());
    absl::MutexLock lock(&awaiting_mu_);
    auto it = awaiting_.find(key);
    if (it != awaiting_.end()) {
      result = it->second->Provide(request->reservation());
      awaiting_.erase(it);  // answered: it waits no more
    } else if (early_.size() >= kMaxEarlyReservations) {
      // Bounded: a flood of reservations for calls that never come.
      result = absl::ResourceExhaustedError(
          absl::StrFormat("%d reservations already wait for their Prefill", early_.size()));
    } else {
      // Before its Prefill (the two RPCs race), or after the call ended: kept
      // for reservation_wait either way.
      early_[key] = {request->reservation(), absl::Now()};
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(result));
  return reactor;
}

grpc::ServerUnaryReactor* PrefillService::Status(grpc::CallbackServerContext* context,
                                                 const tandem::v1::WorkerStatusRequest*,
                                                 tandem::v1::WorkerStatus* response) {
  *response = worker_common::ToWorkerStatus(options_.worker_id, tandem::v1::WORKER_ROLE_PREFILL,
                                            options_.model_id, runner_->load());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem::prefill_worker
