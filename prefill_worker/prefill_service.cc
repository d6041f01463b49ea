#include "prefill_worker/prefill_service.h"

#include <algorithm>
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
#include "proto/sampling_defaults.h"
#include "transfer/ucx_region_proto.h"
#include "worker_common/worker_status.h"

namespace tandem::prefill_worker {
namespace {

int64_t PromptBlocks(const tandem::v1::PrefillRequest& r, int32_t block_size) {
  return (r.prompt_token_ids_size() + block_size - 1) / block_size;
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
  }

  void OnDone() override { delete this; }

 private:
  enum class Phase { kComputing, kSending, kDone };

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

  PrefillService* const service_;
  const tandem::v1::PrefillRequest& request_;  // gRPC's, valid until Finish
  tandem::v1::PrefillResponse* const response_;
  const absl::Time start_;
  const absl::Time deadline_;
  int64_t id_ = 0;  // written by Start, before any other thread sees the call
  bool eos_ = false;
  absl::Time computed_;

  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kComputing;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status PrefillCall::Start() {
  if (absl::Status valid = service_->CheckReservation(request_); !valid.ok()) return valid;
  id_ = service_->next_engine_id_.fetch_add(1);
  engine::EngineRequest req;
  req.id = id_;
  req.prompt_tokens.assign(request_.prompt_token_ids().begin(), request_.prompt_token_ids().end());
  if (service_->options_.on_prompt) {
    service_->options_.on_prompt(req.prompt_tokens,
                                 request_.has_prefetch_hint() ? &request_.prefetch_hint() : nullptr);
  }
  req.max_tokens = 1;
  req.sampling.temperature = request_.sampling().temperature();
  req.sampling.top_k = request_.sampling().top_k();
  req.sampling.top_p = EffectiveTopP(request_.sampling());
  if (request_.sampling().has_seed()) req.sampling.seed = request_.sampling().seed();
  req.stop_at_eos = request_.stop_at_eos();
  req.hold_blocks_on_finish = true;
  absl::MutexLock lock(&mu_);
  absl::Status queued = service_->runner_->SubmitAsync(
      std::move(req), [this](const engine::SequenceUpdate& u) { OnUpdate(u); }, deadline_);
  submitted_ = queued.ok();
  return queued;
}

void PrefillCall::OnUpdate(const engine::SequenceUpdate& u) {
  switch (u.end) {
    case engine::SequenceEnd::kNone:
      return;
    case engine::SequenceEnd::kError:
      End(u.error);
      return;
    case engine::SequenceEnd::kCancelled:
      End(absl::CancelledError("cancelled"));
      return;
    case engine::SequenceEnd::kLength:
    case engine::SequenceEnd::kStop:
      break;
  }
  if (absl::Status taken = TakeResult(u); !taken.ok()) {
    service_->ReleaseHeldAsync(id_);
    End(taken);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    phase_ = Phase::kSending;
  }
  service_->senders_.Push([this, held = u.held_blocks]() mutable { SendBlocks(std::move(held)); });
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
  absl::Status sent = cancelled ? absl::CancelledError("cancelled before the KV transfer")
                      : eos_    ? absl::OkStatus()
                                : WriteBlocks(held_blocks);
  const absl::Duration transfer_time = absl::Now() - computed_;
  service_->ReleaseHeldAsync(id_);
  if (sent.ok()) {
    response_->set_transfer_ms(absl::ToDoubleMilliseconds(transfer_time));
    if (response_->transferred_bytes() > 0) RecordTransfer(response_->transferred_bytes(), transfer_time);
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
  const tandem::v1::KvReservation& res = request_.reservation();
  const int64_t first = res.cached_blocks();
  const int64_t end = PromptBlocks(request_, options.block_size);
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
  response_->set_transferred_bytes((end - first) * options.block_bytes);
  return absl::OkStatus();
}

void PrefillCall::End(const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    phase_ = Phase::kDone;
  }
  Finish(ToGrpc(status));
}

absl::Status PrefillService::CheckReservation(const tandem::v1::PrefillRequest& r) const {
  const tandem::v1::KvReservation& res = r.reservation();
  if (r.prompt_token_ids_size() == 0) return absl::InvalidArgumentError("prompt_token_ids: empty");
  if (res.block_size() != options_.block_size || res.block_bytes() != options_.block_bytes ||
      res.model_id() != options_.model_id) {
    return absl::InvalidArgumentError(
        absl::StrFormat("reservation: layout (model %s, block %d tokens, %d bytes) differs "
                        "from this worker's (model %s, %d, %d)",
                        res.model_id(), res.block_size(), res.block_bytes(), options_.model_id,
                        options_.block_size, options_.block_bytes));
  }
  const int64_t blocks = PromptBlocks(r, options_.block_size);
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
