// The gRPC face of the shared KV store (`tandem store`): tandem.v1.KvStore
// over a TieredStore. Workers Put the blocks their pools evict and Get the
// blocks their own tiers miss (kvstore/store_client.h).
//
//   TieredStore store(...);  // DRAM + SSD, on_event -> the store's KvEventLog
//   StoreService service({.model_id = config.model_id}, store.get());
//   builder.RegisterService(&service);
//
// Every value received is verified (checksum, model, hash, sizes) before it
// is stored; a request naming another model is INVALID_ARGUMENT; requests
// with more than max_blocks blocks are INVALID_ARGUMENT. A corrupt SSD
// value is never sent (TieredStore deletes it and reports a miss).
//
// Ownership: the TieredStore is borrowed and outlives the service.
// Thread safety: gRPC calls handlers concurrently; TieredStore is thread-safe.
#ifndef TANDEM_KVSTORE_STORE_SERVICE_H_
#define TANDEM_KVSTORE_STORE_SERVICE_H_

#include <cstdint>
#include <string>

#include "kvstore/tiered_store.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::kvstore {

struct StoreServiceOptions {
  // The model every request must name. Default: "" (must be set).
  std::string model_id;
  // Most blocks in one request. Default: 1024.
  int32_t max_blocks = 1024;
};

class StoreService final : public tandem::v1::KvStore::Service {
 public:
  StoreService(StoreServiceOptions options, TieredStore* store)
      : options_(std::move(options)), store_(store) {}

  grpc::Status Lookup(grpc::ServerContext* context, const tandem::v1::StoreLookupRequest* request,
                      tandem::v1::StoreLookupResponse* response) override;
  grpc::Status Put(grpc::ServerContext* context, const tandem::v1::StorePutRequest* request,
                   tandem::v1::StorePutResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const tandem::v1::StoreGetRequest* request,
                   tandem::v1::StoreGetResponse* response) override;

 private:
  grpc::Status Check(const std::string& model_id, int blocks) const;

  const StoreServiceOptions options_;
  TieredStore* const store_;  // borrowed
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_STORE_SERVICE_H_
