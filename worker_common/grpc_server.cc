#include "worker_common/grpc_server.h"

#include "absl/strings/str_format.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/server_interceptor.h"

namespace tandem::worker_common {

absl::StatusOr<RunningGrpcServer> StartGrpcServer(const GrpcServerOptions& options,
                                                  const std::vector<grpc::Service*>& services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(
      absl::StrFormat("%s:%d", options.host, options.port),
      options.credentials != nullptr ? options.credentials : grpc::InsecureServerCredentials(), &port);
  if (options.max_message_bytes > 0) {
    builder.SetMaxReceiveMessageSize(options.max_message_bytes);
    builder.SetMaxSendMessageSize(options.max_message_bytes);
  }
  // The router pings its workers every second to notice a frozen one
  // (router/worker_registry.h, keepalive), also between calls; gRPC answers
  // pings more frequent than its default policy (one per 5 min without
  // calls) with GOAWAY, which would fail the calls in flight.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  for (grpc::Service* s : services) builder.RegisterService(s);
  if (options.interceptors) builder.experimental().SetInterceptorCreators(options.interceptors());
  RunningGrpcServer running;
  running.server = builder.BuildAndStart();
  if (running.server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s:%d", options.host, options.port));
  }
  running.server->GetHealthCheckService()->SetServingStatus(true);
  running.port = port;
  running.address = absl::StrFormat("%s:%d", options.host, port);
  return running;
}

}  // namespace tandem::worker_common
