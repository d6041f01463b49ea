#include "router/worker_registry.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "router/worker_stubs.h"

namespace tandem::router {

using tandem::v1::WorkerRole;

void AddWorkerChannelArgs(absl::Duration time, absl::Duration timeout, grpc::ChannelArguments* args) {
  args->SetMaxReceiveMessageSize(256 << 20);
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(absl::ToInt64Milliseconds(time)));
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  args->SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // gRPC stops pinging after 2 pings without data by default: exactly the
  // case of a stream whose worker froze. 0: no limit.
  args->SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
}

absl::Status WorkerRegistry::Register(const tandem::v1::RegisterRequest& r) {
  if (r.worker_id().empty()) return absl::InvalidArgumentError("worker_id is empty");
  if (r.address().empty()) return absl::InvalidArgumentError("address is empty");
  if (r.role() != tandem::v1::WORKER_ROLE_PREFILL && r.role() != tandem::v1::WORKER_ROLE_DECODE &&
      r.role() != tandem::v1::WORKER_ROLE_STORE) {
    return absl::InvalidArgumentError(
        "role must be WORKER_ROLE_PREFILL, WORKER_ROLE_DECODE or WORKER_ROLE_STORE");
  }
  if (r.model_id() != options_.model_id) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model_id: worker serves '%s' but this router serves '%s'", r.model_id(), options_.model_id));
  }
  Entry e;
  e.handle.id = r.worker_id();
  e.handle.role = r.role();
  e.handle.address = r.address();
  std::shared_ptr<grpc::Channel> channel;
  if (options_.channel_factory) {
    channel = options_.channel_factory(r.address());
  } else {
    grpc::ChannelArguments args;
    AddWorkerChannelArgs(options_.keepalive_time, options_.keepalive_timeout, &args);
    channel = grpc::CreateCustomChannel(r.address(), grpc::InsecureChannelCredentials(), args);
  }
  auto stubs = std::make_shared<WorkerStubs>();
  if (r.role() == tandem::v1::WORKER_ROLE_DECODE) {
    stubs->decode = tandem::v1::DecodeWorker::NewStub(channel);
  } else if (r.role() == tandem::v1::WORKER_ROLE_PREFILL) {
    stubs->prefill = tandem::v1::PrefillWorker::NewStub(channel);
  }
  stubs->kv_events = tandem::v1::KvEventSource::NewStub(channel);
  e.handle.stubs = std::move(stubs);
  e.last_heartbeat = options_.clock->Now();
  e.load = r.load();
  e.block_size = r.block_size();
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = workers_.try_emplace(r.worker_id());
  // Registering again (a restarted worker, or this router forgot it) starts
  // a new epoch: calls made to the previous incarnation are stale.
  if (!inserted) {
    e.handle.rotation_epoch = it->second.handle.rotation_epoch + 1;
    e.slot = it->second.slot;
    if (it->second.handle.role != e.handle.role) {  // back in another role
      std::vector<Entry*>& old_role = by_role_[static_cast<int>(it->second.handle.role) & 3];
      old_role.erase(std::find(old_role.begin(), old_role.end(), &it->second));
      std::vector<Entry*>& new_role = by_role_[static_cast<int>(e.handle.role) & 3];
      // Registration order within the role, as entries_ has it.
      new_role.insert(
          std::find_if(new_role.begin(), new_role.end(), [&](const Entry* x) { return x->slot > e.slot; }),
          &it->second);
    }
  } else {
    e.slot = static_cast<uint32_t>(entries_.size());
  }
  it->second = std::move(e);
  if (inserted) {
    order_.push_back(r.worker_id());
    entries_.push_back(&it->second);
    by_role_[static_cast<int>(it->second.handle.role) & 3].push_back(&it->second);
  }
  return absl::OkStatus();
}

bool WorkerRegistry::Heartbeat(const tandem::v1::HeartbeatRequest& r) {
  absl::MutexLock lock(&mu_);
  NoteRunning();
  auto it = workers_.find(r.worker_id());
  if (it == workers_.end()) return false;
  Entry& e = it->second;
  const absl::Time now = options_.clock->Now();
  const bool was_out = !Healthy(e, now);
  e.last_heartbeat = now;
  e.load = r.load();
  if (e.failed && now < e.failed_until) return true;  // held out (MarkFailed)
  e.failed = false;
  if (was_out) ++e.handle.rotation_epoch;  // back in the rotation
  return true;
}

bool WorkerRegistry::Healthy(const Entry& e, absl::Time now) const {
  return !e.failed && Silence(e, now) <= options_.heartbeat_interval * options_.misses_allowed;
}

absl::Duration WorkerRegistry::Silence(const Entry& e, absl::Time now) const {
  return now - std::max(e.last_heartbeat, awake_since_);
}

void WorkerRegistry::NoteRunning() {
  const absl::Time real = options_.awake_clock->Now();
  if (options_.pause_threshold > absl::ZeroDuration() && last_run_ != absl::InfiniteFuture() &&
      real - last_run_ > options_.pause_threshold) {
    awake_since_ = options_.clock->Now();
    LOG(WARNING) << "the router did not run for " << absl::FormatDuration(real - last_run_)
                 << "; workers' silence until now is not held against them";
  }
  last_run_ = real;
}

absl::Time WorkerRegistry::awake_since() {
  absl::MutexLock lock(&mu_);
  NoteRunning();
  return awake_since_;
}

absl::StatusOr<WorkerHandle> WorkerRegistry::Pick(WorkerRole role, const std::vector<std::string>& exclude) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  NoteRunning();
  const size_t n = order_.size();
  size_t& cursor = next_[static_cast<int>(role) % 3];
  for (size_t k = 0; k < n; ++k) {
    const std::string& id = order_[(cursor + k) % n];
    const Entry& e = workers_.at(id);
    if (e.handle.role != role || !Healthy(e, now)) continue;
    if (std::find(exclude.begin(), exclude.end(), id) != exclude.end()) continue;
    cursor = (cursor + k + 1) % n;
    return e.handle;
  }
  return absl::UnavailableError(
      absl::StrFormat("no healthy %s worker", role == tandem::v1::WORKER_ROLE_DECODE ? "decode" : "prefill"));
}

bool WorkerRegistry::HasHealthy(WorkerRole role) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  NoteRunning();
  for (const auto& [id, e] : workers_) {
    if (e.handle.role == role && Healthy(e, now)) return true;
  }
  return false;
}

template <typename Fn>
void WorkerRegistry::ScanHealthy(WorkerRole role, const std::vector<std::string>& exclude, Fn fn) {
  const absl::Time heard_since = options_.clock->Now() - heartbeat_deadline();
  const std::vector<Entry*>& entries = by_role_[static_cast<int>(role) & 3];
  // Entries live apart in the map's nodes: ask for the ones a few steps
  // ahead while this one is judged.
  constexpr size_t kAhead = 8;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i + kAhead < entries.size()) {
      const char* ahead = reinterpret_cast<const char*>(entries[i + kAhead]);
      __builtin_prefetch(ahead);
      __builtin_prefetch(ahead + 64);
      __builtin_prefetch(ahead + 128);
    }
    const Entry& e = *entries[i];
    if (!HeardSince(e, heard_since)) continue;
    if (!exclude.empty() && std::find(exclude.begin(), exclude.end(), e.handle.id) != exclude.end()) continue;
    fn(WorkerView{e.handle, e.load, e.block_size, e.inflight_prefill_tokens, e.inflight_requests, e.slot});
  }
}

void WorkerRegistry::ForEachHealthy(WorkerRole role, const std::vector<std::string>& exclude,
                                    absl::FunctionRef<void(const WorkerView&)> fn) {
  absl::MutexLock lock(&mu_);
  NoteRunning();
  ScanHealthy(role, exclude, fn);
}

void WorkerRegistry::WithHealthy(WorkerRole role, const std::vector<std::string>& exclude,
                                 absl::FunctionRef<void(absl::Span<const WorkerView>)> fn) {
  absl::MutexLock lock(&mu_);
  NoteRunning();
  // Kept per thread (fn may not call back into the registry, so a thread
  // is in at most one WithHealthy): 1,000 views per request were a malloc
  // of 40 KB each time.
  thread_local std::vector<WorkerView> views;
  views.clear();
  ScanHealthy(role, exclude, [&](const WorkerView& v) { views.push_back(v); });
  fn(views);
  views.clear();  // the views die with the lock
}

std::optional<uint32_t> WorkerRegistry::SlotOf(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return std::nullopt;
  return it->second.slot;
}

std::optional<WorkerHandle> WorkerRegistry::Get(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return std::nullopt;
  return it->second.handle;
}

void WorkerRegistry::AddInflight(const std::string& worker_id, int64_t prefill_tokens) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  it->second.inflight_prefill_tokens += prefill_tokens;
  ++it->second.inflight_requests;
}

void WorkerRegistry::RemoveInflight(const std::string& worker_id, int64_t prefill_tokens) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  it->second.inflight_prefill_tokens =
      std::max<int64_t>(0, it->second.inflight_prefill_tokens - prefill_tokens);
  it->second.inflight_requests = std::max(0, it->second.inflight_requests - 1);
}

void WorkerRegistry::UpdateLoad(const std::string& worker_id, const tandem::v1::WorkerLoad& load) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) it->second.load = load;
}

std::vector<std::string> WorkerRegistry::Unhealthy() {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  NoteRunning();
  std::vector<std::string> out;
  for (const std::string& id : order_) {
    if (!Healthy(workers_.at(id), now)) out.push_back(id);
  }
  return out;
}

void WorkerRegistry::MarkFailed(const std::string& worker_id, absl::Duration hold) {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return;
  it->second.failed = true;
  it->second.failed_until = std::max(it->second.failed_until, now + hold);
}

std::vector<WorkerRegistry::WorkerInfo> WorkerRegistry::List() {
  const absl::Time now = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  NoteRunning();
  std::vector<WorkerInfo> out;
  for (const std::string& id : order_) {
    const Entry& e = workers_.at(id);
    out.push_back({id, e.handle.role, e.handle.address, Healthy(e, now), e.load, e.handle.rotation_epoch,
                   Silence(e, now), e.failed});
  }
  return out;
}

}  // namespace tandem::router
