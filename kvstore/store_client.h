// A worker's client of the shared KV store (`tandem store`): the
// RemoteTier its TieredStore falls through to (kvstore/remote_tier.h).
//
//   auto client = StoreClient::Create({.model_id = config.model_id}, grpc::CreateChannel(addr, creds));
//   tiered_options.remote = client->get();  // client outlives the TieredStore
//
// Fetch is one synchronous Get RPC with a short deadline (fetch_timeout); a
// store that is down or slow is a miss, and for retry_after after a failure
// Fetch does not call at all. Offer never blocks: values go into
// a bounded queue (full: dropped) that one owned thread sends as Put batches.
// The destructor stops the thread (queued offers are dropped) and joins it.
//
// Thread safety: all methods may be called from any thread.
#ifndef TANDEM_KVSTORE_STORE_CLIENT_H_
#define TANDEM_KVSTORE_STORE_CLIENT_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "kvstore/remote_tier.h"
#include "tandem/v1/worker.grpc.pb.h"

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
    // Deadline of one Put. Default: 2 s.
    absl::Duration put_timeout = absl::Seconds(2);
  };

  struct Stats {
    int64_t fetches = 0;
    int64_t fetch_hits = 0;
    int64_t fetch_errors = 0;  // RPC failures (not misses)
    int64_t fetch_skipped = 0;  // answered Unavailable within retry_after of a failure
    int64_t offered = 0;
    int64_t offers_dropped = 0;
    int64_t put_blocks = 0;    // sent and acknowledged as stored
    int64_t put_errors = 0;    // failed Put RPCs
  };

  // InvalidArgument on an empty model_id, a null channel or bad sizes.
  static absl::StatusOr<std::unique_ptr<StoreClient>> Create(const Options& options,
                                                             std::shared_ptr<grpc::Channel> channel);
  ~StoreClient() override;
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  absl::StatusOr<std::string> Fetch(BlockHash hash) override;
  void Offer(BlockHash hash, std::string value) override;

  // Waits until every offer queued so far was sent (or the deadline); for
  // tests. False if the deadline passed first.
  bool Flush(absl::Time deadline);

  Stats stats() const;

 private:
  StoreClient(const Options& options, std::shared_ptr<grpc::Channel> channel);
  void SendLoop();

  const Options options_;
  std::unique_ptr<tandem::v1::KvStore::Stub> stub_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::pair<BlockHash, std::string>> queue_;  // guarded by mu_
  bool sending_ = false;                                  // guarded by mu_
  bool stop_ = false;                                     // guarded by mu_
  Stats stats_;                                           // guarded by mu_
  absl::Time unavailable_until_ = absl::InfinitePast();   // guarded by mu_

  std::thread sender_;  // joined by the destructor
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_STORE_CLIENT_H_
