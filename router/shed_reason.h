// Why the router refused or shed a request: the reason both fronts report
// (gRPC: the start of a RESOURCE_EXHAUSTED status message; HTTP: 429 with
// Retry-After and x-tandem-shed-reason). Header-only so the HTTP front
// reads reasons without linking the router core.
//
//   return ShedStatus(kShedQueueFull, "router queue full: ...");
//   std::string_view reason = ShedReasonOf(status);  // "queue_full"
//
// Thread safety: pure functions.
#ifndef TANDEM_ROUTER_SHED_REASON_H_
#define TANDEM_ROUTER_SHED_REASON_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace tandem::router {

// The flow queue's (flow_queue.h):
inline constexpr std::string_view kShedQueueFull = "queue_full";          // no room, nothing lower to shed
inline constexpr std::string_view kShedLowerPriority = "lower_priority";  // shed for a higher priority
inline constexpr std::string_view kShedQueueTtl = "queue_ttl";            // waited the queue TTL
inline constexpr std::string_view kShedOverShare = "over_share";  // shed for a tenant below its fair share
// The placement's:
inline constexpr std::string_view kShedSlo = "slo";             // predicted to miss its SLO target
inline constexpr std::string_view kShedNoRoom = "decode_full";  // no decode worker has room

// RESOURCE_EXHAUSTED "<reason>: <detail>".
inline absl::Status ShedStatus(std::string_view reason, std::string_view detail) {
  std::string message(reason);
  message.append(": ").append(detail);
  return absl::ResourceExhaustedError(message);
}

// The reason of a RESOURCE_EXHAUSTED made by ShedStatus; "" for any other
// status (another code, or a message that starts with no known reason).
inline std::string_view ShedReasonOf(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return {};
  const std::string_view message(status.message().data(), status.message().size());
  for (std::string_view reason :
       {kShedQueueFull, kShedLowerPriority, kShedQueueTtl, kShedOverShare, kShedSlo, kShedNoRoom}) {
    if (message.size() > reason.size() && message.substr(0, reason.size()) == reason &&
        message[reason.size()] == ':') {
      return reason;
    }
  }
  return {};
}

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_SHED_REASON_H_
