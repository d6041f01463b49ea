// The gRPC stubs behind a WorkerHandle (worker_registry.h), kept out of that
// header so that placement, which only scores workers, compiles without
// gRPC. Included by the code that calls workers (router_core.cc) and by the
// registry that creates the stubs.
//
//   absl::StatusOr<WorkerHandle> w = registry.Pick(tandem::v1::WORKER_ROLE_DECODE);
//   w->stubs->decode->async()->Reserve(&ctx, &request, &reservation, done);
//
// Thread safety: gRPC stubs are safe to share across threads; a WorkerStubs
// is immutable once registered.
#ifndef TANDEM_ROUTER_WORKER_STUBS_H_
#define TANDEM_ROUTER_WORKER_STUBS_H_

#include <memory>

#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {

struct WorkerStubs {
  std::shared_ptr<tandem::v1::DecodeWorker::Stub> decode;      // decode workers only
  std::shared_ptr<tandem::v1::PrefillWorker::Stub> prefill;    // prefill workers only
  std::shared_ptr<tandem::v1::KvEventSource::Stub> kv_events;  // every worker (snapshots)
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_STUBS_H_
