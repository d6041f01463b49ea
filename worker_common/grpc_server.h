// Starts a process's one gRPC server: listens on host:port only (never on
// other addresses), with the default health service (SERVING once started)
// and server reflection. Shared by the worker process (worker_process.h),
// `tandem router` and `tandem store`, so the three start alike.
//
//   TANDEM_ASSIGN_OR_RETURN(RunningGrpcServer s,
//                           StartGrpcServer({.host = "127.0.0.1", .port = 0}, {&service}));
//   std::cout << s.address;  // "127.0.0.1:41234": the port the kernel chose
//   ...
//   s.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
//
// Thread safety: StartGrpcServer may be called from any thread.
#ifndef TANDEM_WORKER_COMMON_GRPC_SERVER_H_
#define TANDEM_WORKER_COMMON_GRPC_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"
#include "worker_common/server_interceptors.h"

namespace tandem::worker_common {

struct GrpcServerOptions {
  // Address to bind. Default: 127.0.0.1.
  std::string host = "127.0.0.1";
  // Port; 0 asks the kernel for a free one. Default: 0.
  int32_t port = 0;
  // Default: null (plaintext).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Largest message received or sent; 0 keeps gRPC's limits (4 MiB
  // received). Default: 0.
  int32_t max_message_bytes = 0;
  // Interceptors on every call the server handles: how tests inject faults
  // into real RPCs (a failed Reserve, an ABORTED Prefill, a corrupted
  // checksum) without test hooks in the services. Default: empty (none).
  ServerInterceptorFactories interceptors;
};

struct RunningGrpcServer {
  std::unique_ptr<grpc::Server> server;
  int32_t port = 0;     // the bound port
  std::string address;  // "host:port" with the bound port
};

// Registers `services` (borrowed; they must outlive the server) and starts
// serving. Unavailable "cannot listen on host:port" when the port cannot be
// bound.
absl::StatusOr<RunningGrpcServer> StartGrpcServer(const GrpcServerOptions& options,
                                                  const std::vector<grpc::Service*>& services);

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_GRPC_SERVER_H_
