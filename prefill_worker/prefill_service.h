// The prefill worker's gRPC service: computes a prompt's KV on its engine
// (reusing its own prefix cache), writes the blocks the decode worker does not
// already hold into the decode worker's reservation over UCX, and returns the
// first token.
//
// A worker process builds it (worker/worker_process.cc):
//
//   engine::EngineRunner runner(engine, {});
//   PrefillService service({.worker_id = "prefill-0", .model_id = model,
//                           .block_size = 16, .block_bytes = layout.BlockBytes(),
//                           .kv_base = reinterpret_cast<const uint8_t*>(kv_view.base)},
//                          &runner, transfer_engine);
//   builder.RegisterService(&service);  // a grpc::ServerBuilder
//
// Prefill is a gRPC callback reactor: it queues the prompt on the engine
// thread (EngineRunner::SubmitAsync, keeping the blocks when it finishes);
// the request's final update hands the send to the service's SendQueue
// threads (TransferEngine::Write blocks until the decode worker confirms),
// which release the blocks on the engine thread and finish the RPC. No
// thread waits on the engine. A client that cancels while the prompt is
// computed cancels it on the engine; one that cancels later skips a send
// not yet started.
//
// The reservation may follow the request (PrefillRequest.reservation_follows):
// the router reserves decode blocks while the prompt computes and sends them
// with ProvideReservation. The call's KV sends wait for it (its streamed
// chunks are copied and queued meanwhile; no thread waits), at most
// reservation_wait; a reservation that arrives before its Prefill is kept
// for it as long. A cancelled call stops waiting.
//
// Failure answers: a transfer that fails or outlives its deadline (the decode
// worker vanished) is ABORTED, so the router takes that decode worker out of
// rotation and retries; the prefill's blocks are released either way.
//
// Thread safety: the RPC methods are called by gRPC from any thread. The
// service must outlive the gRPC server it is registered with (Shutdown
// returns once every call has finished); its destructor joins the send
// threads.
#ifndef TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_
#define TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/engine_runner.h"
#include "engine/pool_copier.h"
#include "prefill_worker/send_queue.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"

namespace tandem::prefill_worker {

struct PrefillServiceOptions {
  // This worker's id, as registered with the router. Required.
  std::string worker_id;
  // The model the engine serves; a reservation of another model (or block
  // layout) is refused. Required.
  std::string model_id;
  // Tokens per KV block; must equal the engine's and the decode worker's.
  // Default: 16.
  int32_t block_size = 16;
  // Bytes per KV block in the pool (KvCacheLayout::BlockBytes()); must equal
  // the decode worker's. Required.
  uint64_t block_bytes = 0;
  // The engine's KV pool (KvCacheView::base, backend memory) that blocks are
  // sent from. Borrowed: must stay valid until the service is destroyed.
  // Required.
  const uint8_t* kv_base = nullptr;
  // The backend owning the pool. Where the host may not touch its memory (a
  // GPU; the CPU's guarded mode) blocks are staged: copied pool -> pinned
  // host in batches of staging_blocks on a copy stream, then written from
  // there. Null or host-accessible: written straight from the pool.
  // Borrowed. Default: null.
  kernels::Backend* backend = nullptr;
  // Blocks staged at once per sending thread (pinned memory: send_threads *
  // staging_blocks * block_bytes at most). Must be >= 1. Default: 64.
  int32_t staging_blocks = 64;
  // Chunk streaming: with chunked prefill, send the blocks each chunk
  // completes while the next chunk computes, instead of all after the last
  // (the engine's stream_prompt_blocks). Default: true.
  bool stream_kv = true;
  // Deadline of one request's KV transfer. Default: 10 s.
  absl::Duration transfer_timeout = absl::Seconds(10);
  // Longest a Prefill may take when the client set no earlier deadline.
  // Default: 10 min.
  absl::Duration max_request_time = absl::Minutes(10);
  // Threads sending KV blocks (each blocks in one TransferEngine::Write at a
  // time). Default: 4.
  int send_threads = 4;
  // Longest a call sent with reservation_follows waits for its reservation
  // (from its arrival; then DEADLINE_EXCEEDED, its blocks released), and
  // longest a reservation that arrived before its call is kept. The router
  // provides it within its Reserve's deadline (10 s) or cancels the call.
  // Enforced by ExpireReservationWaits. Default: 30 s.
  absl::Duration reservation_wait = absl::Seconds(30);
  // Called with a valid request's prompt and the router's prefetch hint
  // (PrefillRequest.prefetch_hint; nullptr when the request carries none)
  // before it is queued in the engine (the worker starts its KV prefetch
  // there, kvstore/prefetcher.h). Runs on a gRPC thread; must not block.
  // Default: empty.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
};

class PrefillCall;  // prefill_service.cc: one Prefill call's reactor

class PrefillService final : public tandem::v1::PrefillWorker::CallbackService {
 public:
  // Borrowed: runner and transfer must outlive the service.
  PrefillService(PrefillServiceOptions options, engine::EngineRunner* runner,
                 transfer::TransferEngine* transfer)
      : options_(std::move(options)), runner_(runner), transfer_(transfer), senders_(options_.send_threads) {}

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const tandem::v1::PrefillRequest* request,
                                    tandem::v1::PrefillResponse* response) override;
  grpc::ServerUnaryReactor* ProvideReservation(grpc::CallbackServerContext* context,
                                               const tandem::v1::ProvideReservationRequest* request,
                                               tandem::v1::ProvideReservationResponse* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const tandem::v1::WorkerStatusRequest* request,
                                   tandem::v1::WorkerStatus* response) override;

  // Ends the waits for a reservation that passed reservation_wait
  // (DEADLINE_EXCEEDED) and drops reservations no call took in that time.
  // The worker calls it from its engine thread's tick; never blocks.
  void ExpireReservationWaits(absl::Time now);
  // Calls waiting for their reservation and reservations waiting for their
  // call (for tests and the worker's status).
  int AwaitingReservations();
  int EarlyReservations();

 private:
  friend class PrefillCall;

  // INVALID_ARGUMENT unless the reservation matches this worker's layout and
  // covers a prompt of `prompt_tokens` tokens inside its region.
  absl::Status CheckReservation(int64_t prompt_tokens, const tandem::v1::KvReservation& res) const;
  // A call sent with reservation_follows: registers it for its
  // ProvideReservation, or hands it the reservation that came first.
  void AwaitReservation(const std::string& key, PrefillCall* call);
  // Before its call ends (and is deleted): no reservation reaches it after.
  void StopAwaiting(const std::string& key, PrefillCall* call);
  // Gives the held blocks of request `id` back on the engine thread, not
  // waiting. (The engine keeps a finished request's held blocks in the same
  // list as a decode worker's reservations, so this is its ReleaseReserved:
  // nothing to do with DecodeWorker.Reserve.)
  void ReleaseHeldAsync(int64_t id);
  // A sending thread's pool copier (made on first use; at most one per
  // sending thread ever exists), and its return.
  absl::StatusOr<std::unique_ptr<engine::PoolCopier>> AcquireCopier();
  void ReturnCopier(std::unique_ptr<engine::PoolCopier> copier);
  // The engine thread's copier for streamed chunks (made on first use;
  // only the engine thread, which runs the listeners, calls this).
  absl::StatusOr<engine::PoolCopier*> StreamCopier();

  const PrefillServiceOptions options_;
  engine::EngineRunner* const runner_;
  transfer::TransferEngine* const transfer_;
  std::atomic<int64_t> next_engine_id_{1};
  absl::Mutex copiers_mu_;
  std::vector<std::unique_ptr<engine::PoolCopier>> idle_copiers_ ABSL_GUARDED_BY(copiers_mu_);
  std::unique_ptr<engine::PoolCopier> stream_copier_;  // engine thread only
  // Keyed by AwaitKey(request_id, attempt). Lock order: awaiting_mu_, then
  // a call's own mutex.
  struct EarlyReservation {
    tandem::v1::KvReservation reservation;
    absl::Time arrived;
  };
  absl::Mutex awaiting_mu_;
  absl::flat_hash_map<std::string, PrefillCall*> awaiting_ ABSL_GUARDED_BY(awaiting_mu_);
  absl::flat_hash_map<std::string, EarlyReservation> early_ ABSL_GUARDED_BY(awaiting_mu_);
  // Last member: destroyed (its threads joined) first.
  SendQueue senders_;
};

}  // namespace tandem::prefill_worker

#endif  // TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_
