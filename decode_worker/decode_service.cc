#include "decode_worker/decode_service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"
#include "model/text_stream.h"
#include "proto/grpc_status.h"
#include "transfer/ucx_region_proto.h"
#include "worker_common/sampling.h"
#include "worker_common/worker_status.h"

namespace tandem::decode_worker {
namespace {

using tandem::v1::GenerateResponse;

// How long a unary call's work may wait for the engine thread.
constexpr absl::Duration kEngineCallTimeout = absl::Seconds(10);

// ReserveRequest and DecodeRequest carry the same request fields.
template <typename Proto>
engine::EngineRequest ToEngineRequest(int64_t id, const Proto& r) {
  engine::EngineRequest req;
  req.id = id;
  req.prompt_tokens.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  req.max_tokens = r.max_tokens();
  req.sampling = worker_common::SamplingFromProto(r.sampling());
  req.stop_at_eos = r.stop_at_eos();
  return req;
}

absl::Time Earliest(absl::Time a, absl::Time b) { return std::min(a, b); }

}  // namespace

// One Decode call. gRPC owns the reactor until OnDone, which deletes it. The
// engine thread reaches it through the request's listener (and, in kv_ready
// mode, the Activate command), which the runner calls until exactly one final
// update; the stream finishes the RPC only after that update, so every
// engine-thread call finds the reactor alive. Writes: one in flight; tokens
// that arrive meanwhile are coalesced into the next chunk.
class DecodeStream final : public grpc::ServerWriteReactor<GenerateResponse> {
 public:
  DecodeStream(DecodeService* service, grpc::CallbackServerContext* context,
               const tandem::v1::DecodeRequest& request)
      : service_(service),
        request_id_(request.request_id()),
        deadline_(absl::FromChrono(context->deadline())),
        text_(service->tokenizer_) {
    const absl::Status started =
        request.kv_ready() ? StartFromReservation(request) : StartAggregated(request);
    if (!started.ok()) {
      std::optional<grpc::Status> finish;
      {
        absl::MutexLock lock(&mu_);
        final_ = started;
        finish = PumpLocked();
      }
      if (finish.has_value()) Finish(*finish);
    }
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The client is gone: stop the request; its final update still comes
        // and finishes the RPC.
        queue_.clear();
        StopEngineRequestLocked();
      } else if (!queue_.empty()) {
        queue_.pop_front();
      }
      finish = PumpLocked();
    }
    if (finish.has_value()) Finish(*finish);
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    StopEngineRequestLocked();
  }

  void OnDone() override { delete this; }

 private:
  // Entry modes. Each queues the engine work that ends in the listener's
  // final update, or fails without queueing anything.
  absl::Status StartFromReservation(const tandem::v1::DecodeRequest& r);
  absl::Status StartAggregated(const tandem::v1::DecodeRequest& r);
  absl::Status StartEngineRequest(engine::EngineRequest request);
  absl::Status Activate(int64_t id, int32_t first_token);

  engine::EngineRunner::Listener Listener() {
    return [this](const engine::SequenceUpdate& u) { OnUpdate(u); };
  }
  // Engine thread: the prefill worker's token, once Activate succeeded
  // (before any Step update of the request).
  void OnActivated(int32_t first_token);
  // Engine thread: a Step's update (the last has end != kNone).
  void OnUpdate(const engine::SequenceUpdate& u);
  std::optional<grpc::Status> UpdateLocked(const engine::SequenceUpdate& u)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void AddTokensLocked(absl::Span<const int32_t> tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddTextLocked(const std::string& text) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The chunk new tokens go into: the queue's last message unless that one
  // is being written.
  tandem::v1::TokenChunk* PendingChunkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  GenerateResponse SummaryLocked(engine::SequenceEnd end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopEngineRequestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the next write, or returns the status to Finish the RPC with
  // once everything is written and the request ended. The caller calls
  // Finish after releasing mu_, as its last use of this reactor: OnDone
  // (which deletes it) may run on another thread as soon as Finish is
  // called, and an engine-thread caller is not a reaction gRPC waits for.
  [[nodiscard]] std::optional<grpc::Status> PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  DecodeService* const service_;
  const std::string request_id_;
  // The client's deadline: the engine cancels the request past it.
  const absl::Time deadline_;

  absl::Mutex mu_;
  // Set once the engine holds the request (listener registered or queued).
  std::optional<int64_t> engine_id_ ABSL_GUARDED_BY(mu_);
  model::TextStream text_ ABSL_GUARDED_BY(mu_);
  int32_t generated_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);  // front is being written when writing_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

absl::Status DecodeStream::StartFromReservation(const tandem::v1::DecodeRequest& r) {
  TANDEM_ASSIGN_OR_RETURN(DecodeService::Reservation reserved, service_->TakeReservation(r.request_id()));
  const absl::Status landed = service_->LandTransferredBlocks(r, reserved);
  if (!landed.ok()) {
    // A block that fails its checksum: drop the reservation and prefill
    // the prompt here from its ReserveRequest (same stream for the client).
    service_->ReleaseReservedAsync(reserved.engine_id);
    if (landed.code() != absl::StatusCode::kDataLoss) return landed;
    return StartEngineRequest(ToEngineRequest(service_->NextEngineId(), reserved.request));
  }
  return Activate(reserved.engine_id, r.first_token());
}

absl::Status DecodeStream::StartAggregated(const tandem::v1::DecodeRequest& r) {
  engine::EngineRequest req = ToEngineRequest(service_->NextEngineId(), r);
  if (service_->options_.on_prompt) {
    service_->options_.on_prompt(req.prompt_tokens, r.has_prefetch_hint() ? &r.prefetch_hint() : nullptr);
  }
  return StartEngineRequest(std::move(req));
}

absl::Status DecodeStream::StartEngineRequest(engine::EngineRequest request) {
  const int64_t id = request.id;
  absl::MutexLock lock(&mu_);
  TANDEM_RETURN_IF_ERROR(service_->runner_->SubmitAsync(std::move(request), Listener(), deadline_));
  engine_id_ = id;
  return absl::OkStatus();
}

absl::Status DecodeStream::Activate(int64_t id, int32_t first_token) {
  absl::MutexLock lock(&mu_);
  absl::Status queued = service_->runner_->ListenAndRunAsync(
      id, Listener(),
      [this, id, first_token](engine::Engine& e) {
        absl::Status s = e.Activate(id, first_token);
        if (!s.ok()) {
          (void)e.ReleaseReserved(id);
          return s;
        }
        OnActivated(first_token);
        return s;
      },
      deadline_);
  if (!queued.ok()) {
    service_->ReleaseReservedAsync(id);
    return queued;
  }
  engine_id_ = id;
  return absl::OkStatus();
}

void DecodeStream::OnActivated(int32_t first_token) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    AddTokensLocked({&first_token, 1});
    finish = PumpLocked();
  }
  if (finish.has_value()) Finish(*finish);
}

void DecodeStream::OnUpdate(const engine::SequenceUpdate& u) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    finish = UpdateLocked(u);
  }
  if (finish.has_value()) Finish(*finish);  // last use of this reactor
}

std::optional<grpc::Status> DecodeStream::UpdateLocked(const engine::SequenceUpdate& u) {
  cached_tokens_ = std::max(cached_tokens_, u.cached_tokens);
  AddTokensLocked(u.new_tokens);
  switch (u.end) {
    case engine::SequenceEnd::kNone:
      break;
    case engine::SequenceEnd::kError:
      final_ = u.error;
      break;
    case engine::SequenceEnd::kCancelled:
      final_ = absl::CancelledError("request cancelled");
      break;
    case engine::SequenceEnd::kLength:
    case engine::SequenceEnd::kStop:
      AddTextLocked(text_.Finish());
      if (!client_gone_) queue_.push_back(SummaryLocked(u.end));
      final_ = absl::OkStatus();
      break;
  }
  return PumpLocked();
}

void DecodeStream::AddTokensLocked(absl::Span<const int32_t> tokens) {
  if (tokens.empty() || client_gone_) return;
  tandem::v1::TokenChunk* chunk = PendingChunkLocked();
  for (int32_t t : tokens) {
    chunk->add_token_ids(t);
    *chunk->mutable_text() += text_.Push(t);
    ++generated_;
  }
}

void DecodeStream::AddTextLocked(const std::string& text) {
  if (text.empty() || client_gone_) return;
  *PendingChunkLocked()->mutable_text() += text;
}

tandem::v1::TokenChunk* DecodeStream::PendingChunkLocked() {
  const size_t in_flight = writing_ ? 1 : 0;
  if (queue_.size() <= in_flight || !queue_.back().has_chunk()) queue_.emplace_back();
  return queue_.back().mutable_chunk();
}

GenerateResponse DecodeStream::SummaryLocked(engine::SequenceEnd end) {
  GenerateResponse done;
  tandem::v1::GenerateSummary* summary = done.mutable_summary();
  summary->set_request_id(request_id_);
  summary->set_finish_reason(end == engine::SequenceEnd::kStop ? tandem::v1::FINISH_REASON_STOP
                                                               : tandem::v1::FINISH_REASON_LENGTH);
  summary->mutable_usage()->set_completion_tokens(generated_);
  summary->mutable_usage()->set_cached_tokens(cached_tokens_);
  summary->set_decode_worker(service_->options_.worker_id);
  summary->set_model(service_->options_.model_id);
  return done;
}

void DecodeStream::StopEngineRequestLocked() {
  if (client_gone_) return;
  client_gone_ = true;
  // Nothing to cancel when the request ended or never reached the engine;
  // otherwise its kCancelled update finishes the RPC.
  if (engine_id_.has_value() && !final_.has_value()) (void)service_->runner_->CancelAsync(*engine_id_);
}

std::optional<grpc::Status> DecodeStream::PumpLocked() {
  if (writing_ || finished_) return std::nullopt;
  if (!queue_.empty() && !client_gone_) {
    writing_ = true;
    StartWrite(&queue_.front());
    return std::nullopt;
  }
  if (!final_.has_value()) return std::nullopt;
  finished_ = true;
  return client_gone_ && final_->ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "client gone")
                                      : ToGrpc(*final_);
}

absl::Status VerifyTransferredBlocks(const uint8_t* kv_base, size_t block_bytes,
                                     absl::Span<const int32_t> block_ids, int32_t first_written,
                                     absl::Span<const uint32_t> crc32c) {
  if (first_written < 0 || static_cast<size_t>(first_written) > block_ids.size() ||
      crc32c.size() != block_ids.size() - static_cast<size_t>(first_written)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d KV checksums for %d written blocks", crc32c.size(),
                        static_cast<int64_t>(block_ids.size()) - first_written));
  }
  for (size_t i = 0; i < crc32c.size(); ++i) {
    const int32_t block = block_ids[first_written + i];
    const uint32_t crc =
        kvstore::Crc32c(absl::MakeConstSpan(kv_base + static_cast<size_t>(block) * block_bytes, block_bytes));
    if (crc != crc32c[i]) {
      return absl::DataLossError(absl::StrFormat(
          "KV block %d of the prompt (pool block %d): CRC32C %08x, the prefill worker sent %08x",
          first_written + i, block, crc, crc32c[i]));
    }
  }
  return absl::OkStatus();
}

int64_t DecodeService::NextEngineId() {
  absl::MutexLock lock(&mu_);
  return next_engine_id_++;
}

void DecodeService::ReleaseReservedAsync(int64_t id) {
  (void)runner_->PostBesideStep([id](engine::Engine& e) { return e.ReleaseReserved(id); },
                                absl::InfiniteFuture());
}

grpc::ServerUnaryReactor* DecodeService::Reserve(grpc::CallbackServerContext* context,
                                                 const tandem::v1::ReserveRequest* r,
                                                 tandem::v1::KvReservation* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (r->request_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: empty"));
    return reactor;
  }
  const int64_t id = NextEngineId();
  // `r` and `response` stay valid until Finish. With
  // EngineRunner::Options::reserve_beside_step (opt-in) the reservation does
  // not wait for the decode step in progress (it is on the request's TTFT).
  const absl::Status queued = runner_->PostBesideStep(
      [this, id, r, response, context](engine::Engine& e) {
        // A Reserve its router has given up on (it timed out or was cancelled
        // while this worker was stopped or its engine busy) reserves nothing:
        // no router would take or release that reservation before its TTL,
        // and its blocks would be lost to every request until then.
        if (context->IsCancelled()) return absl::CancelledError("the router abandoned this Reserve");
        return ReserveOnEngine(e, id, *r, response);
      },
      Earliest(absl::FromChrono(context->deadline()), absl::Now() + kEngineCallTimeout),
      [reactor](const absl::Status& s) { reactor->Finish(ToGrpc(s)); });
  if (!queued.ok()) reactor->Finish(ToGrpc(queued));
  return reactor;
}

absl::Status DecodeService::ReserveOnEngine(engine::Engine& e, int64_t id,
                                            const tandem::v1::ReserveRequest& r,
                                            tandem::v1::KvReservation* response) {
  {
    // Checked here, on the one thread that adds reservations (the engine
    // thread, or the runner's reservation thread), so two
    // Reserves of one request id cannot both pass.
    absl::MutexLock lock(&mu_);
    if (reservations_.contains(r.request_id()))
      return absl::AlreadyExistsError("request_id: already reserved");
  }
  TANDEM_ASSIGN_OR_RETURN(engine::KvReservation reservation, e.Reserve(ToEngineRequest(id, r)));
  const absl::Duration ttl =
      r.reservation_ttl_ms() > 0 ? absl::Milliseconds(r.reservation_ttl_ms()) : options_.reservation_ttl;
  const int32_t cached_blocks = reservation.cached_tokens / options_.block_size;
  // The ids the prefill worker writes to: pool blocks, or landing slots.
  std::vector<int32_t> transfer_ids = reservation.block_ids;
  LandingArea::Slots landing;
  if (options_.landing != nullptr) {
    const int32_t prompt_blocks =
        static_cast<int32_t>((r.prompt_token_ids_size() + options_.block_size - 1) / options_.block_size);
    absl::StatusOr<LandingArea::Slots> slots =
        options_.landing->Acquire(std::max(0, prompt_blocks - cached_blocks));
    if (!slots.ok()) {
      (void)e.ReleaseReserved(id);
      return slots.status();
    }
    landing = *std::move(slots);
    for (size_t i = 0; i < landing.ids().size(); ++i) transfer_ids[cached_blocks + i] = landing.ids()[i];
  }
  {
    absl::MutexLock lock(&mu_);
    reservations_[r.request_id()] = {id, absl::Now() + ttl, reservation.block_ids, cached_blocks,
                                     r,  std::move(landing)};
  }
  response->set_request_id(r.request_id());
  transfer::RegionToProto(options_.ucx_worker_address,
                          options_.landing != nullptr ? options_.landing->region() : options_.kv_region,
                          response->mutable_region());
  response->set_block_size(options_.block_size);
  response->set_block_bytes(options_.block_bytes);
  response->set_model_id(options_.model_id);
  *response->mutable_block_ids() = {transfer_ids.begin(), transfer_ids.end()};
  response->set_cached_blocks(cached_blocks);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* DecodeService::Release(grpc::CallbackServerContext* context,
                                                 const tandem::v1::ReleaseRequest* r,
                                                 tandem::v1::ReleaseResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Reservation> reserved = TakeReservation(r->request_id());
  if (!reserved.ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "request_id: no such reservation"));
    return reactor;
  }
  const int64_t id = reserved->engine_id;
  const absl::Status queued = runner_->PostBesideStep(
      [id](engine::Engine& e) { return e.ReleaseReserved(id); }, absl::Now() + kEngineCallTimeout,
      [reactor](const absl::Status& s) { reactor->Finish(ToGrpc(s)); });
  if (!queued.ok()) reactor->Finish(ToGrpc(queued));
  return reactor;
}

grpc::ServerUnaryReactor* DecodeService::Renew(grpc::CallbackServerContext* context,
                                               const tandem::v1::RenewRequest* r,
                                               tandem::v1::RenewResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Duration ttl =
      r->reservation_ttl_ms() > 0 ? absl::Milliseconds(r->reservation_ttl_ms()) : options_.reservation_ttl;
  bool found = false;
  {
    // No engine work: the expiry time is only read by ExpireReservations,
    // under the same lock.
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(r->request_id());
    if (it != reservations_.end()) {
      it->second.expires = absl::Now() + ttl;
      found = true;
    }
  }
  reactor->Finish(
      found ? grpc::Status::OK
            : grpc::Status(grpc::StatusCode::NOT_FOUND, "request_id: no reservation (expired or unknown)"));
  return reactor;
}

absl::StatusOr<DecodeService::Reservation> DecodeService::TakeReservation(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(request_id);
  if (it == reservations_.end())
    return absl::NotFoundError("request_id: no reservation (expired or unknown)");
  Reservation reserved = std::move(it->second);
  reservations_.erase(it);
  return reserved;
}

void DecodeService::ExpireReservations(engine::Engine& engine) {
  std::vector<int64_t> expired;
  {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    for (auto it = reservations_.begin(); it != reservations_.end();) {
      if (it->second.expires <= now) {
        expired.push_back(it->second.engine_id);
        reservations_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  if (expired.empty()) return;
  static Counter* const expired_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_reservations_expired_total",
                   "Decode reservations that lapsed their TTL unrenewed (their blocks freed)", {})
          ->WithLabels({});
  expired_total->Increment(static_cast<double>(expired.size()));
  LOG(WARNING) << "decode worker: " << expired.size() << " reservation(s) lapsed their TTL unrenewed";
  for (int64_t id : expired) (void)engine.ReleaseReserved(id);
}

absl::Status DecodeService::CheckTransferredBlocks(const tandem::v1::DecodeRequest& r,
                                                   const Reservation& reserved) {
  // The reserved blocks (or landing slots) are this request's alone until
  // Activate or ReleaseReserved, and the prefill worker's write completed
  // before the router sent this call: reading them here races with nothing.
  std::vector<int32_t> written = reserved.block_ids;
  const uint8_t* base = reinterpret_cast<const uint8_t*>(options_.kv_region.base_address);
  if (options_.landing != nullptr) {
    base = reinterpret_cast<const uint8_t*>(options_.landing->region().base_address);
    const std::vector<int32_t>& slots = reserved.landing.ids();
    written.resize(std::min(written.size(), reserved.cached_blocks + slots.size()));
    for (size_t i = 0; i < slots.size() && reserved.cached_blocks + i < written.size(); ++i) {
      written[reserved.cached_blocks + i] = slots[i];
    }
  }
  const absl::Status verified =
      VerifyTransferredBlocks(base, options_.block_bytes, written, reserved.cached_blocks,
                              absl::MakeConstSpan(r.kv_block_crc32c().data(), r.kv_block_crc32c_size()));
  static Counter* const verified_blocks =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_transfer_verified_blocks_total",
                   "Transferred KV blocks checked against the prefill worker's CRC32C", {})
          ->WithLabels({});
  static Counter* const failures =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_transfer_checksum_failures_total",
                   "Requests whose transferred KV failed its CRC32C check and were prefilled here", {})
          ->WithLabels({});
  if (verified.ok()) {
    verified_blocks->Increment(static_cast<double>(r.kv_block_crc32c_size()));
  } else {
    failures->Increment();
    LOG(WARNING) << "decode worker: request " << r.request_id() << ": " << verified.message()
                 << "; prefilling it here";
  }
  return verified;
}

absl::Status DecodeService::LandTransferredBlocks(const tandem::v1::DecodeRequest& r,
                                                  const Reservation& reserved) {
  if (r.kv_block_crc32c_size() > 0) TANDEM_RETURN_IF_ERROR(CheckTransferredBlocks(r, reserved));
  if (options_.landing == nullptr) return absl::OkStatus();
  // Landing slots -> the reserved pool blocks, before Activate lets the
  // engine compute on them. Blocking, on this gRPC thread: a reservation's
  // blocks copy in milliseconds at device copy bandwidth.
  const std::vector<int32_t>& slots = reserved.landing.ids();
  std::vector<absl::Span<uint8_t>> pool_blocks;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int32_t block = reserved.block_ids[reserved.cached_blocks + i];
    pool_blocks.emplace_back(options_.kv_base + static_cast<size_t>(block) * options_.block_bytes,
                             options_.block_bytes);
  }
  const absl::Time start = absl::Now();
  const absl::Status copied = options_.landing->CopyToPool(reserved.landing, pool_blocks);
  static Counter* const bytes_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_staged_bytes_total",
                   "KV bytes copied between the device pool and pinned host staging", {"direction"})
          ->WithLabels({"in"});
  static Counter* const seconds_total =
      DefaultMetricsRegistry()
          .Counter("tandem_worker_kv_staging_copy_seconds_total",
                   "Time spent copying KV between the device pool and pinned host staging", {"direction"})
          ->WithLabels({"in"});
  bytes_total->Increment(static_cast<double>(pool_blocks.size() * options_.block_bytes));
  seconds_total->Increment(absl::ToDoubleSeconds(absl::Now() - start));
  if (!copied.ok()) {
    return absl::Status(copied.code(), absl::StrCat("copying landed KV into the pool: ", copied.message()));
  }
  return absl::OkStatus();
}

grpc::ServerWriteReactor<GenerateResponse>* DecodeService::Decode(grpc::CallbackServerContext* context,
                                                                  const tandem::v1::DecodeRequest* request) {
  return new DecodeStream(this, context, *request);
}

grpc::ServerUnaryReactor* DecodeService::Status(grpc::CallbackServerContext* context,
                                                const tandem::v1::WorkerStatusRequest*,
                                                tandem::v1::WorkerStatus* response) {
  *response = worker_common::ToWorkerStatus(options_.worker_id, tandem::v1::WORKER_ROLE_DECODE,
                                            options_.model_id, runner_->load());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem::decode_worker
