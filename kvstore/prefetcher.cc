#include "kvstore/prefetcher.h"

#include <algorithm>
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
    StdMutexLock lock(&mu_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
  thread_.join();
}

bool Prefetcher::Enqueue(absl::Span<const int32_t> prompt_tokens) {
  const bool refuse = prompt_tokens.size() < static_cast<size_t>(options_.block_tokens);
  Job job;
  if (!refuse) job.tokens.assign(prompt_tokens.begin(), prompt_tokens.end());
  return Push(std::move(job), refuse);
}

bool Prefetcher::EnqueueHashes(absl::Span<const BlockHash> hashes, int32_t first_block,
                               absl::Span<const int32_t> prompt_tokens) {
  const int64_t full_blocks = static_cast<int64_t>(prompt_tokens.size()) / options_.block_tokens;
  const int64_t n =
      first_block < 0 ? 0 : std::min<int64_t>(static_cast<int64_t>(hashes.size()), full_blocks - first_block);
  Job job;
  job.hinted = true;
  if (n > 0) {
    job.hashes.assign(hashes.begin(), hashes.begin() + n);
    job.tokens.assign(prompt_tokens.begin() + static_cast<int64_t>(first_block) * options_.block_tokens,
                      prompt_tokens.begin() + (first_block + n) * options_.block_tokens);
  }
  return Push(std::move(job), n <= 0);
}

bool Prefetcher::Push(Job job, bool refuse) {
  bool accepted = false;
  {
    StdMutexLock lock(&mu_);
    if (refuse || stop_ || queue_.size() >= static_cast<size_t>(options_.max_queued)) {
      ++stats_.dropped;
    } else {
      ++stats_.requests;
      ++(job.hinted ? stats_.hinted_requests : stats_.prompt_requests);
      job.deadline = absl::Now() + options_.deadline;
      queue_.push_back(std::move(job));
      accepted = true;
      work_cv_.notify_one();
    }
  }
  ReportStats();
  return accepted;
}

void Prefetcher::ReportStats() {
  if (!options_.on_stats) return;
  StdMutexLock order(&report_mu_);
  Stats copy;
  {
    StdMutexLock lock(&mu_);
    copy = stats_;
  }
  options_.on_stats(copy);
}

bool Prefetcher::WaitIdle(absl::Time deadline) {
  StdMutexLock lock(&mu_);
  return idle_cv_.wait_until(
      lock.native(), absl::ToChronoTime(deadline),
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || (queue_.empty() && !busy_); });
}

Prefetcher::Stats Prefetcher::stats() const {
  StdMutexLock lock(&mu_);
  return stats_;
}

void Prefetcher::Loop() {
  StdMutexLock lock(&mu_);
  for (;;) {
    work_cv_.wait(lock.native(),
                  [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.Unlock();
    Run(job);
    lock.Lock();
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

void Prefetcher::Run(const Job& job) {
  const std::vector<BlockHash> hashed =
      job.hinted ? std::vector<BlockHash>()
                 : HashFullBlocks(options_.model_id, job.tokens, options_.block_tokens);
  const std::vector<BlockHash>& hashes = job.hinted ? job.hashes : hashed;
  int64_t promoted = 0, in_dram = 0;
  bool expired = false;
  const size_t n = std::min(hashes.size(), static_cast<size_t>(options_.max_blocks));
  // Chunks of kChunkBlocks: the blocks a chunk finds in neither DRAM nor
  // SSD go to the shared store in one batch (TieredStore::PromoteMany); the
  // deadline and stop are checked between chunks.
  constexpr size_t kChunkBlocks = 16;
  for (size_t i = 0; i < n; i += kChunkBlocks) {
    if (absl::Now() > job.deadline) {
      expired = true;
      break;
    }
    {
      StdMutexLock lock(&mu_);
      if (stop_) return;
    }
    const size_t count = std::min(kChunkBlocks, n - i);
    const auto tokens =
        absl::MakeConstSpan(job.tokens).subspan(i * options_.block_tokens, count * options_.block_tokens);
    for (const absl::StatusOr<Tier>& from :
         store_->PromoteMany(absl::MakeConstSpan(hashes).subspan(i, count), tokens)) {
      if (!from.ok()) continue;  // not in the tiers (maybe in the pool), or unreadable
      ++(*from == Tier::kDram ? in_dram : promoted);
    }
  }
  {
    StdMutexLock lock(&mu_);
    stats_.promoted_blocks += promoted;
    stats_.dram_blocks += in_dram;
    if (job.hinted) {
      stats_.hinted_promoted_blocks += promoted;
      stats_.hinted_dram_blocks += in_dram;
    }
    if (expired) ++stats_.expired;
  }
  ReportStats();
}

}  // namespace tandem::kvstore
