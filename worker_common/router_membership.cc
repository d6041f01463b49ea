#include "worker_common/router_membership.h"

#include <utility>

#include "grpcpp/client_context.h"

namespace tandem::worker_common {

RouterMembership::RouterMembership(Options options, tandem::v1::WorkerRegistry::StubInterface* stub,
                                   engine::KvEventLog* kv_events)
    : options_(std::move(options)),
      stub_(stub),
      publisher_({.worker_id = options_.registration.worker_id()}, kv_events, stub, options_.load) {}

RouterMembership::~RouterMembership() { Stop(); }

grpc::Status RouterMembership::RegisterOnce() {
  if (options_.load) *options_.registration.mutable_load() = options_.load();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  ctx.set_wait_for_ready(true);
  tandem::v1::RegisterResponse resp;
  return stub_->Register(&ctx, options_.registration, &resp);
}

grpc::Status RouterMembership::Register() {
  const absl::Time deadline = absl::Now() + options_.register_timeout;
  grpc::Status registered = RegisterOnce();
  while (!registered.ok() && registered.error_code() != grpc::StatusCode::INVALID_ARGUMENT &&
         absl::Now() < deadline) {
    registered = RegisterOnce();
  }
  return registered;
}

void RouterMembership::Start() {
  publisher_.Start();
  if (heartbeat_.joinable()) return;
  heartbeat_ = std::thread([this] {
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
  });
}

void RouterMembership::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (heartbeat_.joinable()) heartbeat_.join();
  publisher_.Stop();
}

}  // namespace tandem::worker_common
