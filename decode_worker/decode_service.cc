#include "decode_worker/decode_service.h"

#include <iostream>
#include <memory>
#include <optional>

#include "absl/strings/str_format.h"
#include "common/metrics.h"
#include "kvstore/block_format.h"
#include "model/text_stream.h"
#include "proto/grpc_status.h"
#include "worker_common/worker_status.h"

namespace tandem::decode_worker {
namespace {

using tandem::v1::GenerateResponse;

engine::SamplingParams FromProto(const tandem::v1::SamplingParams& p) {
  engine::SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  if (p.has_seed()) s.seed = p.seed();
  return s;
}

constexpr absl::Duration kEngineCallTimeout = absl::Seconds(10);

// ReserveRequest and DecodeRequest carry the same request fields.
template <typename Proto>
engine::EngineRequest ToEngineRequest(int64_t id, const Proto& r) {
  engine::EngineRequest req;
  req.id = id;
  req.prompt_tokens.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  req.max_tokens = r.max_tokens();
  req.sampling = FromProto(r.sampling());
  req.stop_at_eos = r.stop_at_eos();
  return req;
}

}  // namespace

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

grpc::Status DecodeService::Reserve(grpc::ServerContext*, const tandem::v1::ReserveRequest* r,
                                    tandem::v1::KvReservation* response) {
  if (r->request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: empty");
  }
  int64_t id;
  {
    absl::MutexLock lock(&mu_);
    if (reservations_.contains(r->request_id())) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "request_id: already reserved");
    }
    id = next_engine_id_++;
  }
  engine::EngineRequest req = ToEngineRequest(id, *r);
  engine::KvReservation reservation;
  absl::Status s = runner_->Run(
      [&](engine::Engine& e) -> absl::Status {
        absl::StatusOr<engine::KvReservation> res = e.Reserve(std::move(req));
        if (!res.ok()) return res.status();
        reservation = std::move(*res);
        return absl::OkStatus();
      },
      absl::Now() + kEngineCallTimeout);
  if (!s.ok()) return ToGrpc(s);
  const absl::Duration ttl =
      r->reservation_ttl_ms() > 0 ? absl::Milliseconds(r->reservation_ttl_ms()) : options_.reservation_ttl;
  {
    absl::MutexLock lock(&mu_);
    reservations_[r->request_id()] = {id, absl::Now() + ttl, reservation.block_ids,
                                      reservation.cached_tokens / options_.block_size, *r};
  }
  response->set_request_id(r->request_id());
  response->set_ucx_worker_address(options_.ucx_worker_address);
  response->set_region_id(options_.kv_region.region_id);
  response->set_region_base(options_.kv_region.base_address);
  response->set_region_bytes(options_.kv_region.bytes);
  response->set_packed_rkey(options_.kv_region.packed_rkey);
  response->set_block_size(options_.block_size);
  response->set_block_bytes(options_.block_bytes);
  response->set_model_id(options_.model_id);
  *response->mutable_block_ids() = {reservation.block_ids.begin(), reservation.block_ids.end()};
  response->set_cached_blocks(reservation.cached_tokens / options_.block_size);
  return grpc::Status::OK;
}

grpc::Status DecodeService::Release(grpc::ServerContext*, const tandem::v1::ReleaseRequest* r,
                                    tandem::v1::ReleaseResponse*) {
  int64_t id;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(r->request_id());
    if (it == reservations_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "request_id: no such reservation");
    }
    id = it->second.engine_id;
    reservations_.erase(it);
  }
  return ToGrpc(runner_->Run([id](engine::Engine& e) { return e.ReleaseReserved(id); },
                             absl::Now() + kEngineCallTimeout));
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
  for (int64_t id : expired) (void)engine.ReleaseReserved(id);
}

grpc::Status DecodeService::Decode(grpc::ServerContext* context, const tandem::v1::DecodeRequest* r,
                                   grpc::ServerWriter<GenerateResponse>* writer) {
  auto queue = std::make_shared<engine::UpdateQueue>();
  auto listener = [queue](const engine::SequenceUpdate& u) { queue->Push(u); };
  int64_t id;
  model::TextStream text(tokenizer_);
  int32_t generated = 0;
  // A kv_ready request whose transferred blocks fail their checksums is
  // prefilled here from its reservation's request instead.
  std::optional<tandem::v1::ReserveRequest> recompute;
  if (r->kv_ready()) {
    Reservation reserved;
    {
      absl::MutexLock lock(&mu_);
      auto it = reservations_.find(r->request_id());
      if (it == reservations_.end()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, "request_id: no reservation (expired or unknown)");
      }
      reserved = std::move(it->second);
      reservations_.erase(it);  // no longer subject to expiry
    }
    id = reserved.engine_id;
    if (r->kv_block_crc32c_size() > 0) {
      // The reserved blocks are this request's alone until Activate or
      // ReleaseReserved, and the prefill worker's write completed before
      // the router sent this call: reading them here races with nothing.
      const absl::Status verified = VerifyTransferredBlocks(
          reinterpret_cast<const uint8_t*>(options_.kv_region.base_address), options_.block_bytes,
          reserved.block_ids, reserved.cached_blocks,
          absl::MakeConstSpan(r->kv_block_crc32c().data(), r->kv_block_crc32c_size()));
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
        verified_blocks->Increment(static_cast<double>(r->kv_block_crc32c_size()));
      } else {
        failures->Increment();
        std::cerr << "decode worker: request " << r->request_id() << ": " << verified.message()
                  << "; prefilling it here\n";
        (void)runner_->Run([id](engine::Engine& e) { return e.ReleaseReserved(id); },
                           absl::Now() + kEngineCallTimeout);
        if (verified.code() != absl::StatusCode::kDataLoss) return ToGrpc(verified);
        recompute = std::move(reserved.request);
      }
    }
  }
  if (recompute.has_value()) {
    {
      absl::MutexLock lock(&mu_);
      id = next_engine_id_++;
    }
    absl::Status s =
        runner_->Submit(ToEngineRequest(id, *recompute), listener, absl::Now() + kEngineCallTimeout);
    if (!s.ok()) return ToGrpc(s);
  } else if (r->kv_ready()) {
    const int32_t first = r->first_token();
    absl::Status s = runner_->ListenAndRun(
        id, listener, [id, first](engine::Engine& e) { return e.Activate(id, first); },
        absl::Now() + kEngineCallTimeout);
    if (!s.ok()) {
      (void)runner_->Run([id](engine::Engine& e) { return e.ReleaseReserved(id); },
                         absl::Now() + kEngineCallTimeout);
      return ToGrpc(s);
    }
    GenerateResponse out;
    out.mutable_chunk()->add_token_ids(first);
    out.mutable_chunk()->set_text(text.Push(first));
    generated = 1;
    if (!writer->Write(out)) {
      (void)runner_->Run([id](engine::Engine& e) { return e.Cancel(id); }, absl::Now() + kEngineCallTimeout);
      return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    }
  } else {
    {
      absl::MutexLock lock(&mu_);
      id = next_engine_id_++;
    }
    engine::EngineRequest req = ToEngineRequest(id, *r);
    if (options_.on_prompt) {
      options_.on_prompt(req.prompt_tokens, r->has_prefetch_hint() ? &r->prefetch_hint() : nullptr);
    }
    absl::Status s = runner_->Submit(std::move(req), listener, absl::Now() + kEngineCallTimeout);
    if (!s.ok()) return ToGrpc(s);
  }

  const absl::Time deadline = absl::FromChrono(context->deadline());
  int32_t cached_tokens = 0;
  for (;;) {
    std::optional<engine::SequenceUpdate> u = queue->Pop(absl::Now() + absl::Milliseconds(100));
    if (context->IsCancelled() || absl::Now() > deadline) {
      (void)runner_->Run([id](engine::Engine& e) { return e.Cancel(id); }, absl::Now() + kEngineCallTimeout);
      return grpc::Status(
          context->IsCancelled() ? grpc::StatusCode::CANCELLED : grpc::StatusCode::DEADLINE_EXCEEDED,
          "decode stopped");
    }
    if (!u.has_value()) continue;
    cached_tokens = std::max(cached_tokens, u->cached_tokens);
    if (!u->new_tokens.empty()) {
      GenerateResponse out;
      for (int32_t t : u->new_tokens) {
        out.mutable_chunk()->add_token_ids(t);
        *out.mutable_chunk()->mutable_text() += text.Push(t);
        ++generated;
      }
      if (!writer->Write(out)) {
        (void)runner_->Run([id](engine::Engine& e) { return e.Cancel(id); },
                           absl::Now() + kEngineCallTimeout);
        return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
      }
    }
    if (u->end == engine::SequenceEnd::kNone) continue;
    if (u->end == engine::SequenceEnd::kError) return ToGrpc(u->error);
    if (u->end == engine::SequenceEnd::kCancelled) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    }
    const std::string rest = text.Finish();
    if (!rest.empty()) {
      GenerateResponse out;
      out.mutable_chunk()->set_text(rest);
      writer->Write(out);
    }
    GenerateResponse done;
    tandem::v1::GenerateSummary* summary = done.mutable_summary();
    summary->set_request_id(r->request_id());
    summary->set_finish_reason(u->end == engine::SequenceEnd::kStop ? tandem::v1::FINISH_REASON_STOP
                                                                    : tandem::v1::FINISH_REASON_LENGTH);
    summary->mutable_usage()->set_completion_tokens(generated);
    summary->mutable_usage()->set_cached_tokens(cached_tokens);
    summary->set_decode_worker(options_.worker_id);
    summary->set_model(options_.model_id);
    writer->Write(done);
    return grpc::Status::OK;
  }
}

grpc::Status DecodeService::Status(grpc::ServerContext*, const tandem::v1::WorkerStatusRequest*,
                                   tandem::v1::WorkerStatus* response) {
  *response = worker_common::ToWorkerStatus(options_.worker_id, tandem::v1::WORKER_ROLE_DECODE,
                                            options_.model_id, runner_->load());
  return grpc::Status::OK;
}

}  // namespace tandem::decode_worker
