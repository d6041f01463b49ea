// The gRPC face of the shared KV store (`tandem store`): tandem.v1.KvStore
// over a TieredStore. Workers Put the blocks their pools evict and Get the
// blocks their own tiers miss (kvstore/store_client.h).
//
//   TieredStore store(...);  // DRAM + SSD, on_event -> the store's KvEventLog
//   TANDEM_ASSIGN_OR_RETURN(auto service,
//       StoreService::Create({.model_id = config.model_id, .transfer = engine.get()}, store.get()));
//   builder.RegisterService(service.get());
//
// Two data paths, one control plane:
//   - gRPC bytes (Get, Put): the values travel inside the messages. Always
//     served; the fallback of clients without a transfer engine.
//   - UCX (GetInto, ReservePut + CommitPut), with Options::transfer set: the
//     store writes Get values straight into the caller's registered landing
//     slots, and callers write Put values into slots of the store's own
//     registered staging region, then commit. Without a transfer engine these
//     three answer UNIMPLEMENTED, which tells a client to use gRPC bytes.
//
// Integrity: every value received (Put, or a committed staging slot) is
// verified (checksum, model, hash, sizes) before it is stored; a corrupt
// SSD value is never sent (TieredStore deletes it and reports a miss). A
// reservation not committed within reservation_ttl (the writer vanished) is
// dropped and its slots reused; should that writer's bytes still land in a
// reused slot, the checksum refuses them at the next commit.
//
// A request naming another model is INVALID_ARGUMENT; so is one with more than
// max_blocks blocks, and a GetInto whose slots fall outside the caller's region.
//
// Ownership: the TieredStore and the transfer engine are borrowed and outlive
// the service. The staging region is unregistered by the destructor.
// Thread safety: gRPC calls handlers concurrently; all state is under mu_.
#ifndef TANDEM_KVSTORE_STORE_SERVICE_H_
#define TANDEM_KVSTORE_STORE_SERVICE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "kvstore/tiered_store.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "transfer/transfer_engine.h"
#include "transfer/ucx_region_proto.h"

namespace tandem::kvstore {

struct StoreServiceOptions {
  // The model every request must name. Default: "" (must be set).
  std::string model_id;
  // Most blocks in one request. Default: 1024.
  int32_t max_blocks = 1024;

  // Borrowed; null = gRPC bytes only. Default: null.
  transfer::TransferEngine* transfer = nullptr;
  // Bytes of the staging region that ReservePut hands out, in slots of one
  // encoded block each (at least one slot). Default: 64 MiB.
  size_t staging_bytes = size_t{64} << 20;
  // An uncommitted reservation's slots are reused after this. Default: 5 s.
  absl::Duration reservation_ttl = absl::Seconds(5);
  // Deadline of one GetInto write (also bounded by the RPC's deadline).
  // Default: 2 s.
  absl::Duration write_timeout = absl::Seconds(2);
};

class StoreService final : public tandem::v1::KvStore::Service {
 public:
  struct Stats {
    int64_t get_into_blocks = 0;  // values written into callers' slots
    int64_t get_into_bytes = 0;
    int64_t get_into_errors = 0;  // failed writes to a caller
    int64_t reserved_blocks = 0;
    int64_t committed_blocks = 0;  // verified and stored
    int64_t refused_blocks = 0;    // committed slots that failed verification
    int64_t expired_reservations = 0;
  };

  // InvalidArgument on an empty model_id; errors of TransferEngine::Allocate.
  static absl::StatusOr<std::unique_ptr<StoreService>> Create(StoreServiceOptions options,
                                                              TieredStore* store);
  ~StoreService() override;
  StoreService(const StoreService&) = delete;
  StoreService& operator=(const StoreService&) = delete;

  grpc::Status Lookup(grpc::ServerContext* context, const tandem::v1::StoreLookupRequest* request,
                      tandem::v1::StoreLookupResponse* response) override;
  grpc::Status Put(grpc::ServerContext* context, const tandem::v1::StorePutRequest* request,
                   tandem::v1::StorePutResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const tandem::v1::StoreGetRequest* request,
                   tandem::v1::StoreGetResponse* response) override;
  grpc::Status GetInto(grpc::ServerContext* context, const tandem::v1::StoreGetIntoRequest* request,
                       tandem::v1::StoreGetIntoResponse* response) override;
  grpc::Status ReservePut(grpc::ServerContext* context, const tandem::v1::StoreReserveRequest* request,
                          tandem::v1::StoreReserveResponse* response) override;
  grpc::Status CommitPut(grpc::ServerContext* context, const tandem::v1::StoreCommitRequest* request,
                         tandem::v1::StorePutResponse* response) override;

  // Bytes of one staging slot: one encoded block of the store's geometry.
  size_t slot_bytes() const { return slot_bytes_; }
  Stats stats() const;

 private:
  struct Reservation {
    struct Slot {
      BlockHash hash = 0;
      int32_t index = 0;  // staging slot
      size_t bytes = 0;   // value length
    };
    std::vector<Slot> slots;
    absl::Time expires;
  };

  StoreService(StoreServiceOptions options, TieredStore* store);
  grpc::Status Check(const std::string& model_id, int blocks) const;
  // Frees the slots of reservations past their expiry.
  void ExpireReservationsLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreServiceOptions options_;
  TieredStore* const store_;  // borrowed
  const size_t slot_bytes_;

  std::optional<transfer::RegisteredRegion> staging_;  // set when options_.transfer is
  uint8_t* staging_base_ = nullptr;

  mutable StdMutex mu_;
  std::vector<int32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  uint64_t next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

// The region converters are transfer/ucx_region_proto.h's (shared with the
// workers); named here too for the code and tests that call them unqualified.
using transfer::RegionFromProto;
using transfer::RegionToProto;

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_STORE_SERVICE_H_
