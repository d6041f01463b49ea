#include "transfer/ucx_region_proto.h"

#include <utility>

namespace tandem::transfer {

RemoteRegion RegionFromProto(const tandem::v1::UcxRegion& region, std::string peer_name) {
  RemoteRegion r;
  r.worker_address = region.worker_address();
  r.region_id = region.region_id();
  r.base_address = region.base_address();
  r.bytes = region.bytes();
  r.packed_rkey = region.packed_rkey();
  r.peer_name = std::move(peer_name);
  return r;
}

void RegionToProto(const std::string& worker_address, const RegisteredRegion& region,
                   tandem::v1::UcxRegion* out) {
  out->set_worker_address(worker_address);
  out->set_region_id(region.region_id);
  out->set_base_address(region.base_address);
  out->set_bytes(region.bytes);
  out->set_packed_rkey(region.packed_rkey);
}

}  // namespace tandem::transfer
