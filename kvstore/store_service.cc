#include "kvstore/store_service.h"

#include "absl/strings/str_format.h"

namespace tandem::kvstore {

grpc::Status StoreService::Check(const std::string& model_id, int blocks) const {
  if (model_id != options_.model_id) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("model_id '%s': this store holds '%s'", model_id, options_.model_id));
  }
  if (blocks > options_.max_blocks) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("%d blocks in one request; at most %d", blocks, options_.max_blocks));
  }
  return grpc::Status::OK;
}

grpc::Status StoreService::Lookup(grpc::ServerContext*, const tandem::v1::StoreLookupRequest* request,
                                  tandem::v1::StoreLookupResponse* response) {
  if (grpc::Status s = Check(request->model_id(), request->block_hashes_size()); !s.ok()) return s;
  for (uint64_t hash : request->block_hashes()) response->add_held(store_->Find(hash).has_value());
  return grpc::Status::OK;
}

grpc::Status StoreService::Put(grpc::ServerContext*, const tandem::v1::StorePutRequest* request,
                               tandem::v1::StorePutResponse* response) {
  if (grpc::Status s = Check(request->model_id(), request->blocks_size()); !s.ok()) return s;
  int32_t stored = 0;
  for (const tandem::v1::StoreBlock& b : request->blocks()) {
    if (store_->PutEncoded(b.block_hash(), b.value()).ok()) ++stored;
  }
  response->set_stored(stored);
  return grpc::Status::OK;
}

grpc::Status StoreService::Get(grpc::ServerContext*, const tandem::v1::StoreGetRequest* request,
                               tandem::v1::StoreGetResponse* response) {
  if (grpc::Status s = Check(request->model_id(), request->block_hashes_size()); !s.ok()) return s;
  for (uint64_t hash : request->block_hashes()) {
    absl::StatusOr<std::string> value = store_->GetEncoded(hash);
    if (!value.ok()) continue;  // a miss (or a corrupt SSD value, deleted)
    tandem::v1::StoreBlock* b = response->add_blocks();
    b->set_block_hash(hash);
    b->set_value(std::move(*value));
  }
  return grpc::Status::OK;
}

}  // namespace tandem::kvstore
