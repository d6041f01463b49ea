#include "kvstore/store_client.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "kvstore/store_service.h"
#include "proto/grpc_status.h"

namespace tandem::kvstore {

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(const Options& options,
                                                                 std::shared_ptr<grpc::Channel> channel) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("StoreClient: model_id is empty");
  if (channel == nullptr) return absl::InvalidArgumentError("StoreClient: no channel");
  if (options.offer_queue_blocks < 1 || options.put_batch_blocks < 1) {
    return absl::InvalidArgumentError("StoreClient: offer_queue_blocks and put_batch_blocks must be >= 1");
  }
  if (options.transfer != nullptr && (options.slot_bytes == 0 || options.landing_slots < 1)) {
    return absl::InvalidArgumentError(
        "StoreClient: the UCX path needs slot_bytes > 0 and landing_slots >= 1");
  }
  std::unique_ptr<StoreClient> client(new StoreClient(options, std::move(channel)));
  if (options.transfer != nullptr) {
    absl::StatusOr<transfer::RegisteredRegion> region =
        options.transfer->Allocate(options.slot_bytes * static_cast<size_t>(options.landing_slots));
    if (!region.ok()) return region.status();
    client->landing_ = *region;
    StdMutexLock lock(&client->mu_);
    for (int32_t i = options.landing_slots; i > 0; --i) client->free_slots_.push_back(i - 1);
    client->ucx_ = true;
  }
  return client;
}

StoreClient::StoreClient(const Options& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options), stub_(tandem::v1::KvStore::NewStub(channel)), sender_([this] { SendLoop(); }) {}

StoreClient::~StoreClient() {
  {
    StdMutexLock lock(&mu_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
  sender_.join();
  // No Fetch is running (the owner stopped calling). A store still writing
  // into a quarantined slot fails once the region is gone.
  if (landing_.has_value()) (void)options_.transfer->Unregister(landing_->region_id);
}

std::string StoreClient::transport() const {
  StdMutexLock lock(&mu_);
  return ucx_ ? "ucx" : "grpc";
}

int32_t StoreClient::TakeSlotLocked(absl::Time now) {
  while (!quarantined_.empty() && quarantined_.front().first <= now) {
    free_slots_.push_back(quarantined_.front().second);
    quarantined_.pop_front();
  }
  if (free_slots_.empty()) return -1;
  const int32_t slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

absl::StatusOr<std::string> StoreClient::Fetch(BlockHash hash) {
  return std::move(FetchMany(absl::MakeConstSpan(&hash, 1))[0]);
}

std::vector<absl::StatusOr<std::string>> StoreClient::FetchMany(absl::Span<const BlockHash> hashes) {
  std::vector<absl::StatusOr<std::string>> out;
  out.reserve(hashes.size());
  while (out.size() < hashes.size()) {
    const size_t left = hashes.size() - out.size();
    std::vector<int32_t> slots;
    bool ucx = false;
    {
      StdMutexLock lock(&mu_);
      const absl::Time now = absl::Now();
      if (now < unavailable_until_) {
        stats_.fetch_skipped += static_cast<int64_t>(left);
        while (out.size() < hashes.size()) {
          out.push_back(absl::UnavailableError("shared KV store: unavailable (recent failure)"));
        }
        return out;
      }
      ucx = ucx_;
      while (ucx && slots.size() < left) {
        const int32_t slot = TakeSlotLocked(now);
        if (slot < 0) break;
        slots.push_back(slot);
      }
      if (ucx && slots.empty()) ++stats_.fetch_slot_fallbacks;
    }
    if (slots.empty()) {
      FetchGrpc(hashes.subspan(out.size(), std::min<size_t>(left, kMaxBlocksPerRpc)), &out);
      continue;
    }
    if (!FetchUcx(hashes.subspan(out.size(), slots.size()), slots, &out)) {
      // The store has no UCX path: gRPC bytes from now on (the loop asks again).
      StdMutexLock lock(&mu_);
      ucx_ = false;
      for (int32_t slot : slots) free_slots_.push_back(slot);
    }
  }
  return out;
}

bool StoreClient::FetchUcx(absl::Span<const BlockHash> hashes, const std::vector<int32_t>& slots,
                           std::vector<absl::StatusOr<std::string>>* out) {
  tandem::v1::StoreGetIntoRequest request;
  request.set_model_id(options_.model_id);
  for (size_t i = 0; i < hashes.size(); ++i) {
    request.add_block_hashes(hashes[i]);
    request.add_offsets(static_cast<uint64_t>(slots[i]) * options_.slot_bytes);
  }
  request.set_slot_bytes(options_.slot_bytes);
  transfer::RegionToProto(options_.transfer->worker_address(), *landing_, request.mutable_destination());
  tandem::v1::StoreGetIntoResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.fetch_timeout));
  const grpc::Status s = stub_->GetInto(&ctx, request, &response);
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) return false;
  const bool answered = s.ok() && response.value_bytes_size() == static_cast<int>(hashes.size());
  int64_t hits = 0, bytes = 0;
  for (size_t i = 0; i < hashes.size(); ++i) {
    const uint64_t n = answered ? response.value_bytes(static_cast<int>(i)) : 0;
    if (!answered) {
      out->push_back(s.ok() ? absl::InternalError("shared KV store: GetInto answered another block count")
                            : FromGrpc(s));
    } else if (n == 0 || n > options_.slot_bytes) {
      out->push_back(absl::NotFoundError(absl::StrFormat("block %016x not in the shared store", hashes[i])));
    } else {
      // The store answered after its write was confirmed in place; nobody
      // else writes this slot while we hold it.
      out->push_back(
          std::string(reinterpret_cast<const char*>(landing_->base_address +
                                                    static_cast<uint64_t>(slots[i]) * options_.slot_bytes),
                      n));
      ++hits;
      bytes += static_cast<int64_t>(n);
    }
  }
  StdMutexLock lock(&mu_);
  stats_.fetches += static_cast<int64_t>(hashes.size());
  ++stats_.fetch_rpcs;
  stats_.fetch_hits += hits;
  stats_.ucx_fetch_bytes += bytes;
  if (!s.ok()) {
    // The store may still be writing these slots (a deadline passed): not
    // reused for slot_quarantine.
    ++stats_.fetch_errors;
    unavailable_until_ = absl::Now() + options_.retry_after;
    for (int32_t slot : slots) quarantined_.emplace_back(absl::Now() + options_.slot_quarantine, slot);
  } else {
    for (int32_t slot : slots) free_slots_.push_back(slot);
  }
  return true;
}

void StoreClient::FetchGrpc(absl::Span<const BlockHash> hashes,
                            std::vector<absl::StatusOr<std::string>>* out) {
  tandem::v1::StoreGetRequest request;
  request.set_model_id(options_.model_id);
  for (BlockHash h : hashes) request.add_block_hashes(h);
  tandem::v1::StoreGetResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.fetch_timeout));
  const grpc::Status s = stub_->Get(&ctx, request, &response);
  // Misses are absent from the response; hits come in request order.
  int next = 0;
  int64_t hits = 0, bytes = 0;
  for (BlockHash h : hashes) {
    if (!s.ok()) {
      out->push_back(FromGrpc(s));
    } else if (next < response.blocks_size() && response.blocks(next).block_hash() == h) {
      bytes += static_cast<int64_t>(response.blocks(next).value().size());
      out->push_back(std::move(*response.mutable_blocks(next++)->mutable_value()));
      ++hits;
    } else {
      out->push_back(absl::NotFoundError(absl::StrFormat("block %016x not in the shared store", h)));
    }
  }
  StdMutexLock lock(&mu_);
  stats_.fetches += static_cast<int64_t>(hashes.size());
  ++stats_.fetch_rpcs;
  stats_.fetch_hits += hits;
  stats_.grpc_fetch_bytes += bytes;
  if (!s.ok()) {
    ++stats_.fetch_errors;
    unavailable_until_ = absl::Now() + options_.retry_after;
  }
}

void StoreClient::Offer(BlockHash hash, std::string value) {
  StdMutexLock lock(&mu_);
  if (stop_ || queue_.size() >= static_cast<size_t>(options_.offer_queue_blocks)) {
    ++stats_.offers_dropped;
    return;
  }
  ++stats_.offered;
  queue_.emplace_back(hash, std::move(value));
  work_cv_.notify_one();
}

bool StoreClient::Flush(absl::Time deadline) {
  StdMutexLock lock(&mu_);
  return idle_cv_.wait_until(
      lock.native(), absl::ToChronoTime(deadline),
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || (queue_.empty() && !sending_); });
}

StoreClient::Stats StoreClient::stats() const {
  StdMutexLock lock(&mu_);
  return stats_;
}

absl::StatusOr<int32_t> StoreClient::PutUcx(const Batch& batch) {
  const absl::Time deadline = absl::Now() + options_.put_timeout;
  tandem::v1::StoreReserveRequest reserve;
  reserve.set_model_id(options_.model_id);
  for (const auto& [hash, value] : batch) {
    reserve.add_block_hashes(hash);
    reserve.add_value_bytes(value.size());
  }
  tandem::v1::StoreReserveResponse reserved;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    if (grpc::Status s = stub_->ReservePut(&ctx, reserve, &reserved); !s.ok()) return FromGrpc(s);
  }
  if (reserved.reservation_id() == 0) return 0;  // held already, or no room
  if (reserved.offsets_size() != static_cast<int>(batch.size())) {
    return absl::InternalError("shared KV store: ReservePut answered a different number of offsets");
  }
  std::vector<transfer::WriteRequest> writes;
  int64_t bytes = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (reserved.offsets(static_cast<int>(i)) < 0) continue;
    writes.push_back({batch[i].second.data(), static_cast<uint64_t>(reserved.offsets(static_cast<int>(i))),
                      batch[i].second.size()});
    bytes += static_cast<int64_t>(batch[i].second.size());
  }
  // On failure the reservation is left to expire on the store.
  TANDEM_RETURN_IF_ERROR(options_.transfer->Write(
      transfer::RegionFromProto(reserved.staging(), "shared KV store"), writes, deadline));
  tandem::v1::StoreCommitRequest commit;
  commit.set_model_id(options_.model_id);
  commit.set_reservation_id(reserved.reservation_id());
  tandem::v1::StorePutResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(deadline));
  if (grpc::Status s = stub_->CommitPut(&ctx, commit, &response); !s.ok()) return FromGrpc(s);
  StdMutexLock lock(&mu_);
  stats_.ucx_put_bytes += bytes;
  return response.stored();
}

absl::StatusOr<int32_t> StoreClient::PutGrpc(Batch& batch) {
  tandem::v1::StorePutRequest request;
  request.set_model_id(options_.model_id);
  int64_t bytes = 0;
  for (auto& [hash, value] : batch) {
    tandem::v1::StoreBlock* b = request.add_blocks();
    b->set_block_hash(hash);
    bytes += static_cast<int64_t>(value.size());
    b->set_value(std::move(value));
  }
  tandem::v1::StorePutResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.put_timeout));
  if (grpc::Status s = stub_->Put(&ctx, request, &response); !s.ok()) return FromGrpc(s);
  StdMutexLock lock(&mu_);
  stats_.grpc_put_bytes += bytes;
  return response.stored();
}

void StoreClient::SendLoop() {
  StdMutexLock lock(&mu_);
  for (;;) {
    work_cv_.wait(lock.native(),
                  [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Batch batch;
    while (!queue_.empty() && batch.size() < static_cast<size_t>(options_.put_batch_blocks)) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    const bool ucx = ucx_;
    sending_ = true;
    lock.Unlock();
    absl::StatusOr<int32_t> stored = ucx ? PutUcx(batch) : PutGrpc(batch);
    bool fell_back = false;
    if (ucx && stored.status().code() == absl::StatusCode::kUnimplemented) {
      fell_back = true;
      stored = PutGrpc(batch);
    }
    lock.Lock();
    if (fell_back) ucx_ = false;
    sending_ = false;
    if (stored.ok()) {
      stats_.put_blocks += *stored;
    } else {
      ++stats_.put_errors;
    }
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace tandem::kvstore
