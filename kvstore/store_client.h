// A worker's client of the shared KV store (`tandem store`): the
// RemoteTier its TieredStore falls through to (kvstore/remote_tier.h).
//
//   auto client = StoreClient::Create({.model_id = config.model_id}, grpc::CreateChannel(addr, creds));
//   tiered_options.remote = client->get();  // client outlives the TieredStore
//
// Fetch (FetchMany: a batch) is one synchronous RPC with a short deadline (fetch_timeout); a
// store that is down or slow is a miss, and for retry_after after a failure
// Fetch does not call at all. Offer never blocks: values go into
// a bounded queue (full: dropped) that one owned thread sends in batches.
// The destructor stops the thread (queued offers are dropped) and joins it.
//
// Data path. With Options::transfer (the worker's transfer engine) the block
// bytes move over UCX and only control goes over gRPC
// (kvstore/store_service.h): the client allocates `landing_slots` registered
// slots of slot_bytes; Fetch takes a free slot and calls GetInto, the store
// writes the value into the slot and answers once it is in place, the client
// copies it out (the caller verifies its checksum). Offer batches go
// ReservePut -> one TransferEngine::Write into the store's staging slots ->
// CommitPut. A store that answers UNIMPLEMENTED (no transfer engine) switches
// the client to gRPC bytes (Get/Put) for good; so does the lack of
// Options::transfer. With every landing slot busy, a Fetch uses Get. A slot
// whose GetInto failed (deadline: the store may still be writing it) is not
// reused for slot_quarantine.
//
// Thread safety: all methods may be called from any thread.
#ifndef TANDEM_KVSTORE_STORE_CLIENT_H_
#define TANDEM_KVSTORE_STORE_CLIENT_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "grpcpp/channel.h"
#include "kvstore/remote_tier.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"

namespace tandem::kvstore {

class StoreClient final : public RemoteTier {
 public:
  struct Options {
    // The model of every block. Default: "" (must be set).
    std::string model_id;
    // Deadline of one Fetch (it may run on the engine thread: with
    // retry_after, a hung store costs at most this once per retry_after).
    // Default: 200 ms.
    absl::Duration fetch_timeout = absl::Milliseconds(200);
    // After a failed RPC (store down or slow), Fetch answers Unavailable
    // without calling for this long, so callers on a hot path (the engine
    // thread) do not wait fetch_timeout per block. Default: 1 s.
    absl::Duration retry_after = absl::Seconds(1);
    // Most offered values waiting to be sent. Default: 256.
    int32_t offer_queue_blocks = 256;
    // Most blocks in one Put. Default: 16.
    int32_t put_batch_blocks = 16;
    // Deadline of one Put (or ReservePut + write + CommitPut). Default: 2 s.
    absl::Duration put_timeout = absl::Seconds(2);

    // Borrowed transfer engine for the UCX data path; null = gRPC bytes.
    // Default: null.
    transfer::TransferEngine* transfer = nullptr;
    // Bytes of one encoded block (EncodedBlockBytes of the model's geometry);
    // required with transfer. Default: 0.
    size_t slot_bytes = 0;
    // Registered landing slots for Fetch (concurrent fetches over UCX).
    // Default: 16.
    int32_t landing_slots = 16;
    // A landing slot whose GetInto failed is not reused for this long.
    // Default: 5 s.
    absl::Duration slot_quarantine = absl::Seconds(5);
  };

  struct Stats {
    int64_t fetches = 0;     // blocks asked for
    int64_t fetch_rpcs = 0;  // Get / GetInto calls made for them
    int64_t fetch_hits = 0;
    int64_t fetch_errors = 0;   // RPC failures (not misses)
    int64_t fetch_skipped = 0;  // answered Unavailable within retry_after of a failure
    int64_t offered = 0;
    int64_t offers_dropped = 0;
    int64_t put_blocks = 0;  // sent and acknowledged as stored
    int64_t put_errors = 0;  // failed Put RPCs (or UCX reserve/write/commit)
    // Bytes of fetched values and of values sent, by data path.
    int64_t ucx_fetch_bytes = 0;
    int64_t ucx_put_bytes = 0;
    int64_t grpc_fetch_bytes = 0;
    int64_t grpc_put_bytes = 0;
    // Fetches that used Get because every landing slot was busy.
    int64_t fetch_slot_fallbacks = 0;
  };

  // InvalidArgument on an empty model_id, a null channel or bad sizes;
  // errors of TransferEngine::Allocate (landing slots).
  static absl::StatusOr<std::unique_ptr<StoreClient>> Create(const Options& options,
                                                             std::shared_ptr<grpc::Channel> channel);
  ~StoreClient() override;
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  absl::StatusOr<std::string> Fetch(BlockHash hash) override;
  // One GetInto per as many blocks as there are free landing slots (one Get
  // of up to kMaxBlocksPerRpc blocks on the gRPC path).
  std::vector<absl::StatusOr<std::string>> FetchMany(absl::Span<const BlockHash> hashes) override;
  void Offer(BlockHash hash, std::string value) override;

  // Waits until every offer queued so far was sent (or the deadline); for
  // tests. False if the deadline passed first.
  bool Flush(absl::Time deadline);

  Stats stats() const;
  // "ucx" while the UCX data path is in use, else "grpc".
  std::string transport() const;

 private:
  using Batch = std::vector<std::pair<BlockHash, std::string>>;

  StoreClient(const Options& options, std::shared_ptr<grpc::Channel> channel);
  void SendLoop();
  static constexpr size_t kMaxBlocksPerRpc = 64;
  // Append one result per hash to *out. FetchUcx returns false, appending
  // nothing, when the store has no UCX path.
  bool FetchUcx(absl::Span<const BlockHash> hashes, const std::vector<int32_t>& slots,
                std::vector<absl::StatusOr<std::string>>* out);
  void FetchGrpc(absl::Span<const BlockHash> hashes, std::vector<absl::StatusOr<std::string>>* out);
  // Sends a batch over UCX; UNIMPLEMENTED when the store has no UCX path.
  absl::StatusOr<int32_t> PutUcx(const Batch& batch);
  absl::StatusOr<int32_t> PutGrpc(Batch& batch);
  // A free landing slot, or -1.
  int32_t TakeSlotLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::unique_ptr<tandem::v1::KvStore::Stub> stub_;

  mutable StdMutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::pair<BlockHash, std::string>> queue_ ABSL_GUARDED_BY(mu_);
  bool sending_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  absl::Time unavailable_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool ucx_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<transfer::RegisteredRegion> landing_;  // set by Create; fixed after
  std::vector<int32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<absl::Time, int32_t>> quarantined_ ABSL_GUARDED_BY(mu_);

  std::thread sender_;  // joined by the destructor
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_STORE_CLIENT_H_
