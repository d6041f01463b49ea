#include "kvstore/store_service.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/strings/str_format.h"
#include "kvstore/block_format.h"
#include "proto/grpc_status.h"

namespace tandem::kvstore {

absl::StatusOr<std::unique_ptr<StoreService>> StoreService::Create(StoreServiceOptions options,
                                                                   TieredStore* store) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("StoreService: model_id is empty");
  if (store == nullptr) return absl::InvalidArgumentError("StoreService: no store");
  std::unique_ptr<StoreService> service(new StoreService(std::move(options), store));
  if (service->options_.transfer != nullptr) {
    const size_t slots = service->options_.staging_bytes / service->slot_bytes_;
    if (slots < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("StoreService: staging_bytes %d holds no block of %d bytes",
                          service->options_.staging_bytes, service->slot_bytes_));
    }
    absl::StatusOr<transfer::RegisteredRegion> region =
        service->options_.transfer->Allocate(slots * service->slot_bytes_);
    if (!region.ok()) return region.status();
    service->staging_ = *region;
    service->staging_base_ = reinterpret_cast<uint8_t*>(region->base_address);
    StdMutexLock lock(&service->mu_);  // nobody else sees it yet; for the analysis
    service->free_slots_.reserve(slots);
    for (size_t i = slots; i > 0; --i) service->free_slots_.push_back(static_cast<int32_t>(i - 1));
  }
  return service;
}

StoreService::StoreService(StoreServiceOptions options, TieredStore* store)
    : options_(std::move(options)),
      store_(store),
      slot_bytes_(EncodedBlockBytes(store->options().block_tokens, store->options().payload_bytes)) {}

StoreService::~StoreService() {
  // Callers' writes into a dropped region fail on their side (NOT_FOUND).
  if (staging_.has_value()) (void)options_.transfer->Unregister(staging_->region_id);
}

StoreService::Stats StoreService::stats() const {
  StdMutexLock lock(&mu_);
  return stats_;
}

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

grpc::Status StoreService::GetInto(grpc::ServerContext* context,
                                   const tandem::v1::StoreGetIntoRequest* request,
                                   tandem::v1::StoreGetIntoResponse* response) {
  if (options_.transfer == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this store serves no UCX data path; use Get");
  }
  if (grpc::Status s = Check(request->model_id(), request->block_hashes_size()); !s.ok()) return s;
  if (request->offsets_size() != request->block_hashes_size()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("%d offsets for %d block hashes", request->offsets_size(),
                                        request->block_hashes_size()));
  }
  const uint64_t region_bytes = request->destination().bytes();
  const uint64_t slot = request->slot_bytes();
  for (uint64_t offset : request->offsets()) {
    if (slot == 0 || offset > region_bytes || slot > region_bytes - offset) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrFormat("slot [%d, +%d) outside the destination's %d bytes", offset, slot, region_bytes));
    }
  }
  // Values are read (and verified, for SSD) into memory we own, then written
  // in one batch; `values` outlives the Write, which borrows them.
  std::vector<std::string> values;
  std::vector<transfer::WriteRequest> writes;
  values.reserve(request->block_hashes_size());
  writes.reserve(request->block_hashes_size());
  for (int i = 0; i < request->block_hashes_size(); ++i) {
    absl::StatusOr<std::string> value = store_->GetEncoded(request->block_hashes(i));
    if (!value.ok() || value->empty() || value->size() > slot) {
      response->add_value_bytes(0);
      continue;
    }
    response->add_value_bytes(value->size());
    values.push_back(std::move(*value));
    writes.push_back({values.back().data(), request->offsets(i), values.back().size()});
  }
  if (writes.empty()) return grpc::Status::OK;
  const absl::Time deadline =
      std::min(absl::Now() + options_.write_timeout, absl::FromChrono(context->deadline()));
  const absl::Status written = options_.transfer->Write(
      transfer::RegionFromProto(request->destination(), context->peer()), writes, deadline);
  StdMutexLock lock(&mu_);
  if (!written.ok()) {
    ++stats_.get_into_errors;
    return ToGrpc(written);
  }
  stats_.get_into_blocks += static_cast<int64_t>(writes.size());
  for (const transfer::WriteRequest& w : writes) stats_.get_into_bytes += static_cast<int64_t>(w.bytes);
  return grpc::Status::OK;
}

void StoreService::ExpireReservationsLocked(absl::Time now) {
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (it->second.expires > now) {
      ++it;
      continue;
    }
    for (const Reservation::Slot& s : it->second.slots) free_slots_.push_back(s.index);
    ++stats_.expired_reservations;
    reservations_.erase(it++);
  }
}

grpc::Status StoreService::ReservePut(grpc::ServerContext*, const tandem::v1::StoreReserveRequest* request,
                                      tandem::v1::StoreReserveResponse* response) {
  if (options_.transfer == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this store serves no UCX data path; use Put");
  }
  if (grpc::Status s = Check(request->model_id(), request->block_hashes_size()); !s.ok()) return s;
  if (request->value_bytes_size() != request->block_hashes_size()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrFormat("%d value sizes for %d block hashes", request->value_bytes_size(),
                                        request->block_hashes_size()));
  }
  // Which blocks are wanted is decided before taking the lock: Find may
  // touch the SSD tier's index.
  std::vector<bool> wanted(request->block_hashes_size());
  for (int i = 0; i < request->block_hashes_size(); ++i) {
    const uint64_t bytes = request->value_bytes(i);
    wanted[i] = bytes > 0 && bytes <= slot_bytes_ && !store_->Find(request->block_hashes(i)).has_value();
  }
  const absl::Time now = absl::Now();
  Reservation reservation;
  reservation.expires = now + options_.reservation_ttl;
  StdMutexLock lock(&mu_);
  ExpireReservationsLocked(now);
  for (int i = 0; i < request->block_hashes_size(); ++i) {
    if (!wanted[i] || free_slots_.empty()) {
      response->add_offsets(-1);
      continue;
    }
    const int32_t index = free_slots_.back();
    free_slots_.pop_back();
    reservation.slots.push_back(
        {request->block_hashes(i), index, static_cast<size_t>(request->value_bytes(i))});
    response->add_offsets(static_cast<int64_t>(index) * static_cast<int64_t>(slot_bytes_));
  }
  transfer::RegionToProto(options_.transfer->worker_address(), *staging_, response->mutable_staging());
  response->set_expires_in_us(static_cast<uint64_t>(absl::ToInt64Microseconds(options_.reservation_ttl)));
  if (reservation.slots.empty()) return grpc::Status::OK;
  const uint64_t id = next_reservation_++;
  stats_.reserved_blocks += static_cast<int64_t>(reservation.slots.size());
  reservations_.emplace(id, std::move(reservation));
  response->set_reservation_id(id);
  return grpc::Status::OK;
}

grpc::Status StoreService::CommitPut(grpc::ServerContext*, const tandem::v1::StoreCommitRequest* request,
                                     tandem::v1::StorePutResponse* response) {
  if (options_.transfer == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this store serves no UCX data path; use Put");
  }
  if (grpc::Status s = Check(request->model_id(), 0); !s.ok()) return s;
  Reservation reservation;
  {
    // Taken out of the map: its slots are ours until freed below, so no
    // other reservation can be handed them while we read them.
    StdMutexLock lock(&mu_);
    auto it = reservations_.find(request->reservation_id());
    if (it == reservations_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrFormat("reservation %d is unknown or expired", request->reservation_id()));
    }
    reservation = std::move(it->second);
    reservations_.erase(it);
  }
  int32_t stored = 0;
  int32_t refused = 0;
  for (const Reservation::Slot& s : reservation.slots) {
    const std::string_view value(reinterpret_cast<const char*>(staging_base_) + s.index * slot_bytes_,
                                 s.bytes);
    if (store_->PutEncoded(s.hash, value).ok()) {
      ++stored;
    } else {
      ++refused;
    }
  }
  StdMutexLock lock(&mu_);
  for (const Reservation::Slot& s : reservation.slots) free_slots_.push_back(s.index);
  stats_.committed_blocks += stored;
  stats_.refused_blocks += refused;
  response->set_stored(stored);
  return grpc::Status::OK;
}

}  // namespace tandem::kvstore
