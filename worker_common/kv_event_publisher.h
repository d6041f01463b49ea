// Streams a worker's KV events to its router and answers snapshot requests.
//
//   engine::KvEventLog log;                       // the engine appends to it
//   KvEventPublisher publisher({.worker_id = id}, &log, router_stub.get(), load_fn);
//   publisher.Start();                            // owns one thread
//   KvSnapshotService snapshots(&log, id, load_fn);   // register on the worker's server
//   ...
//   publisher.Stop();                             // joins; also done by the destructor
//
// The publisher keeps one PublishKvEvents client stream open and writes a
// batch whenever events are pending (at most every `interval`), each with the
// next sequence number and the current load. When the stream breaks (router
// restarted, network), it opens a new one after `retry_backoff`; batches that
// were drained but not delivered are lost, which the router sees as a gap in
// the sequence numbers and answers by calling KvEventSource.Snapshot.
#ifndef TANDEM_WORKER_COMMON_KV_EVENT_PUBLISHER_H_
#define TANDEM_WORKER_COMMON_KV_EVENT_PUBLISHER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/kv_events.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::worker_common {

// The proto form of a batch / snapshot (events grouped by kind and tier, in
// order).
tandem::v1::KvEventBatch ToProto(const std::string& worker_id, const engine::KvEventLog::Batch& batch);
tandem::v1::KvEventBatch ToProto(const std::string& worker_id, const engine::KvEventLog::Snapshot& snap);

class KvEventPublisher {
 public:
  struct Options {
    std::string worker_id;
    // Which of the log's consumers this publisher drains (one per router).
    engine::KvEventLog::ConsumerId consumer = engine::KvEventLog::kFirstConsumer;
    // Longest wait between a block event and its publication. Default: 20 ms.
    absl::Duration interval = absl::Milliseconds(20);
    // Most events in one batch. Default: 4096.
    size_t max_batch_events = 4096;
    // Wait before reopening a broken stream. Default: 500 ms.
    absl::Duration retry_backoff = absl::Milliseconds(500);
  };

  // `log` and `stub` are borrowed and must outlive the publisher. `load`
  // (may be empty) supplies the load sent with each batch.
  KvEventPublisher(Options options, engine::KvEventLog* log, tandem::v1::WorkerRegistry::StubInterface* stub,
                   std::function<tandem::v1::WorkerLoad()> load);
  ~KvEventPublisher();

  void Start();
  // Stops and joins the thread (idempotent). Returns within ~interval plus
  // the gRPC write deadline.
  void Stop();

  int64_t batches_sent() const;

 private:
  void Loop();

  const Options options_;
  engine::KvEventLog* const log_;
  tandem::v1::WorkerRegistry::StubInterface* const stub_;
  const std::function<tandem::v1::WorkerLoad()> load_;
  absl::Notification stop_;
  std::thread thread_;
  mutable absl::Mutex mu_;
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;  // to cancel on Stop
  int64_t batches_sent_ ABSL_GUARDED_BY(mu_) = 0;
};

// tandem.v1.KvEventSource for a worker: Snapshot returns the log's state.
class KvSnapshotService final : public tandem::v1::KvEventSource::Service {
 public:
  KvSnapshotService(const engine::KvEventLog* log, std::string worker_id,
                    std::function<tandem::v1::WorkerLoad()> load)
      : log_(log), worker_id_(std::move(worker_id)), load_(std::move(load)) {}

  grpc::Status Snapshot(grpc::ServerContext*, const tandem::v1::KvSnapshotRequest*,
                        tandem::v1::KvEventBatch* response) override;

 private:
  const engine::KvEventLog* const log_;
  const std::string worker_id_;
  const std::function<tandem::v1::WorkerLoad()> load_;
};

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_KV_EVENT_PUBLISHER_H_
