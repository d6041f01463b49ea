#include "router/flow_queue.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"

namespace tandem::router {

FlowQueue::FlowQueue(Options options) : options_(std::move(options)) {}

double FlowQueue::Weight(const std::string& tenant) const {
  auto it = options_.tenant_weights.find(tenant);
  const double w = it != options_.tenant_weights.end() ? it->second : options_.default_weight;
  return w > 0 ? w : 1;
}

absl::Status FlowQueue::Enter(Request request) {
  const Limits limits = CurrentLimits();
  const absl::Time now = options_.clock->Now();
  Actions actions;
  bool pumping = false;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    const int64_t admitted = static_cast<int64_t>(waiting_.size() + running_.size());
    if (limits.max_admitted > 0 && admitted >= limits.max_admitted) {
      refused = MakeRoomLocked(request, limits, &actions);
    }
    if (refused.ok()) pumping = InsertLocked(std::move(request), limits, now, &actions);
  }
  if (!refused.ok()) {
    if (options_.on_shed) options_.on_shed(kShedQueueFull);
    return refused;
  }
  Run(std::move(actions), pumping);
  return absl::OkStatus();
}

absl::Status FlowQueue::MakeRoomLocked(const Request& arrival, const Limits& limits, Actions* actions) {
  std::optional<uint64_t> victim;
  std::string_view reason;
  // The newest waiting request of the lowest band below the arrival's...
  auto lowest =
      std::find_if(bands_.rbegin(), bands_.rend(), [](const auto& b) { return !b.second.by_seq.empty(); });
  if (lowest != bands_.rend() && lowest->first < arrival.priority) {
    victim = *lowest->second.by_seq.rbegin();
    reason = kShedLowerPriority;
  } else if ((victim = OverShareLocked(arrival))) {  // ...or of a tenant over its share
    reason = kShedOverShare;
  }
  if (!victim.has_value()) {
    return ShedStatus(
        kShedQueueFull,
        absl::StrFormat("router queue full: %d requests admitted (%d waiting at the router), the "
                        "bound is %d; none waiting of lower priority than %d or of a tenant over "
                        "its share; retry later",
                        waiting_.size() + running_.size(), waiting_.size(), limits.max_admitted,
                        arrival.priority));
  }
  Entry shed = TakeLocked(*victim, /*served=*/false);
  const std::string detail =
      reason == kShedLowerPriority
          ? absl::StrFormat("shed from the full router queue (priority %d) for a request of priority %d",
                            shed.request.priority, arrival.priority)
          : absl::StrFormat(
                "shed from the full router queue: tenant '%s' is over its fair share and tenant "
                "'%s' below it",
                shed.request.tenant, arrival.tenant);
  actions->shed.push_back(reason);
  actions->drop.emplace_back(std::move(shed.request.drop), ShedStatus(reason, detail + "; retry later"));
  return absl::OkStatus();
}

std::optional<uint64_t> FlowQueue::OverShareLocked(const Request& arrival) const {
  auto band_it = bands_.find(arrival.priority);
  if (band_it == bands_.end() || band_it->second.by_seq.empty()) return std::nullopt;
  const Band& band = band_it->second;
  // The waiting tenant furthest ahead of its share: the largest finish tag.
  const std::string* ahead = nullptr;
  double ahead_finish = 0;
  for (const auto& [tenant, n] : band.waiting) {
    const double f = band.last_finish.at(tenant);
    if (ahead == nullptr || f > ahead_finish) {
      ahead = &tenant;
      ahead_finish = f;
    }
  }
  if (*ahead == arrival.tenant) return std::nullopt;
  auto own = band.last_finish.find(arrival.tenant);
  const double start = std::max(band.virtual_time, own != band.last_finish.end() ? own->second : 0.0);
  const double finish = start + std::max(1.0, arrival.cost) / Weight(arrival.tenant);
  // Only a tenant that would be served after the arrival makes room for it.
  if (ahead_finish <= finish) return std::nullopt;
  for (auto it = band.by_seq.rbegin(); it != band.by_seq.rend(); ++it) {
    if (waiting_.at(*it).request.tenant == *ahead) return *it;
  }
  return std::nullopt;
}

bool FlowQueue::InsertLocked(Request request, const Limits& limits, absl::Time now, Actions* actions) {
  {
    Entry e;
    e.seq = next_seq_++;
    e.enqueued = now;
    Band& band = bands_[request.priority];
    auto [last, inserted] = band.last_finish.try_emplace(request.tenant, band.virtual_time);
    e.start = std::max(band.virtual_time, last->second);
    e.finish = e.start + std::max(1.0, request.cost) / Weight(request.tenant);
    last->second = e.finish;
    ++band.waiting[request.tenant];
    band.by_start.emplace(e.start, e.seq);
    band.by_seq.insert(e.seq);
    waiting_key_[request.key] = e.seq;
    e.request = std::move(request);
    waiting_.emplace(e.seq, std::move(e));
  }
  return PumpLocked(limits, now, actions);
}

void FlowQueue::Done(uint64_t key) {
  const Limits limits = CurrentLimits();
  const absl::Time now = options_.clock->Now();
  Actions actions;
  bool pumping = false;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = waiting_key_.find(key); it != waiting_key_.end()) {
      TakeLocked(it->second, /*served=*/false);
      return;
    }
    auto running = running_.find(key);
    if (running == running_.end()) return;
    if (auto t = running_by_tenant_.find(running->second);
        t != running_by_tenant_.end() && --t->second <= 0) {
      running_by_tenant_.erase(t);
    }
    running_.erase(running);
    pumping = PumpLocked(limits, now, &actions);
  }
  Run(std::move(actions), pumping);
}

bool FlowQueue::Remove(uint64_t key) {
  absl::MutexLock lock(&mu_);
  auto it = waiting_key_.find(key);
  if (it == waiting_key_.end()) return false;
  TakeLocked(it->second, /*served=*/false);
  return true;
}

FlowQueue::Limits FlowQueue::Expire() {
  const Limits limits = CurrentLimits();
  const absl::Time now = options_.clock->Now();
  Actions actions;
  bool pumping = false;
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<uint64_t, absl::Status>> expired;  // with why
    for (const auto& [seq, e] : waiting_) {
      absl::Status why;
      if (ExpiredLocked(e, now, &why)) expired.emplace_back(seq, std::move(why));
    }
    for (auto& [seq, why] : expired) {
      Entry e = TakeLocked(seq, /*served=*/false);
      if (absl::IsResourceExhausted(why)) actions.shed.push_back(kShedQueueTtl);
      actions.drop.emplace_back(std::move(e.request.drop), std::move(why));
    }
    // Forget tenants whose tags no longer matter (their next start would be
    // the band's virtual time anyway), so tenant state stays bounded by the
    // tenants active recently.
    for (auto it = bands_.begin(); it != bands_.end();) {
      Band& band = it->second;
      for (auto t = band.last_finish.begin(); t != band.last_finish.end();) {
        if (t->second <= band.virtual_time && !band.waiting.contains(t->first)) {
          band.last_finish.erase(t++);
        } else {
          ++t;
        }
      }
      if (band.by_seq.empty() && band.last_finish.empty()) {
        bands_.erase(it++);
      } else {
        ++it;
      }
    }
    pumping = PumpLocked(limits, now, &actions);
  }
  Run(std::move(actions), pumping);
  return limits;
}

void FlowQueue::Pump() {
  {
    // Most calls find nothing waiting: skip asking the limits (a walk of
    // the router's workers). One that arrives meanwhile pumps itself.
    absl::MutexLock lock(&mu_);
    if (waiting_.empty()) return;
  }
  const Limits limits = CurrentLimits();
  const absl::Time now = options_.clock->Now();
  Actions actions;
  bool pumping = false;
  {
    absl::MutexLock lock(&mu_);
    pumping = PumpLocked(limits, now, &actions);
  }
  Run(std::move(actions), pumping);
}

void FlowQueue::Ended(uint64_t key) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(key);
  if (it == active_.end()) return;
  if (auto t = active_by_tenant_.find(it->second); t != active_by_tenant_.end() && --t->second <= 0) {
    active_by_tenant_.erase(t);
  }
  active_.erase(it);
}

FlowQueue::Stats FlowQueue::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.running = static_cast<int64_t>(running_.size());
  for (const auto& [priority, band] : bands_) {
    if (!band.by_seq.empty()) s.waiting_by_priority[priority] = static_cast<int64_t>(band.by_seq.size());
    s.tenants += static_cast<int64_t>(band.last_finish.size());
  }
  return s;
}

FlowQueue::Entry FlowQueue::TakeLocked(uint64_t seq, bool served) {
  auto node = waiting_.extract(seq);
  Entry e = std::move(node.mapped());
  waiting_key_.erase(e.request.key);
  auto band_it = bands_.find(e.request.priority);
  Band& band = band_it->second;
  band.by_start.erase({e.start, e.seq});
  band.by_seq.erase(e.seq);
  auto w = band.waiting.find(e.request.tenant);
  if (--w->second == 0) band.waiting.erase(w);
  // A request that leaves unserved gives its share back when it was the
  // tenant's newest (the next one starts where it would have).
  if (!served) {
    auto last = band.last_finish.find(e.request.tenant);
    if (last != band.last_finish.end() && last->second == e.finish) last->second = e.start;
  }
  return e;
}

bool FlowQueue::ExpiredLocked(const Entry& e, absl::Time now, absl::Status* why) const {
  if (now >= e.request.deadline) {
    *why = absl::DeadlineExceededError("request deadline passed while waiting in the router queue");
    return true;
  }
  if (options_.queue_ttl > absl::ZeroDuration() && now - e.enqueued >= options_.queue_ttl) {
    *why = ShedStatus(kShedQueueTtl,
                      absl::StrFormat("waited %s in the router queue (the queue TTL) without a free worker; "
                                      "retry later",
                                      absl::FormatDuration(options_.queue_ttl)));
    return true;
  }
  return false;
}

const FlowQueue::Band* FlowQueue::FirstWaitingBandLocked() const {
  auto it =
      std::find_if(bands_.begin(), bands_.end(), [](const auto& b) { return !b.second.by_start.empty(); });
  return it == bands_.end() ? nullptr : &it->second;
}

double FlowQueue::ActiveWeightLocked(const Band& band,
                                     const absl::flat_hash_map<std::string, int64_t>& counted) const {
  double weight = 0;
  for (const auto& [tenant, n] : band.waiting) {
    if (n > 0 && !counted.contains(tenant)) weight += Weight(tenant);
  }
  for (const auto& [tenant, n] : counted) weight += Weight(tenant);
  return weight;
}

std::optional<uint64_t> FlowQueue::NextLocked(int64_t below_share_of, int64_t share_cap) const {
  const Band* first = FirstWaitingBandLocked();
  if (first == nullptr) return std::nullopt;
  const Band& band = *first;
  if (below_share_of <= 0) return band.by_start.begin()->second;
  // A tenant's share of `below_share_of` running slots: its weight over
  // the weights of the tenants waiting in the band or running.
  const double active_weight = ActiveWeightLocked(band, running_by_tenant_);
  // The work is in a member: the thread-safety analysis cannot see that
  // this lambda only runs under mu_.
  auto below_share = [this, below_share_of, share_cap, active_weight](const std::string& tenant)
                         ABSL_NO_THREAD_SAFETY_ANALYSIS {
                           return BelowShareLocked(tenant, below_share_of, share_cap, active_weight);
                         };
  // Scan by start tag only when some waiting tenant of the band is below.
  if (std::none_of(band.waiting.begin(), band.waiting.end(),
                   [&](const auto& t) { return t.second > 0 && below_share(t.first); })) {
    return std::nullopt;
  }
  for (const auto& [start, seq] : band.by_start) {
    if (below_share(waiting_.at(seq).request.tenant)) return seq;
  }
  return std::nullopt;
}

std::optional<uint64_t> FlowQueue::NextBelowActiveShareLocked() const {
  const Band* first = FirstWaitingBandLocked();
  if (first == nullptr || active_.empty()) return std::nullopt;
  const Band& band = *first;
  const double active_weight = ActiveWeightLocked(band, active_by_tenant_);
  const double total = static_cast<double>(active_.size());
  for (const auto& [start, seq] : band.by_start) {
    const std::string& tenant = waiting_.at(seq).request.tenant;
    auto it = active_by_tenant_.find(tenant);
    const double active = it == active_by_tenant_.end() ? 0 : static_cast<double>(it->second);
    if (active < total * Weight(tenant) / active_weight) return seq;
  }
  return std::nullopt;
}

bool FlowQueue::BelowShareLocked(const std::string& tenant, int64_t slots, int64_t cap,
                                 double active_weight) const {
  auto it = running_by_tenant_.find(tenant);
  const int64_t running = it == running_by_tenant_.end() ? 0 : it->second;
  if (running >= cap) return false;
  return static_cast<double>(running) < static_cast<double>(slots) * Weight(tenant) / active_weight;
}

void FlowQueue::DispatchOneLocked(uint64_t seq, absl::Time now, Actions* actions) {
  Band& band = bands_.at(waiting_.at(seq).request.priority);
  absl::Status why;
  const bool expired = ExpiredLocked(waiting_.at(seq), now, &why);
  Entry e = TakeLocked(seq, /*served=*/!expired);
  if (expired) {
    if (absl::IsResourceExhausted(why)) actions->shed.push_back(kShedQueueTtl);
    actions->drop.emplace_back(std::move(e.request.drop), std::move(why));
    return;
  }
  // The band's virtual time is the start tag in service (SFQ); when the
  // band has nothing more waiting (its busy period ends), the largest
  // finish tag served, so a tenant's old tags do not outlive its share.
  band.virtual_time = std::max(band.virtual_time, e.start);
  band.max_finish = std::max(band.max_finish, e.finish);
  if (band.by_start.empty()) band.virtual_time = band.max_finish;
  ++running_by_tenant_[e.request.tenant];
  if (active_.emplace(e.request.key, e.request.tenant).second) ++active_by_tenant_[e.request.tenant];
  running_.emplace(e.request.key, std::move(e.request.tenant));
  actions->dispatch.push_back(std::move(e.request.dispatch));
}

void FlowQueue::DispatchLocked(const Limits& limits, absl::Time now, Actions* actions) {
  int64_t room = limits.dispatch_room;
  while (!waiting_.empty() && room != 0 &&
         (limits.max_running <= 0 || static_cast<int64_t>(running_.size()) < limits.max_running)) {
    DispatchOneLocked(*NextLocked(/*below_share_of=*/0, /*share_cap=*/0), now, actions);
    if (room > 0) --room;
  }
  if (!options_.below_share_skips_limit) return;
  while (!waiting_.empty() && room != 0 && static_cast<int64_t>(running_.size()) < 2 * limits.max_running) {
    // A tenant's share of twice the limit (what all may run), capped at
    // the limit (what it may run alone): two equal tenants each get what
    // one gets alone, so a light tenant's burst waits no longer beside a
    // heavy one than without it; one tenant never passes the limit.
    std::optional<uint64_t> seq = NextLocked(/*below_share_of=*/2 * limits.max_running, limits.max_running);
    if (!seq.has_value()) break;
    DispatchOneLocked(*seq, now, actions);
    if (room > 0) --room;
  }
  if (room != 0) return;
  // The decode side is full: only tenants below their share of it, and no
  // more running (prefilling) than the pass above allows.
  while (!waiting_.empty() &&
         (limits.max_running <= 0 || static_cast<int64_t>(running_.size()) < 2 * limits.max_running)) {
    std::optional<uint64_t> seq = NextBelowActiveShareLocked();
    if (!seq.has_value()) break;
    DispatchOneLocked(*seq, now, actions);
  }
}

bool FlowQueue::PumpLocked(const Limits& limits, absl::Time now, Actions* actions) {
  if (pumping_) {
    pump_again_ = true;
    return false;
  }
  DispatchLocked(limits, now, actions);
  if (actions->dispatch.empty()) return false;
  pumping_ = true;
  return true;
}

void FlowQueue::Run(Actions actions, bool pumping) {
  while (true) {
    if (options_.on_shed) {
      for (std::string_view reason : actions.shed) options_.on_shed(reason);
    }
    for (auto& [drop, why] : actions.drop) {
      if (drop) drop(std::move(why));
    }
    for (auto& dispatch : actions.dispatch) {
      if (dispatch) dispatch();
    }
    if (!pumping) return;
    actions = Actions();
    const Limits limits = CurrentLimits();
    const absl::Time now = options_.clock->Now();
    absl::MutexLock lock(&mu_);
    if (!std::exchange(pump_again_, false)) {
      pumping_ = false;
      return;
    }
    DispatchLocked(limits, now, &actions);
  }
}

}  // namespace tandem::router
