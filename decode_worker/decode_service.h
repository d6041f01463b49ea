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
//
// Handlers use gRPC's synchronous API and only enqueue work for the engine
// thread; each stream waits on its own queue with a deadline and notices
// client cancellation within 100 ms.
#ifndef TANDEM_DECODE_WORKER_DECODE_SERVICE_H_
#define TANDEM_DECODE_WORKER_DECODE_SERVICE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
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
  std::string worker_id;
  std::string model_id;
  // The engine's registered KV pool and the transfer engine's address.
  transfer::RegisteredRegion kv_region;
  std::string ucx_worker_address;
  int32_t block_size = 16;
  uint64_t block_bytes = 0;
  // Default TTL of a reservation. Default: 30 s.
  absl::Duration reservation_ttl = absl::Seconds(30);
  // Called with an aggregated request's prompt (Decode without kv_ready)
  // and the router's prefetch hint (DecodeRequest.prefetch_hint; nullptr
  // when the request carries none) before it is queued in the engine (the
  // worker starts its KV prefetch there, kvstore/prefetcher.h). Must not
  // block. Default: empty.
  std::function<void(absl::Span<const int32_t>, const tandem::v1::PrefetchHint*)> on_prompt;
};

class DecodeService final : public tandem::v1::DecodeWorker::Service {
 public:
  // Borrowed: runner and tokenizer outlive the service.
  DecodeService(DecodeServiceOptions options, engine::EngineRunner* runner, const model::Tokenizer* tokenizer)
      : options_(std::move(options)), runner_(runner), tokenizer_(tokenizer) {}

  grpc::Status Reserve(grpc::ServerContext* context, const tandem::v1::ReserveRequest* request,
                       tandem::v1::KvReservation* response) override;
  grpc::Status Release(grpc::ServerContext* context, const tandem::v1::ReleaseRequest* request,
                       tandem::v1::ReleaseResponse* response) override;
  grpc::Status Decode(grpc::ServerContext* context, const tandem::v1::DecodeRequest* request,
                      grpc::ServerWriter<tandem::v1::GenerateResponse>* writer) override;
  grpc::Status Status(grpc::ServerContext* context, const tandem::v1::WorkerStatusRequest* request,
                      tandem::v1::WorkerStatus* response) override;

  // Releases reservations whose TTL passed. Called on the engine thread
  // (EngineRunner::Options::on_tick).
  void ExpireReservations(engine::Engine& engine);

 private:
  struct Reservation {
    int64_t engine_id;
    absl::Time expires;
    // What the prefill worker writes (blocks [cached_blocks, n) of
    // block_ids), and the request, to prefill here if those bytes are bad.
    std::vector<int32_t> block_ids;
    int32_t cached_blocks = 0;
    tandem::v1::ReserveRequest request;
  };

  const DecodeServiceOptions options_;
  engine::EngineRunner* const runner_;
  const model::Tokenizer* const tokenizer_;

  absl::Mutex mu_;
  int64_t next_engine_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<std::string, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::decode_worker

#endif  // TANDEM_DECODE_WORKER_DECODE_SERVICE_H_
