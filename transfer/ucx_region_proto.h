// A transfer-engine region as it travels in gRPC messages
// (tandem.v1.UcxRegion, worker.proto), and back: the one conversion used by
// the decode worker's KvReservation, the prefill worker that writes into it,
// and the shared store's GetInto/ReservePut regions.
//
//   // Receiver: describe a registered region for a peer.
//   transfer::RegionToProto(engine->worker_address(), registered, reply.mutable_region());
//   // Sender: write into the region a message describes.
//   engine->Write(transfer::RegionFromProto(reply.region(), "decode-3"), writes, deadline);
//
// Kept out of tandem_transfer so that the data plane does not depend on the
// generated protobuf code (target tandem_transfer_proto).
//
// Thread safety: pure functions.
#ifndef TANDEM_TRANSFER_UCX_REGION_PROTO_H_
#define TANDEM_TRANSFER_UCX_REGION_PROTO_H_

#include <string>

#include "tandem/v1/worker.pb.h"
#include "transfer/transfer_engine.h"

namespace tandem::transfer {

// The peer region `region` describes; `peer_name` names it in errors
// (RemoteRegion::peer_name).
RemoteRegion RegionFromProto(const tandem::v1::UcxRegion& region, std::string peer_name);

// Describes `region`, registered by the engine whose worker_address() is
// `worker_address`, into `out` (every field overwritten).
void RegionToProto(const std::string& worker_address, const RegisteredRegion& region,
                   tandem::v1::UcxRegion* out);

}  // namespace tandem::transfer

#endif  // TANDEM_TRANSFER_UCX_REGION_PROTO_H_
