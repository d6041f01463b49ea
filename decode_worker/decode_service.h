// The decode worker's gRPC service. Its engine runs on an EngineRunner; its KV
// pool is registered with the transfer engine so prefill workers write
// straight into reserved blocks.
//
//   Reserve  -> blocks for the prompt (cached prefix marked), UCX address,
//               region and rkey; lapses after its TTL unless Decode starts.
//   Decode   -> with kv_ready: checks the written blocks against the
//               prefill worker's CRC32Cs, then joins the running batch with
//               the first token the prefill worker sampled (a block that
//               fails the check: the reservation is dropped and the prompt
//               prefilled here instead); without: prefills by itself
//               (aggregated mode). Streams token chunks, then a summary.
//   Release  -> gives a reservation back.
//   Renew    -> the reservation lapses its TTL from now (the router renews
//               each one while its prefill is queued or running, so a
//               reservation lives as long as its request; one a dead router
//               stops renewing frees its blocks within a TTL).
//
// A worker process builds it (worker/worker_process.cc):
//
//   engine::EngineRunner runner(engine, {.on_tick = [&](engine::Engine& e) {
//     service->ExpireReservations(e); }});
//   DecodeService service({.worker_id = "decode-0", .model_id = model,
//                          .kv_region = registered_pool,
//                          .ucx_worker_address = transfer->worker_address(),
//                          .block_size = 16, .block_bytes = layout.BlockBytes()},
//                         &runner, tokenizer);
//   builder.RegisterService(&service);  // a grpc::ServerBuilder
//
// Handlers are gRPC callback reactors and never wait: each RPC queues its
// work on the engine thread (EngineRunner::Post / SubmitAsync /
// ListenAndRunAsync) and is finished from the engine thread's callbacks;
// Reserve and Release go through EngineRunner::PostBesideStep, so with
// Options::reserve_beside_step (opt-in, worker_process.cc) they run on the
// runner's reservation thread while a decode step computes, and a
// reservation (on the request's TTFT) does not wait for the step. A
// Decode stream is a ServerWriteReactor with one write in flight; the
// engine's token updates are queued (coalesced while a write is in flight)
// and its final update writes the summary and finishes the RPC. A client that
// cancels, a deadline that passes (the engine cancels the request within one
// tick of EngineRunner::Options::tick) and the runner stopping all end the
// stream and free its blocks; server shutdown cancels live streams, which
// then end the same way.
//
// Thread safety: the RPC methods are called by gRPC from any thread;
// ExpireReservations on the engine thread only. The service must outlive the
// gRPC server it is registered with (Shutdown returns once every stream has
// finished).
#ifndef TANDEM_DECODE_WORKER_DECODE_SERVICE_H_
#define TANDEM_DECODE_WORKER_DECODE_SERVICE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "decode_worker/landing_area.h"
#include "engine/engine_runner.h"
#include "model/tokenizer.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"

namespace tandem::decode_worker {

// Checks blocks block_ids[first_written...] of the KV pool at `kv_base`
// (block_bytes each) against `crc32c` (parallel to the written blocks).
// DataLoss naming the first block that differs; InvalidArgument when the
// counts disagree.
absl::Status VerifyTransferredBlocks(const uint8_t* kv_base, size_t block_bytes,
                                     absl::Span<const int32_t> block_ids, int32_t first_written,
                                     absl::Span<const uint32_t> crc32c);

struct DecodeServiceOptions {
  // This worker's id, as registered with the router; names it in
  // GenerateSummary.decode_worker. Required.
  std::string worker_id;
  // The model the engine serves; reservations carry it so a prefill worker
  // of another model refuses them. Required.
  std::string model_id;
  // The engine's KV pool as registered with the transfer engine
  // (TransferEngine::Register). Its base_address is also read here, to
  // verify transferred blocks: the pool memory is borrowed and must stay
  // registered and valid until the service is destroyed. Required unless
  // `landing` is set.
  transfer::RegisteredRegion kv_region;
  // Where the pool is memory the host may not touch (a GPU's; the CPU's
  // guarded mode): prefill workers write into this area's pinned slots
  // instead, which are verified there and copied into the pool before the
  // request joins the batch. Borrowed. Default: null (write the pool).
  LandingArea* landing = nullptr;
  // The engine's KV pool (KvCacheView::base, backend memory): where landed
  // blocks are copied. Required with `landing`.
  uint8_t* kv_base = nullptr;
  // The transfer engine's TransferEngine::worker_address(), which prefill
  // workers connect to. Required.
  std::string ucx_worker_address;
  // Tokens per KV block; must equal the engine's. Default: 16.
  int32_t block_size = 16;
  // Bytes per KV block in the pool (KvCacheLayout::BlockBytes()). Required.
  uint64_t block_bytes = 0;
  // Default TTL of a reservation. Default: 30 s.
  absl::Duration reservation_ttl = absl::Seconds(30);
  // Called with an aggregated request's prompt (Decode without kv_ready)
  // and the router's prefetch hint (DecodeRequest.prefetch_hint; nullptr
  // when the request carries none) before it is queued in the engine (the
  // worker starts its KV prefetch there, kvstore/prefetcher.h). Runs on a
  // gRPC thread; must not block. Default: empty.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
};

class DecodeStream;  // decode_service.cc: one Decode call's reactor

class DecodeService final : public tandem::v1::DecodeWorker::CallbackService {
 public:
  // Borrowed: runner and tokenizer must outlive the service.
  DecodeService(DecodeServiceOptions options, engine::EngineRunner* runner, const model::Tokenizer* tokenizer)
      : options_(std::move(options)), runner_(runner), tokenizer_(tokenizer) {}

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const tandem::v1::ReserveRequest* request,
                                    tandem::v1::KvReservation* response) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const tandem::v1::ReleaseRequest* request,
                                    tandem::v1::ReleaseResponse* response) override;
  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* context,
                                  const tandem::v1::RenewRequest* request,
                                  tandem::v1::RenewResponse* response) override;
  grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Decode(
      grpc::CallbackServerContext* context, const tandem::v1::DecodeRequest* request) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const tandem::v1::WorkerStatusRequest* request,
                                   tandem::v1::WorkerStatus* response) override;

  // Releases reservations whose TTL passed (counted in
  // tandem_worker_reservations_expired_total). Called on the engine thread
  // (EngineRunner::Options::on_tick).
  void ExpireReservations(engine::Engine& engine);

 private:
  friend class DecodeStream;

  struct Reservation {
    int64_t engine_id;
    absl::Time expires;
    // What the prefill worker writes (blocks [cached_blocks, n) of
    // block_ids), and the request, to prefill here if those bytes are bad.
    std::vector<int32_t> block_ids;
    int32_t cached_blocks = 0;
    tandem::v1::ReserveRequest request;
    // With a landing area: the slots blocks [cached_blocks, cached_blocks +
    // n) land in, before they are copied to block_ids' pool blocks.
    LandingArea::Slots landing;
  };

  int64_t NextEngineId();
  // Engine thread: reserves blocks for `request` and records the
  // reservation under its request id.
  absl::Status ReserveOnEngine(engine::Engine& engine, int64_t id, const tandem::v1::ReserveRequest& request,
                               tandem::v1::KvReservation* response);
  // Takes request_id's reservation out of the table (no longer subject to
  // expiry). NotFound when expired or unknown.
  absl::StatusOr<Reservation> TakeReservation(const std::string& request_id);
  // The transferred blocks of `reserved` checked against the request's
  // CRC32Cs, counted in the worker's metrics.
  absl::Status CheckTransferredBlocks(const tandem::v1::DecodeRequest& request, const Reservation& reserved);
  // Makes the transferred blocks of `reserved` ready to compute on: checks
  // them (when the request carries CRC32Cs; DataLoss when one differs), then
  // copies them from their landing slots into the pool (with a landing area).
  absl::Status LandTransferredBlocks(const tandem::v1::DecodeRequest& request, const Reservation& reserved);
  // Gives reservation `id`'s blocks back (EngineRunner::PostBesideStep), not waiting.
  void ReleaseReservedAsync(int64_t id);

  const DecodeServiceOptions options_;
  engine::EngineRunner* const runner_;
  const model::Tokenizer* const tokenizer_;

  absl::Mutex mu_;
  int64_t next_engine_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::decode_worker

#endif  // TANDEM_DECODE_WORKER_DECODE_SERVICE_H_
