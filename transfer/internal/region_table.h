// The memory this engine lets peers write: regions registered or allocated
// through ucp_mem_map, by region id.
//
// Owns each region's ucp_mem_h (and, for Allocate'd regions, the memory);
// Remove or the destructor unmaps them. Borrows the ucp_context, which must
// outlive the table. Progress thread only. Internal to transfer/.
//
//   RegionTable regions(context, "decode-0");
//   TANDEM_ASSIGN_OR_RETURN(RegisteredRegion r, regions.Add(nullptr, 1 << 20, /*allocate=*/true));
//   TANDEM_ASSIGN_OR_RETURN(RegionTable::Region* where, regions.FindRange(r.region_id, 0, 4096));
#ifndef TANDEM_TRANSFER_INTERNAL_REGION_TABLE_H_
#define TANDEM_TRANSFER_INTERNAL_REGION_TABLE_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transfer/transfer_engine.h"

namespace tandem::transfer::internal {

class RegionTable {
 public:
  struct Region {
    uint32_t id = 0;
    uint64_t base = 0;
    size_t bytes = 0;
    ucp_mem_h memh = nullptr;
    bool allocated = false;
    int inflight = 0;  // rendezvous receives landing in it
  };

  // `engine_name` names the engine in errors.
  RegionTable(ucp_context_h context, std::string engine_name)
      : context_(context), engine_name_(std::move(engine_name)) {}
  // Unmaps every region.
  ~RegionTable();

  RegionTable(const RegionTable&) = delete;
  RegionTable& operator=(const RegionTable&) = delete;

  // Maps [base, base + bytes) (or, with `allocate`, new memory) and packs its
  // rkey. Errors from UCX (FromUcs).
  absl::StatusOr<RegisteredRegion> Add(void* base, size_t bytes, bool allocate);
  // NOT_FOUND; FAILED_PRECONDITION while a rendezvous receive lands in it.
  absl::Status Remove(uint32_t region_id);

  // The region when [offset, offset + bytes) lies inside region `region_id`:
  // NOT_FOUND or OUT_OF_RANGE otherwise, worded for the peer that wrote.
  absl::StatusOr<Region*> FindRange(uint32_t region_id, uint64_t offset, size_t bytes);

  // A rendezvous receive into the region starts / ends: Remove refuses the
  // region in between, because UCX is still writing into it.
  void ReceiveStarted(Region& region) { ++region.inflight; }
  void ReceiveEnded(uint32_t region_id);

 private:
  const ucp_context_h context_;
  const std::string engine_name_;
  uint32_t next_region_id_ = 1;
  absl::flat_hash_map<uint32_t, Region> regions_;
};

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_REGION_TABLE_H_
