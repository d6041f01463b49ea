#include "engine/tier_loader.h"

#include <algorithm>
#include <utility>

namespace tandem::engine {

TierLoader::TierLoader(KvTiers* tiers, Options options, std::unique_ptr<PoolCopier> copier)
    : tiers_(tiers), options_(std::move(options)), copier_(std::move(copier)) {
  thread_ = std::thread([this] { Loop(); });
}

TierLoader::~TierLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

TierLoader::Result TierLoader::Run(KvTiers* tiers, PoolCopier* copier, const Job& job, const Hook& hook,
                                   const std::function<bool()>& stop) {
  Result r;
  r.id = job.id;
  r.requested = static_cast<int32_t>(job.loads.size());
  for (size_t i = 0; i < job.loads.size(); ++i) {
    if (stop && stop()) {
      r.error = absl::CancelledError("tier load cancelled");
      break;
    }
    const Load& load = job.loads[i];
    if (hook) hook(job.id, static_cast<int32_t>(i), load.hash);
    KvTierSource source = KvTierSource::kDram;
    const absl::Status loaded = copier->Write(load.dst, [&](absl::Span<uint8_t> host) {
      absl::StatusOr<KvTierSource> tier = tiers->Load(load.hash, load.tokens, host);
      if (tier.ok()) source = *tier;
      return tier.status();
    });
    if (!loaded.ok()) {
      r.error = loaded;
      break;
    }
    ++r.loaded;
    ++(source == KvTierSource::kDram ? r.dram : r.ssd);
  }
  return r;
}

void TierLoader::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    active_ = job.id;
    cancel_active_ = false;
    lock.unlock();
    // The stop check takes the lock once per block: cheap next to the copy.
    Result r = Run(tiers_, copier_.get(), job, options_.hook, [this] {
      std::lock_guard<std::mutex> l(mu_);
      return cancel_active_ || stop_;
    });
    lock.lock();
    if (!cancel_active_ && !stop_) done_.push_back(std::move(r));
    active_.reset();
    cancel_active_ = false;
    done_cv_.notify_all();
  }
}

bool TierLoader::Submit(Job&& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || static_cast<int32_t>(queue_.size()) >= options_.max_queued_jobs) return false;
    queue_.push_back(std::move(job));
  }
  work_cv_.notify_one();
  return true;
}

void TierLoader::Cancel(int64_t id) {
  std::unique_lock<std::mutex> lock(mu_);
  std::erase_if(queue_, [&](const Job& j) { return j.id == id; });
  std::erase_if(done_, [&](const Result& r) { return r.id == id; });
  if (active_ == id) {
    cancel_active_ = true;
    done_cv_.wait(lock, [&] { return active_ != id; });
  }
}

std::vector<TierLoader::Result> TierLoader::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Result> out;
  out.swap(done_);
  return out;
}

bool TierLoader::WaitForResult(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return done_cv_.wait_for(lock,
                           absl::ToChronoNanoseconds(std::max(deadline - absl::Now(), absl::ZeroDuration())),
                           [&] { return !done_.empty(); });
}

int32_t TierLoader::outstanding() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(queue_.size() + done_.size()) + (active_.has_value() ? 1 : 0);
}

}  // namespace tandem::engine
