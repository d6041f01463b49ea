// ServerInterceptorFactories: how a server process is handed gRPC server
// interceptors (grpc_server.h, worker_process.h) without including gRPC's
// interceptor headers. Tests inject faults into real RPCs with them
// (tests/request_path_test.cc):
//
//   options.server_interceptors = [] {
//     std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> v;
//     v.push_back(std::make_unique<MyFaultFactory>());
//     return v;
//   };
//
// Thread safety: the function is called once per server start.
#ifndef TANDEM_WORKER_COMMON_SERVER_INTERCEPTORS_H_
#define TANDEM_WORKER_COMMON_SERVER_INTERCEPTORS_H_

#include <functional>
#include <memory>
#include <vector>

namespace grpc::experimental {
class ServerInterceptorFactoryInterface;
}  // namespace grpc::experimental

namespace tandem::worker_common {

// Makes a server's interceptors, outermost first.
using ServerInterceptorFactories =
    std::function<std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>()>;

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_SERVER_INTERCEPTORS_H_
