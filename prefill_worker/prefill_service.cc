#include "prefill_worker/prefill_service.h"

#include <memory>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/metrics.h"
#include "kvstore/block_format.h"
#include "proto/grpc_status.h"
#include "worker_common/worker_status.h"

namespace tandem::prefill_worker {
namespace {

constexpr absl::Duration kEngineCallTimeout = absl::Seconds(10);

}  // namespace

grpc::Status PrefillService::Prefill(grpc::ServerContext* context, const tandem::v1::PrefillRequest* r,
                                     tandem::v1::PrefillResponse* response) {
  const absl::Time start = absl::Now();
  const tandem::v1::KvReservation& res = r->reservation();
  const int64_t prompt_len = r->prompt_token_ids_size();
  if (prompt_len == 0) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "prompt_token_ids: empty");
  if (res.block_size() != options_.block_size || res.block_bytes() != options_.block_bytes ||
      res.model_id() != options_.model_id) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("reservation: layout (model %s, block %d tokens, %d bytes) differs "
                                        "from this worker's (model %s, %d, %d)",
                                        res.model_id(), res.block_size(), res.block_bytes(),
                                        options_.model_id, options_.block_size, options_.block_bytes));
  }
  const int64_t blocks = (prompt_len + options_.block_size - 1) / options_.block_size;
  if (res.block_ids_size() < blocks || res.cached_blocks() < 0 || res.cached_blocks() > blocks) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "reservation: block_ids do not cover the prompt");
  }
  for (int64_t i = 0; i < blocks; ++i) {
    const uint64_t end = (static_cast<uint64_t>(res.block_ids(i)) + 1) * res.block_bytes();
    if (res.block_ids(i) < 0 || end > res.region_bytes()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "reservation: block id outside the region");
    }
  }

  // 1. Compute the prompt's KV and the first token; keep the blocks.
  const int64_t id = next_engine_id_.fetch_add(1);
  engine::EngineRequest req;
  req.id = id;
  req.prompt_tokens.assign(r->prompt_token_ids().begin(), r->prompt_token_ids().end());
  if (options_.on_prompt) {
    options_.on_prompt(req.prompt_tokens, r->has_prefetch_hint() ? &r->prefetch_hint() : nullptr);
  }
  req.max_tokens = 1;
  req.sampling.temperature = r->sampling().temperature();
  req.sampling.top_k = r->sampling().top_k();
  req.sampling.top_p = r->sampling().top_p() == 0 ? 1.0f : r->sampling().top_p();
  if (r->sampling().has_seed()) req.sampling.seed = r->sampling().seed();
  req.stop_at_eos = r->stop_at_eos();
  req.hold_blocks_on_finish = true;
  auto queue = std::make_shared<engine::UpdateQueue>();
  absl::Status s = runner_->Submit(
      std::move(req), [queue](const engine::SequenceUpdate& u) { queue->Push(u); },
      absl::Now() + kEngineCallTimeout);
  if (!s.ok()) return ToGrpc(s);
  const absl::Time deadline =
      std::min(absl::FromChrono(context->deadline()), absl::Now() + absl::Minutes(10));
  engine::SequenceUpdate done;
  for (;;) {
    std::optional<engine::SequenceUpdate> u = queue->Pop(absl::Now() + absl::Milliseconds(100));
    if (context->IsCancelled() || absl::Now() > deadline) {
      (void)runner_->Run([id](engine::Engine& e) { return e.Cancel(id); }, absl::Now() + kEngineCallTimeout);
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "prefill did not finish in time");
    }
    if (!u.has_value()) continue;
    if (u->end == engine::SequenceEnd::kNone) continue;
    done = std::move(*u);
    break;
  }
  if (done.end == engine::SequenceEnd::kError) return ToGrpc(done.error);
  if (done.end == engine::SequenceEnd::kCancelled)
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  const absl::Time computed = absl::Now();
  auto release = [&] {
    (void)runner_->Run([id](engine::Engine& e) { return e.ReleaseReserved(id); },
                       absl::Now() + kEngineCallTimeout);
  };
  const bool eos = done.end == engine::SequenceEnd::kStop;
  response->set_first_token_is_eos(eos);
  response->set_first_token(eos ? 0 : done.new_tokens.at(0));
  // Tokens this worker did not compute (its own prefix cache and tiers).
  // Blocks the decode worker already held save transfer, not compute, so
  // they do not count: usage.cached_tokens is the compute a cache saved.
  response->set_cached_tokens(done.cached_tokens);
  response->set_prefill_ms(absl::ToDoubleMilliseconds(computed - start));

  // 2. Write the blocks the decode worker lacks into its reservation. The
  // held blocks are not touched by the engine until released: full ones are
  // immutable cache entries, the partial last one belongs to this request.
  if (!eos) {
    std::vector<transfer::WriteRequest> writes;
    for (int64_t i = res.cached_blocks(); i < blocks; ++i) {
      writes.push_back(
          {options_.kv_base + static_cast<uint64_t>(done.held_blocks.at(i)) * options_.block_bytes,
           static_cast<uint64_t>(res.block_ids(i)) * res.block_bytes(), options_.block_bytes});
    }
    // The checksums travel with the blocks (issue #6: integrity end to end):
    // the decode worker verifies what landed against what was sent.
    for (const transfer::WriteRequest& w : writes) {
      response->add_kv_block_crc32c(
          kvstore::Crc32c(absl::MakeConstSpan(static_cast<const uint8_t*>(w.local), w.bytes)));
    }
    transfer::RemoteRegion peer;
    peer.worker_address = res.ucx_worker_address();
    peer.region_id = res.region_id();
    peer.base_address = res.region_base();
    peer.bytes = res.region_bytes();
    peer.packed_rkey = res.packed_rkey();
    peer.peer_name = "decode reservation " + r->request_id();
    absl::Status sent =
        writes.empty()
            ? absl::OkStatus()
            : transfer_->Write(peer, writes, std::min(deadline, absl::Now() + options_.transfer_timeout));
    if (!sent.ok()) {
      release();
      return grpc::Status(grpc::StatusCode::ABORTED,
                          absl::StrFormat("transfer to decode worker failed: %s", sent.message()));
    }
    response->set_transferred_bytes(writes.size() * options_.block_bytes);
  }
  const absl::Duration transfer_time = absl::Now() - computed;
  response->set_transfer_ms(absl::ToDoubleMilliseconds(transfer_time));
  if (response->transferred_bytes() > 0) {
    // GB/s = rate(bytes_total) / rate(seconds_total); the gauge keeps the
    // last request's figure for a glance.
    static Counter* const bytes =
        DefaultMetricsRegistry()
            .Counter("tandem_worker_kv_transfer_bytes_total", "KV bytes written to decode workers over UCX")
            ->WithLabels({});
    static Counter* const seconds =
        DefaultMetricsRegistry()
            .Counter("tandem_worker_kv_transfer_seconds_total", "Time spent writing KV to decode workers")
            ->WithLabels({});
    static Gauge* const gbps =
        DefaultMetricsRegistry()
            .Gauge("tandem_worker_kv_transfer_last_gbps", "The last request's KV transfer rate, GB/s")
            ->WithLabels({});
    bytes->Increment(static_cast<double>(response->transferred_bytes()));
    seconds->Increment(absl::ToDoubleSeconds(transfer_time));
    if (transfer_time > absl::ZeroDuration()) {
      gbps->Set(static_cast<double>(response->transferred_bytes()) / absl::ToDoubleSeconds(transfer_time) /
                1e9);
    }
  }
  release();
  return grpc::Status::OK;
}

grpc::Status PrefillService::Status(grpc::ServerContext*, const tandem::v1::WorkerStatusRequest*,
                                    tandem::v1::WorkerStatus* response) {
  *response = worker_common::ToWorkerStatus(options_.worker_id, tandem::v1::WORKER_ROLE_PREFILL,
                                            options_.model_id, runner_->load());
  return grpc::Status::OK;
}

}  // namespace tandem::prefill_worker
