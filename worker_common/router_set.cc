#include "worker_common/router_set.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/create_channel.h"

namespace tandem::worker_common {
namespace {

struct HostPort {
  std::string host;  // without brackets
  std::string port;
  bool bracketed = false;
};

absl::StatusOr<HostPort> SplitHostPort(absl::string_view entry) {
  HostPort out;
  absl::string_view rest = entry;
  if (absl::ConsumePrefix(&rest, "[")) {
    const size_t close = rest.find(']');
    if (close == absl::string_view::npos || rest.substr(close).size() < 2 || rest[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("router '", entry, "': expected [ipv6]:port"));
    }
    out.host = std::string(rest.substr(0, close));
    out.port = std::string(rest.substr(close + 2));
    out.bracketed = true;
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos || rest.find(':') != colon) {
      return absl::InvalidArgumentError(absl::StrCat("router '", entry, "': expected host:port"));
    }
    out.host = std::string(rest.substr(0, colon));
    out.port = std::string(rest.substr(colon + 1));
  }
  int port = 0;
  if (out.host.empty() || !absl::SimpleAtoi(out.port, &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("router '", entry, "': expected host:port with a port in 1..65535"));
  }
  return out;
}

bool IsAddressLiteral(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// The IPv4 addresses of `host` (else its IPv6 ones), as text, sorted.
std::vector<std::string> Lookup(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return {};
  std::set<std::string> v4, v6;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof(text));
      v4.insert(text);
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, text, sizeof(text));
      v6.insert(text);
    }
  }
  freeaddrinfo(found);
  const std::set<std::string>& chosen = v4.empty() ? v6 : v4;
  return {chosen.begin(), chosen.end()};
}

}  // namespace

void AddFastReconnect(grpc::ChannelArguments* args) {
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also takes it as the least
  // time one connection attempt may last (default 20 s), which a TLS
  // handshake over a slow link must keep.
  args->SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args->SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
}

absl::StatusOr<std::vector<std::string>> ResolveRouterTargets(const std::string& routers) {
  std::set<std::string> targets;
  int entries = 0;
  for (absl::string_view raw : absl::StrSplit(routers, ',', absl::SkipWhitespace())) {
    absl::string_view entry = absl::StripAsciiWhitespace(raw);
    absl::ConsumePrefix(&entry, "dns:///");
    absl::StatusOr<HostPort> hp = SplitHostPort(entry);
    if (!hp.ok()) return hp.status();
    ++entries;
    if (IsAddressLiteral(hp->host)) {
      targets.insert(std::string(entry));
      continue;
    }
    std::vector<std::string> addresses = Lookup(hp->host);
    if (addresses.size() == 1) {
      targets.insert(std::string(entry));  // one router: keep the name (TLS verifies it)
      continue;
    }
    for (const std::string& a : addresses) {
      targets.insert(a.find(':') != std::string::npos ? absl::StrCat("[", a, "]:", hp->port)
                                                      : absl::StrCat(a, ":", hp->port));
    }
  }
  if (entries == 0) return absl::InvalidArgumentError("router: no address given");
  if (targets.empty()) return absl::NotFoundError(absl::StrCat("router '", routers, "': no name resolves"));
  return std::vector<std::string>(targets.begin(), targets.end());
}

RouterSet::RouterSet(Options options, engine::KvEventLog* kv_events)
    : options_(std::move(options)), kv_events_(kv_events) {}

RouterSet::~RouterSet() { Stop(); }

absl::Status RouterSet::Start() {
  auto resolve = options_.resolve ? options_.resolve : ResolveRouterTargets;
  absl::StatusOr<std::vector<std::string>> targets = resolve(options_.routers);
  if (!targets.ok() && absl::IsInvalidArgument(targets.status())) return targets.status();
  // Every membership drains its own consumer; the log's first one would
  // only hold events back.
  kv_events_->RemoveConsumer(engine::KvEventLog::kFirstConsumer);
  if (targets.ok()) Reconcile(*targets);
  if (!resolver_.joinable()) resolver_ = std::thread([this] { ResolveLoop(); });
  return absl::OkStatus();
}

void RouterSet::ResolveLoop() {
  auto resolve = options_.resolve ? options_.resolve : ResolveRouterTargets;
  for (;;) {
    bool empty;
    {
      absl::MutexLock lock(&mu_);
      empty = members_.empty();
    }
    const absl::Duration wait =
        empty ? std::min(options_.resolve_interval, absl::Milliseconds(250)) : options_.resolve_interval;
    if (stop_.WaitForNotificationWithTimeout(wait)) return;
    absl::StatusOr<std::vector<std::string>> targets = resolve(options_.routers);
    // A failed lookup (DNS down for a moment) keeps the routers joined.
    if (targets.ok()) Reconcile(*targets);
  }
}

void RouterSet::Reconcile(const std::vector<std::string>& targets) {
  std::vector<std::unique_ptr<Member>> leaving;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = members_.begin(); it != members_.end();) {
      if (std::find(targets.begin(), targets.end(), it->first) == targets.end()) {
        leaving.push_back(std::move(it->second));
        it = members_.erase(it);
      } else {
        ++it;
      }
    }
    for (const std::string& target : targets) {
      if (members_.contains(target) || stop_.HasBeenNotified()) continue;
      auto m = std::make_unique<Member>();
      m->channel = options_.channel_factory ? options_.channel_factory(target)
                                            : grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
      m->stub = tandem::v1::WorkerRegistry::NewStub(m->channel);
      m->consumer = kv_events_->AddConsumer();
      RouterMembership::Options mo = options_.membership;
      mo.on_settled = [this] {
        absl::MutexLock lock(&mu_);  // wakes AwaitRegistration
      };
      m->membership =
          std::make_unique<RouterMembership>(std::move(mo), m->stub.get(), kv_events_, m->consumer);
      m->membership->Start();
      members_[target] = std::move(m);
    }
  }
  for (std::unique_ptr<Member>& m : leaving) {  // joins outside the lock
    m->membership->Stop();
    kv_events_->RemoveConsumer(m->consumer);
  }
}

void RouterSet::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (resolver_.joinable()) resolver_.join();
  std::map<std::string, std::unique_ptr<Member>> members;
  {
    absl::MutexLock lock(&mu_);
    members.swap(members_);
  }
  for (auto& [target, m] : members) m->membership->Stop();
  for (auto& [target, m] : members) kv_events_->RemoveConsumer(m->consumer);
}

grpc::Status RouterSet::AwaitRegistration(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (members_.empty()) return false;
    bool all_refused = true;
    for (const auto& [target, m] : members_) {
      if (m->membership->registered()) return true;
      all_refused = all_refused && m->membership->refused();
    }
    return all_refused;
  };
  mu_.AwaitWithDeadline(absl::Condition(&settled), deadline);
  if (members_.empty()) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("no router address resolves from '", options_.routers, "'"));
  }
  for (const auto& [target, m] : members_) {
    if (m->membership->registered()) return grpc::Status::OK;
  }
  // Every router refused, or none answered: the first one's reason.
  return members_.begin()->second->membership->AwaitRegistration(absl::ZeroDuration());
}

std::vector<std::string> RouterSet::targets() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [target, m] : members_) out.push_back(target);
  return out;
}

int RouterSet::registered() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [target, m] : members_) n += m->membership->registered() ? 1 : 0;
  return n;
}

}  // namespace tandem::worker_common
