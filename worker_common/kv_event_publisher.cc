#include "worker_common/kv_event_publisher.h"

#include <utility>

#include "grpcpp/client_context.h"

namespace tandem::worker_common {
namespace {

using tandem::v1::KvEvent;

// Appends `e` to `batch`, starting a new proto event when kind or tier
// changes (so a run of Stored HBM events is one message).
void AddEvent(const engine::KvEvent& e, tandem::v1::KvEventBatch* batch) {
  const KvEvent::Kind kind =
      e.kind == engine::KvEvent::Kind::kStored ? KvEvent::KIND_STORED : KvEvent::KIND_REMOVED;
  const auto tier = static_cast<tandem::v1::KvTier>(static_cast<int32_t>(e.tier));
  if (batch->events_size() == 0 || batch->events().rbegin()->kind() != kind ||
      batch->events().rbegin()->tier() != tier) {
    KvEvent* added = batch->add_events();
    added->set_kind(kind);
    added->set_tier(tier);
  }
  batch->mutable_events()->rbegin()->add_block_hashes(e.hash);
}

}  // namespace

tandem::v1::KvEventBatch ToProto(const std::string& worker_id, const engine::KvEventLog::Batch& batch) {
  tandem::v1::KvEventBatch out;
  out.set_worker_id(worker_id);
  out.set_first_sequence_number(batch.first_sequence_number);
  out.set_sequence_number(batch.sequence_number);
  for (const engine::KvEvent& e : batch.events) AddEvent(e, &out);
  return out;
}

tandem::v1::KvEventBatch ToProto(const std::string& worker_id, const engine::KvEventLog::Snapshot& snap) {
  tandem::v1::KvEventBatch out;
  out.set_worker_id(worker_id);
  out.set_sequence_number(snap.sequence_number);
  for (const engine::KvEvent& e : snap.stored) AddEvent(e, &out);
  return out;
}

KvEventPublisher::KvEventPublisher(Options options, engine::KvEventLog* log,
                                   tandem::v1::WorkerRegistry::StubInterface* stub,
                                   std::function<tandem::v1::WorkerLoad()> load)
    : options_(std::move(options)), log_(log), stub_(stub), load_(std::move(load)) {}

KvEventPublisher::~KvEventPublisher() { Stop(); }

void KvEventPublisher::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
}

void KvEventPublisher::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  {
    absl::MutexLock lock(&mu_);
    if (live_context_ != nullptr) live_context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

int64_t KvEventPublisher::batches_sent() const {
  absl::MutexLock lock(&mu_);
  return batches_sent_;
}

void KvEventPublisher::Loop() {
  while (!stop_.HasBeenNotified()) {
    grpc::ClientContext ctx;
    tandem::v1::KvEventsAck ack;
    {
      absl::MutexLock lock(&mu_);
      live_context_ = &ctx;
    }
    std::unique_ptr<grpc::ClientWriterInterface<tandem::v1::KvEventBatch>> writer =
        stub_->PublishKvEvents(&ctx, &ack);
    bool broken = false;
    while (!broken && !stop_.WaitForNotificationWithTimeout(options_.interval)) {
      engine::KvEventLog::Batch batch = log_->Drain(options_.consumer, options_.max_batch_events);
      while (!batch.events.empty()) {
        tandem::v1::KvEventBatch proto = ToProto(options_.worker_id, batch);
        if (load_) *proto.mutable_load() = load_();
        if (!writer->Write(proto)) {
          broken = true;  // the batch is lost: the router sees the gap
          break;
        }
        {
          absl::MutexLock lock(&mu_);
          ++batches_sent_;
        }
        batch = log_->Drain(options_.consumer, options_.max_batch_events);
      }
    }
    if (!broken) writer->WritesDone();
    (void)writer->Finish();
    {
      absl::MutexLock lock(&mu_);
      live_context_ = nullptr;
    }
    if (broken) stop_.WaitForNotificationWithTimeout(options_.retry_backoff);
  }
}

grpc::Status KvSnapshotService::Snapshot(grpc::ServerContext*, const tandem::v1::KvSnapshotRequest*,
                                         tandem::v1::KvEventBatch* response) {
  *response = ToProto(worker_id_, log_->TakeSnapshot());
  if (load_) *response->mutable_load() = load_();
  return grpc::Status::OK;
}

}  // namespace tandem::worker_common
