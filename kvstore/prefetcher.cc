#include "kvstore/prefetcher.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "common/block_hash.h"

namespace tandem::kvstore {

absl::StatusOr<std::unique_ptr<Prefetcher>> Prefetcher::Create(const Options& options, TieredStore* store) {
  if (store == nullptr) return absl::InvalidArgumentError("Prefetcher: no store");
  if (options.model_id.empty()) return absl::InvalidArgumentError("Prefetcher: model_id is empty");
  if (options.block_tokens != store->options().block_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat("Prefetcher: block_tokens %d, the store's are %d",
                                                      options.block_tokens, store->options().block_tokens));
  }
  if (options.max_queued < 1 || options.max_blocks < 1) {
    return absl::InvalidArgumentError("Prefetcher: max_queued and max_blocks must be >= 1");
  }
  return std::unique_ptr<Prefetcher>(new Prefetcher(options, store));
}

Prefetcher::Prefetcher(const Options& options, TieredStore* store)
    : options_(options), store_(store), thread_([this] { Loop(); }) {}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
  thread_.join();
}

bool Prefetcher::Enqueue(absl::Span<const int32_t> prompt_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_ || queue_.size() >= static_cast<size_t>(options_.max_queued) ||
      prompt_tokens.size() < static_cast<size_t>(options_.block_tokens)) {
    ++stats_.dropped;
    return false;
  }
  queue_.push_back(Job{std::vector<int32_t>(prompt_tokens.begin(), prompt_tokens.end()),
                       absl::Now() + options_.deadline});
  ++stats_.requests;
  work_cv_.notify_one();
  return true;
}

bool Prefetcher::WaitIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, absl::ToChronoTime(deadline),
                             [this] { return stop_ || (queue_.empty() && !busy_); });
}

Prefetcher::Stats Prefetcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Prefetcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    Run(job);
    lock.lock();
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

void Prefetcher::Run(const Job& job) {
  const std::vector<BlockHash> hashes = HashFullBlocks(options_.model_id, job.tokens, options_.block_tokens);
  int64_t promoted = 0, in_dram = 0;
  bool expired = false;
  const size_t n = std::min(hashes.size(), static_cast<size_t>(options_.max_blocks));
  for (size_t i = 0; i < n; ++i) {
    if (absl::Now() > job.deadline) {
      expired = true;
      break;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    const auto tokens = absl::MakeConstSpan(job.tokens).subspan(i * options_.block_tokens, options_.block_tokens);
    absl::StatusOr<Tier> from = store_->Promote(hashes[i], tokens);
    if (!from.ok()) continue;  // not in the tiers (maybe in the pool), or unreadable
    ++(*from == Tier::kDram ? in_dram : promoted);
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.promoted_blocks += promoted;
  stats_.dram_blocks += in_dram;
  if (expired) ++stats_.expired;
}

}  // namespace tandem::kvstore
