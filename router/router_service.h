// The router's gRPC services: the public tandem.v1.Tandem API and the
// workers' tandem.v1.WorkerRegistry.
//
// Generate is a callback-API reactor over RouterCore (router_core.h): it
// starts the request and writes the chunks and the summary as the core
// reports them, one write in flight at a time; no thread waits on a stream.
// A client that cancels or disconnects cancels the request on the workers.
#ifndef TANDEM_ROUTER_ROUTER_SERVICE_H_
#define TANDEM_ROUTER_ROUTER_SERVICE_H_

#include "router/router_core.h"
#include "router/worker_registry.h"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {

class GenerateService final : public tandem::v1::Tandem::CallbackService {
 public:
  // `core` is borrowed.
  explicit GenerateService(RouterCore* core) : core_(core) {}

  grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const tandem::v1::GenerateRequest* request) override;
  // RouterCore::GetClusterInfo: the model, context length and block size.
  grpc::ServerUnaryReactor* GetClusterInfo(grpc::CallbackServerContext* context,
                                           const tandem::v1::ClusterInfoRequest* request,
                                           tandem::v1::ClusterInfo* response) override;

 private:
  RouterCore* const core_;
};

// Workers register, heartbeat and stream KV events here. KV events feed the
// core's index (a gap or a new worker triggers a snapshot fetch).
class RegistryService final : public tandem::v1::WorkerRegistry::Service {
 public:
  // Both borrowed; `core` may be null (no KV index: events are drained).
  RegistryService(WorkerRegistry* registry, RouterCore* core) : registry_(registry), core_(core) {}

  grpc::Status Register(grpc::ServerContext*, const tandem::v1::RegisterRequest* request,
                        tandem::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const tandem::v1::HeartbeatRequest* request,
                         tandem::v1::HeartbeatResponse* response) override;
  grpc::Status PublishKvEvents(grpc::ServerContext* context,
                               grpc::ServerReader<tandem::v1::KvEventBatch>* reader,
                               tandem::v1::KvEventsAck* response) override;

 private:
  WorkerRegistry* const registry_;
  RouterCore* const core_;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_SERVICE_H_
