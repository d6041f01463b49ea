#include "router/router_service.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "proto/grpc_status.h"

namespace tandem::router {
namespace {

using tandem::v1::GenerateResponse;

// Writes one request's stream. gRPC owns the reactor until OnDone; the
// observer (owned by the core's call) reaches it through `this` only until
// it has delivered OnDone, after which the reactor calls Finish — so every
// observer call happens while the reactor is alive.
class GenerateStream final : public grpc::ServerWriteReactor<GenerateResponse> {
 public:
  class Observer final : public GenerationObserver {
   public:
    explicit Observer(GenerateStream* stream) : stream_(stream) {}
    void OnChunk(const tandem::v1::TokenChunk& chunk) override {
      GenerateResponse out;
      *out.mutable_chunk() = chunk;
      stream_->Enqueue(std::move(out), std::nullopt);
    }
    void OnDone(const absl::Status& status, const tandem::v1::GenerateSummary& summary) override {
      std::optional<GenerateResponse> last;
      if (status.ok()) {
        last.emplace();
        *last->mutable_summary() = summary;
      }
      if (last.has_value())
        stream_->Enqueue(std::move(*last), status);
      else
        stream_->Enqueue(std::nullopt, status);
    }

   private:
    GenerateStream* const stream_;
  };

  GenerateStream(RouterCore* core, grpc::CallbackServerContext* context,
                 const tandem::v1::GenerateRequest& request) {
    auto observer = std::make_shared<Observer>(this);
    std::shared_ptr<GenerationCall> call =
        core->Start(request, absl::FromChrono(context->deadline()), std::move(observer));
    absl::MutexLock lock(&mu_);
    call_ = std::move(call);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      // The client is gone: stop the request; OnDone of the observer still
      // comes and finishes the RPC.
      queue_.clear();
      client_gone_ = true;
      if (call_ != nullptr) call_->Cancel();
    } else if (!queue_.empty()) {
      queue_.pop_front();
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    client_gone_ = true;
    if (call_ != nullptr) call_->Cancel();
  }

  void OnDone() override {
    std::shared_ptr<GenerationCall> call;
    {
      absl::MutexLock lock(&mu_);
      call = std::move(call_);
    }
    delete this;
  }

 private:
  void Enqueue(std::optional<GenerateResponse> message, std::optional<absl::Status> final_status) {
    absl::MutexLock lock(&mu_);
    if (message.has_value() && !client_gone_) queue_.push_back(std::move(*message));
    if (final_status.has_value()) final_ = *final_status;
    PumpLocked();
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (!queue_.empty() && !client_gone_) {
      writing_ = true;
      StartWrite(&queue_.front());
      return;
    }
    if (final_.has_value()) {
      finished_ = true;
      Finish(ToGrpc(*final_));
    }
  }

  absl::Mutex mu_;
  std::shared_ptr<GenerationCall> call_ ABSL_GUARDED_BY(mu_);
  std::deque<GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);  // front is being written when writing_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<GenerateResponse>* GenerateService::Generate(
    grpc::CallbackServerContext* context, const tandem::v1::GenerateRequest* request) {
  return new GenerateStream(core_, context, *request);
}

grpc::ServerUnaryReactor* GenerateService::GetClusterInfo(grpc::CallbackServerContext* context,
                                                          const tandem::v1::ClusterInfoRequest*,
                                                          tandem::v1::ClusterInfo* response) {
  *response = core_->GetClusterInfo();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::Status RegistryService::Register(grpc::ServerContext*, const tandem::v1::RegisterRequest* r,
                                       tandem::v1::RegisterResponse* response) {
  if (absl::Status s = registry_->Register(*r); !s.ok()) return ToGrpc(s);
  if (core_ != nullptr) core_->OnRegistered(r->worker_id());
  response->set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(registry_->heartbeat_interval())));
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeat(grpc::ServerContext*, const tandem::v1::HeartbeatRequest* r,
                                        tandem::v1::HeartbeatResponse* response) {
  response->set_known(registry_->Heartbeat(*r));
  if (core_ != nullptr && response->known()) core_->OnDecodeRoomChanged();
  return grpc::Status::OK;
}

grpc::Status RegistryService::PublishKvEvents(grpc::ServerContext*,
                                              grpc::ServerReader<tandem::v1::KvEventBatch>* reader,
                                              tandem::v1::KvEventsAck*) {
  tandem::v1::KvEventBatch batch;
  while (reader->Read(&batch)) {
    if (core_ != nullptr) core_->OnKvEvents(batch);
  }
  return grpc::Status::OK;
}

}  // namespace tandem::router
