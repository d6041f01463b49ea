#include "worker_common/router_membership.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"

namespace tandem::worker_common {

RouterMembership::RouterMembership(Options options, tandem::v1::WorkerRegistry::StubInterface* stub,
                                   engine::KvEventLog* kv_events, engine::KvEventLog::ConsumerId consumer)
    : options_(std::move(options)),
      stub_(stub),
      publisher_({.worker_id = options_.registration.worker_id(), .consumer = consumer}, kv_events, stub,
                 options_.load) {}

RouterMembership::~RouterMembership() { Stop(); }

grpc::Status RouterMembership::RegisterOnce() {
  if (options_.load) *options_.registration.mutable_load() = options_.load();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  ctx.set_wait_for_ready(true);
  {
    absl::MutexLock lock(&mu_);
    if (stop_.HasBeenNotified()) return grpc::Status(grpc::StatusCode::CANCELLED, "stopped");
    live_context_ = &ctx;
  }
  tandem::v1::RegisterResponse resp;
  grpc::Status s = stub_->Register(&ctx, options_.registration, &resp);
  bool settled = false;
  {
    absl::MutexLock lock(&mu_);
    live_context_ = nullptr;
    if (s.ok()) {
      settled = !registered_;
      registered_ = true;
    } else if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      settled = !refused_.has_value();
      refused_ = s;
    } else {
      last_error_ = s;
    }
  }
  if (settled && options_.on_settled) options_.on_settled();
  return s;
}

void RouterMembership::Loop() {
  // Register: each attempt waits up to 2 s for the router to answer.
  while (!stop_.HasBeenNotified()) {
    grpc::Status s = RegisterOnce();
    if (s.ok()) break;
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) return;  // refused: retrying cannot help
    // A refused connection fails at once: pace the retries.
    stop_.WaitForNotificationWithTimeout(options_.heartbeat_interval);
  }
  if (stop_.HasBeenNotified()) return;
  publisher_.Start();
  while (!stop_.WaitForNotificationWithTimeout(options_.heartbeat_interval)) {
    tandem::v1::HeartbeatRequest hb;
    hb.set_worker_id(options_.registration.worker_id());
    if (options_.load) *hb.mutable_load() = options_.load();
    if (options_.on_heartbeat) options_.on_heartbeat(hb.load());
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    tandem::v1::HeartbeatResponse resp;
    grpc::Status s = stub_->Heartbeat(&ctx, hb, &resp);
    if (s.ok() && !resp.known()) (void)RegisterOnce();  // the router restarted
  }
}

void RouterMembership::Start() {
  if (!thread_.joinable() && !stop_.HasBeenNotified()) thread_ = std::thread([this] { Loop(); });
}

void RouterMembership::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (live_context_ != nullptr) live_context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
  publisher_.Stop();
}

grpc::Status RouterMembership::AwaitRegistration(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return registered_ || refused_.has_value() || stop_.HasBeenNotified();
  };
  mu_.AwaitWithTimeout(absl::Condition(&settled), timeout);
  if (registered_) return grpc::Status::OK;
  if (refused_.has_value()) return *refused_;
  if (stop_.HasBeenNotified()) return grpc::Status(grpc::StatusCode::CANCELLED, "stopped");
  return grpc::Status(
      grpc::StatusCode::DEADLINE_EXCEEDED,
      absl::StrCat("no answer in ", absl::FormatDuration(timeout), ": ", last_error_.error_message()));
}

bool RouterMembership::registered() const {
  absl::MutexLock lock(&mu_);
  return registered_;
}

bool RouterMembership::refused() const {
  absl::MutexLock lock(&mu_);
  return refused_.has_value();
}

}  // namespace tandem::worker_common
