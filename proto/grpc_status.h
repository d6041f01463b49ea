// absl::Status <-> grpc::Status, used where gRPC calls enter or leave Tandem
// code (router and worker services). The codes are numbered alike, so the
// conversion keeps code and message.
#ifndef TANDEM_PROTO_GRPC_STATUS_H_
#define TANDEM_PROTO_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace tandem {

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace tandem

#endif  // TANDEM_PROTO_GRPC_STATUS_H_
