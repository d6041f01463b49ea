// UCX at the edge: the one place a ucs_status_t becomes an absl::Status, and
// what UCX 1.13 tells about transports only through its print functions.
// Internal to transfer/. Stateless; a UCX object passed in must be used from
// the thread that owns it (the progress thread).
//
//   TANDEM_RETURN_IF_ERROR(FromUcs(ucp_worker_get_efd(worker, &efd), "ucp_worker_get_efd"));
//   std::vector<std::string> tls = EndpointTransports(ep);  // e.g. {"sysv", "cma"}
#ifndef TANDEM_TRANSFER_INTERNAL_UCX_STATUS_H_
#define TANDEM_TRANSFER_INTERNAL_UCX_STATUS_H_

#include <ucp/api/ucp.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tandem::transfer::internal {

// OK for UCS_OK; otherwise "<what>: <UCX message> (ucs N)" with the closest
// code: RESOURCE_EXHAUSTED, INVALID_ARGUMENT, UNIMPLEMENTED,
// DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE (peer and network errors) or
// INTERNAL.
absl::Status FromUcs(ucs_status_t status, absl::string_view what);

// UCX transport names ("sysv", "tcp", "rc_mlx5", ...).
bool IsSharedMemoryTransport(absl::string_view tl);
bool IsRdmaTransport(absl::string_view tl);

// The transports of an endpoint's lanes, in lane order, without repeats.
std::vector<std::string> EndpointTransports(ucp_ep_h ep);

// Whether the context has a shared-memory transport (other than "self").
bool ContextHasSharedMemory(ucp_context_h context);

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_UCX_STATUS_H_
