// The router's gRPC services: the public tandem.v1.Tandem API and the
// workers' tandem.v1.WorkerRegistry.
//
// Generate follows DESIGN.md's path: tokenize, pick a decode worker
// (round-robin for now), have it reserve blocks, pick a prefill worker to
// compute the prompt's KV and write it into the reservation over UCX, then
// stream the decode worker's tokens to the client. With no prefill worker the
// decode worker prefills by itself (aggregated mode). A worker that fails a
// call leaves the rotation; the request is retried elsewhere while no token
// has reached the client, and fails with UNAVAILABLE after that.
//
// Handlers use gRPC's synchronous API: each stream holds one server thread
// while it waits on its decode worker (with deadlines and cancellation
// checks). The engine work itself runs on the workers.
#ifndef TANDEM_ROUTER_ROUTER_SERVICE_H_
#define TANDEM_ROUTER_ROUTER_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "model/loader.h"
#include "proto/grpc_status.h"
#include "router/worker_registry.h"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {

struct RouterOptions {
  // Default max_tokens when a request leaves it 0. Default: 64.
  int32_t default_max_tokens = 64;
  // Attempts per request across workers before giving up. Default: 3.
  int max_attempts = 3;
  // Deadline for a request whose client set none. Default: 10 min.
  absl::Duration default_deadline = absl::Minutes(10);
  // How long a decode reservation waits for its prefill. Default: 30 s.
  absl::Duration reservation_ttl = absl::Seconds(30);
};

class GenerateService final : public tandem::v1::Tandem::Service {
 public:
  // `model` (tokenizer, config) and `registry` are borrowed.
  GenerateService(RouterOptions options, const model::LoadedModel* model, WorkerRegistry* registry)
      : options_(options), model_(model), registry_(registry) {}

  grpc::Status Generate(grpc::ServerContext* context, const tandem::v1::GenerateRequest* request,
                        grpc::ServerWriter<tandem::v1::GenerateResponse>* writer) override;

 private:
  const RouterOptions options_;
  const model::LoadedModel* const model_;
  WorkerRegistry* const registry_;
  std::atomic<uint64_t> next_request_{1};
};

class RegistryService final : public tandem::v1::WorkerRegistry::Service {
 public:
  explicit RegistryService(WorkerRegistry* registry) : registry_(registry) {}

  grpc::Status Register(grpc::ServerContext*, const tandem::v1::RegisterRequest* request,
                        tandem::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const tandem::v1::HeartbeatRequest* request,
                         tandem::v1::HeartbeatResponse* response) override;
  grpc::Status PublishKvEvents(grpc::ServerContext* context,
                               grpc::ServerReader<tandem::v1::KvEventBatch>* reader,
                               tandem::v1::KvEventsAck* response) override;

 private:
  WorkerRegistry* const registry_;
};


}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_SERVICE_H_
