#include "transfer/internal/region_table.h"

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "transfer/internal/ucx_status.h"

namespace tandem::transfer::internal {

RegionTable::~RegionTable() {
  for (auto& [id, region] : regions_) {
    if (region.memh != nullptr) ucp_mem_unmap(context_, region.memh);
  }
}

absl::StatusOr<RegisteredRegion> RegionTable::Add(void* base, size_t bytes, bool allocate) {
  ucp_mem_map_params_t mp{};
  mp.field_mask =
      UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  mp.address = allocate ? nullptr : base;
  mp.length = bytes;
  mp.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
  ucp_mem_h memh = nullptr;
  TANDEM_RETURN_IF_ERROR(
      FromUcs(ucp_mem_map(context_, &mp, &memh), absl::StrCat("ucp_mem_map of ", bytes, " bytes")));
  absl::Cleanup unmap = [this, memh] { ucp_mem_unmap(context_, memh); };

  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_mem_query(memh, &attr), "ucp_mem_query"));

  void* rkey_buffer = nullptr;
  size_t rkey_size = 0;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_rkey_pack(context_, memh, &rkey_buffer, &rkey_size), "ucp_rkey_pack"));
  std::string packed(static_cast<const char*>(rkey_buffer), rkey_size);
  ucp_rkey_buffer_release(rkey_buffer);

  Region region;
  region.id = next_region_id_++;
  region.base = reinterpret_cast<uint64_t>(attr.address);
  region.bytes = bytes;
  region.memh = memh;
  region.allocated = allocate;
  std::move(unmap).Cancel();
  regions_.emplace(region.id, region);

  RegisteredRegion out;
  out.region_id = region.id;
  out.base_address = region.base;
  out.bytes = bytes;
  out.packed_rkey = std::move(packed);
  return out;
}

absl::Status RegionTable::Remove(uint32_t region_id) {
  auto it = regions_.find(region_id);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("no region ", region_id));
  }
  if (it->second.inflight > 0) {
    return absl::FailedPreconditionError(absl::StrCat("region ", region_id, ": ", it->second.inflight,
                                                      " active-message writes still landing"));
  }
  ucs_status_t st = ucp_mem_unmap(context_, it->second.memh);
  regions_.erase(it);
  return FromUcs(st, absl::StrCat("ucp_mem_unmap of region ", region_id));
}

absl::StatusOr<RegionTable::Region*> RegionTable::FindRange(uint32_t region_id, uint64_t offset,
                                                            size_t bytes) {
  auto it = regions_.find(region_id);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("engine '", engine_name_, "' has no region ", region_id));
  }
  Region& r = it->second;
  if (offset > r.bytes || bytes > r.bytes - offset) {
    return absl::OutOfRangeError(absl::StrCat("engine '", engine_name_, "': [", offset, ", ", offset + bytes,
                                              ") outside region ", region_id, " of ", r.bytes, " bytes"));
  }
  return &r;
}

void RegionTable::ReceiveEnded(uint32_t region_id) {
  auto it = regions_.find(region_id);
  if (it != regions_.end()) --it->second.inflight;
}

}  // namespace tandem::transfer::internal
