// The prefill worker's gRPC service: computes a prompt's KV on its engine
// (reusing its own prefix cache), writes the blocks the decode worker does not
// already hold into the decode worker's reservation over UCX, and returns the
// first token.
//
// Failure answers: a transfer that fails or outlives its deadline (the decode
// worker vanished) is ABORTED, so the router takes that decode worker out of
// rotation and retries; the prefill's blocks are released either way.
#ifndef TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_
#define TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/types/span.h"
#include "engine/engine_runner.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"

namespace tandem::prefill_worker {

struct PrefillServiceOptions {
  std::string worker_id;
  std::string model_id;
  int32_t block_size = 16;
  uint64_t block_bytes = 0;
  // The engine's KV pool (host memory) that blocks are sent from.
  const uint8_t* kv_base = nullptr;
  // Deadline of one request's KV transfer. Default: 10 s.
  absl::Duration transfer_timeout = absl::Seconds(10);
  // Called with a valid request's prompt and the router's prefetch hint
  // (PrefillRequest.prefetch_hint; nullptr when the request carries none)
  // before it is queued in the engine (the worker starts its KV prefetch
  // there, kvstore/prefetcher.h). Must not block. Default: empty.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
};

class PrefillService final : public tandem::v1::PrefillWorker::Service {
 public:
  // Borrowed: runner and transfer outlive the service.
  PrefillService(PrefillServiceOptions options, engine::EngineRunner* runner,
                 transfer::TransferEngine* transfer)
      : options_(std::move(options)), runner_(runner), transfer_(transfer) {}

  grpc::Status Prefill(grpc::ServerContext* context, const tandem::v1::PrefillRequest* request,
                       tandem::v1::PrefillResponse* response) override;
  grpc::Status Status(grpc::ServerContext* context, const tandem::v1::WorkerStatusRequest* request,
                      tandem::v1::WorkerStatus* response) override;

 private:
  const PrefillServiceOptions options_;
  engine::EngineRunner* const runner_;
  transfer::TransferEngine* const transfer_;
  std::atomic<int64_t> next_engine_id_{1};
};

}  // namespace tandem::prefill_worker

#endif  // TANDEM_PREFILL_WORKER_PREFILL_SERVICE_H_
