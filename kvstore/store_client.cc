#include "kvstore/store_client.h"

#include <vector>

#include "absl/strings/str_format.h"
#include "grpcpp/client_context.h"
#include "proto/grpc_status.h"

namespace tandem::kvstore {

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::Create(const Options& options,
                                                                 std::shared_ptr<grpc::Channel> channel) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("StoreClient: model_id is empty");
  if (channel == nullptr) return absl::InvalidArgumentError("StoreClient: no channel");
  if (options.offer_queue_blocks < 1 || options.put_batch_blocks < 1) {
    return absl::InvalidArgumentError("StoreClient: offer_queue_blocks and put_batch_blocks must be >= 1");
  }
  return std::unique_ptr<StoreClient>(new StoreClient(options, std::move(channel)));
}

StoreClient::StoreClient(const Options& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options), stub_(tandem::v1::KvStore::NewStub(channel)), sender_([this] { SendLoop(); }) {}

StoreClient::~StoreClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
  sender_.join();
}

absl::StatusOr<std::string> StoreClient::Fetch(BlockHash hash) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Now() < unavailable_until_) {
      ++stats_.fetch_skipped;
      return absl::UnavailableError("shared KV store: unavailable (recent failure)");
    }
  }
  tandem::v1::StoreGetRequest request;
  request.set_model_id(options_.model_id);
  request.add_block_hashes(hash);
  tandem::v1::StoreGetResponse response;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.fetch_timeout));
  const grpc::Status s = stub_->Get(&ctx, request, &response);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.fetches;
  if (!s.ok()) {
    ++stats_.fetch_errors;
    unavailable_until_ = absl::Now() + options_.retry_after;
    return FromGrpc(s);
  }
  for (tandem::v1::StoreBlock& b : *response.mutable_blocks()) {
    if (b.block_hash() != hash) continue;
    ++stats_.fetch_hits;
    return std::move(*b.mutable_value());
  }
  return absl::NotFoundError(absl::StrFormat("block %016x not in the shared store", hash));
}

void StoreClient::Offer(BlockHash hash, std::string value) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || queue_.size() >= static_cast<size_t>(options_.offer_queue_blocks)) {
    ++stats_.offers_dropped;
    return;
  }
  ++stats_.offered;
  queue_.emplace_back(hash, std::move(value));
  work_cv_.notify_one();
}

bool StoreClient::Flush(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, absl::ToChronoTime(deadline),
                             [this] { return stop_ || (queue_.empty() && !sending_); });
}

StoreClient::Stats StoreClient::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void StoreClient::SendLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    tandem::v1::StorePutRequest request;
    request.set_model_id(options_.model_id);
    while (!queue_.empty() && request.blocks_size() < options_.put_batch_blocks) {
      tandem::v1::StoreBlock* b = request.add_blocks();
      b->set_block_hash(queue_.front().first);
      b->set_value(std::move(queue_.front().second));
      queue_.pop_front();
    }
    sending_ = true;
    lock.unlock();
    tandem::v1::StorePutResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.put_timeout));
    const grpc::Status s = stub_->Put(&ctx, request, &response);
    lock.lock();
    sending_ = false;
    if (s.ok()) {
      stats_.put_blocks += response.stored();
    } else {
      ++stats_.put_errors;
    }
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace tandem::kvstore
