// TransferEngine is a facade over the units in transfer/internal/ (see
// README.md): the progress thread, the region table, the connections, the
// sender and the receiver. Impl owns the UCX context and worker and assembles
// the units on the progress thread: Setup creates them once UCX is up, and
// Teardown takes them apart in the order UCX needs.
#include "transfer/transfer_engine.h"

#include <ucp/api/ucp.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "transfer/internal/connection.h"
#include "transfer/internal/progress_thread.h"
#include "transfer/internal/receiver.h"
#include "transfer/internal/region_table.h"
#include "transfer/internal/sender.h"
#include "transfer/internal/stats.h"
#include "transfer/internal/ucx_status.h"
#include "transfer/internal/wire.h"

namespace tandem::transfer {
namespace {

using internal::FromUcs;

// How long destruction spends on each graceful step (in-flight connection
// setup, closing connections).
constexpr absl::Duration kGracefulCloseTimeout = absl::Seconds(1);

}  // namespace

absl::string_view WriteOpName(WriteOp op) {
  switch (op) {
    case WriteOp::kAuto:
      return "auto";
    case WriteOp::kPut:
      return "put";
    case WriteOp::kActiveMessage:
      return "am";
  }
  return "unknown";
}

RemoteRegion RemoteRegion::Of(std::string worker_address, const RegisteredRegion& region,
                              std::string peer_name) {
  RemoteRegion r;
  r.worker_address = std::move(worker_address);
  r.region_id = region.region_id;
  r.base_address = region.base_address;
  r.bytes = region.bytes;
  r.packed_rkey = region.packed_rkey;
  r.peer_name = std::move(peer_name);
  return r;
}

// ---------------------------------------------------------------------------

// Owns the UCX context and worker and the units built on them. Setup (on the
// progress thread) creates them before Start() returns; afterwards the unit
// pointers are read-only, and the units are used on the progress thread only
// (through thread().RunSync), except Sender::Write and the counters. Teardown
// destroys every unit but the Sender, whose Write a caller that broke the
// destructor's REQUIRES may still be in.
class TransferEngine::Impl : public internal::ProgressThread::Delegate {
 public:
  explicit Impl(const TransferOptions& options) : options_(options), thread_(options.name, this) {}
  ~Impl() override { thread_.Stop(); }

  // Starts the progress thread and waits for Setup.
  absl::Status Start() { return thread_.Start(options_.default_timeout + absl::Seconds(5)); }
  // Tears down and joins the progress thread. Idempotent.
  void Stop() { thread_.Stop(); }

  const std::string& address() const { return address_; }
  internal::ProgressThread& thread() { return thread_; }
  internal::RegionTable& regions() { return *regions_; }
  internal::Sender& sender() { return *sender_; }
  internal::Receiver& receiver() { return *receiver_; }
  TransferStats stats() const { return stats_.Get(); }

 private:
  // ProgressThread::Delegate.
  absl::Status Setup() override;
  void AfterProgress(absl::Time now) override {
    sender_->HandleFailedPeers();
    sender_->ExpireWrites(now);
  }
  void Housekeep(absl::Time now) override {
    connections_->Housekeep();
    receiver_->ExpireBatches(now);
  }
  absl::Time NextDeadline() const override { return sender_->NextDeadline(); }
  void Teardown() override;

  absl::Status CreateContext();
  absl::Status CreateWorker();
  // Teardown's first half, while the worker still runs: fails what is in
  // flight and closes every connection, bounded in time.
  void CloseConnections();
  // Progresses the worker until every close request is done or `until`.
  void WaitForCloseRequests(absl::Time until);

  const TransferOptions options_;
  internal::StatsCounters stats_;

  // Progress thread (Setup, Teardown); read-only in between.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  std::unique_ptr<internal::RegionTable> regions_;
  std::unique_ptr<internal::Connections> connections_;
  std::unique_ptr<internal::Sender> sender_;
  std::unique_ptr<internal::Receiver> receiver_;

  internal::ProgressThread thread_;
};

absl::Status TransferEngine::Impl::Setup() {
  TANDEM_RETURN_IF_ERROR(CreateContext());
  TANDEM_RETURN_IF_ERROR(CreateWorker());
  TANDEM_RETURN_IF_ERROR(thread_.Attach(worker_));

  const uint64_t host_id = internal::LocalHostId();
  regions_ = std::make_unique<internal::RegionTable>(context_, options_.name);
  connections_ = std::make_unique<internal::Connections>(worker_, options_.shared_memory_fast_path,
                                                         internal::ContextHasSharedMemory(context_), host_id);
  sender_ = std::make_unique<internal::Sender>(options_.name, worker_, &thread_, connections_.get(), &stats_);
  receiver_ = std::make_unique<internal::Receiver>(worker_, regions_.get(), sender_.get(), &stats_);
  TANDEM_RETURN_IF_ERROR(receiver_->InstallHandlers());

  ucp_address_t* ucx_address = nullptr;
  size_t ucx_address_length = 0;
  TANDEM_RETURN_IF_ERROR(
      FromUcs(ucp_worker_get_address(worker_, &ucx_address, &ucx_address_length), "ucp_worker_get_address"));
  address_ = internal::EncodeWorkerAddress(host_id, ucx_address, ucx_address_length);
  ucp_worker_release_address(worker_, ucx_address);
  return absl::OkStatus();
}

absl::Status TransferEngine::Impl::CreateContext() {
  ucp_config_t* config = nullptr;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  absl::Cleanup release_config = [config] { ucp_config_release(config); };
  if (!options_.transports.empty()) {
    TANDEM_RETURN_IF_ERROR(FromUcs(ucp_config_modify(config, "TLS", options_.transports.c_str()),
                                   absl::StrCat("UCX_TLS=", options_.transports)));
  }
  if (options_.keepalive_interval > absl::ZeroDuration()) {
    std::string value =
        absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.keepalive_interval)), "ms");
    TANDEM_RETURN_IF_ERROR(
        FromUcs(ucp_config_modify(config, "KEEPALIVE_INTERVAL", value.c_str()), "UCX_KEEPALIVE_INTERVAL"));
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  params.name = options_.name.c_str();
  ucs_status_t st = ucp_init(&params, config, &context_);
  if (st != UCS_OK) {
    context_ = nullptr;
    absl::Status s = FromUcs(st, "ucp_init");
    return absl::UnavailableError(s.message());
  }
  return absl::OkStatus();
}

absl::Status TransferEngine::Impl::CreateWorker() {
  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_NAME;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  wparams.name = options_.name.c_str();
  ucp_worker_h worker = nullptr;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_worker_create(context_, &wparams, &worker), "ucp_worker_create"));
  worker_ = worker;
  return absl::OkStatus();
}

void TransferEngine::Impl::Teardown() {
  thread_.StopAccepting();
  // The units exist once Setup got past Attach; the worker can be progressed.
  if (sender_ != nullptr) CloseConnections();
  thread_.Detach();
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  worker_ = nullptr;
  // Peers (error-callback arguments), rendezvous receives and acks in flight
  // (callback arguments) outlive the worker; regions are unmapped before the
  // context goes.
  receiver_.reset();
  connections_.reset();
  regions_.reset();
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
}

void TransferEngine::Impl::CloseConnections() {
  // Start what was submitted before (so that no caller waits for a task that
  // never runs); it is cancelled below.
  thread_.RunTasks();
  sender_->HandleFailedPeers();
  // Writes still in flight (the destructor's REQUIRES forbids them, but a
  // caller that broke the contract must not hang): fail them.
  sender_->DropBusyPeers(
      absl::CancelledError(absl::StrCat("transfer engine '", options_.name, "' destroyed")));
  // Let in-flight connection setup finish first, including endpoints that
  // peers' connections created here: UCX 1.13 asserts when
  // ucp_worker_destroy purges a wireup reply still pending on a TCP
  // endpoint (fixed upstream in openucx/ucx#8175). Bounded in time.
  ucp_request_param_t param{};
  connections_->TrackCloseRequest(ucp_worker_flush_nbx(worker_, &param));
  WaitForCloseRequests(absl::Now() + kGracefulCloseTimeout);
  thread_.DrainUntilQuiet(absl::Now() + kGracefulCloseTimeout);
  // Close the rest gracefully, bounded in time.
  connections_->CloseAllGracefully();
  WaitForCloseRequests(absl::Now() + kGracefulCloseTimeout);
  connections_->FreeCloseRequests();
  // Anything else still waiting (a write whose peer never answered a
  // graceful close) is finished now.
  sender_->CancelAll();
}

void TransferEngine::Impl::WaitForCloseRequests(absl::Time until) {
  for (;;) {
    thread_.ProgressWorker();
    if (connections_->ReapCloseRequests() || absl::Now() >= until) return;
    thread_.WaitForEvents(until);
  }
}

// ---------------------------------------------------------------------------
// TransferEngine.

TransferEngine::TransferEngine(const TransferOptions& options, std::unique_ptr<Impl> impl)
    : options_(options), impl_(std::move(impl)), worker_address_(impl_->address()) {}

TransferEngine::~TransferEngine() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<TransferEngine>> TransferEngine::Create(const TransferOptions& options) {
  if (options.default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("default_timeout must be positive");
  }
  if (options.keepalive_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("keepalive_interval must not be negative");
  }
  auto impl = std::make_unique<Impl>(options);
  absl::Status status = impl->Start();
  if (!status.ok()) {
    impl->Stop();
    return status;
  }
  return std::unique_ptr<TransferEngine>(new TransferEngine(options, std::move(impl)));
}

absl::StatusOr<RegisteredRegion> TransferEngine::Register(void* base, size_t bytes, MemoryKind kind) {
  if (kind == MemoryKind::kCuda) {
    return absl::UnimplementedError(
        "device memory: this UCX (Debian 1.13) has no CUDA transport; copy KV blocks through "
        "pinned host staging buffers registered as kHost (a CUDA-aware UCX could register "
        "device memory directly)");
  }
  if (base == nullptr || bytes == 0) {
    return absl::InvalidArgumentError("Register needs a non-null, non-empty range");
  }
  Impl* impl = impl_.get();
  return impl->thread().RunSync<RegisteredRegion>(
      [impl, base, bytes] { return impl->regions().Add(base, bytes, /*allocate=*/false); },
      absl::Now() + options_.default_timeout);
}

absl::StatusOr<RegisteredRegion> TransferEngine::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("Allocate needs a non-zero size");
  Impl* impl = impl_.get();
  return impl->thread().RunSync<RegisteredRegion>(
      [impl, bytes] { return impl->regions().Add(nullptr, bytes, /*allocate=*/true); },
      absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::Unregister(uint32_t region_id) {
  Impl* impl = impl_.get();
  return impl->thread().RunSyncStatus([impl, region_id] { return impl->regions().Remove(region_id); },
                                      absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes,
                                   absl::Time deadline) {
  return impl_->sender().Write(peer, writes, deadline, options_.op);
}

absl::Status TransferEngine::Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes,
                                   absl::Time deadline, WriteOp op) {
  return impl_->sender().Write(peer, writes, deadline, op);
}

absl::StatusOr<WriteOp> TransferEngine::ChooseOp(const RemoteRegion& peer) {
  if (peer.worker_address.empty() || peer.packed_rkey.empty()) {
    return absl::InvalidArgumentError("empty worker address or remote key");
  }
  Impl* impl = impl_.get();
  return impl->thread().RunSync<WriteOp>([impl, peer] { return impl->sender().ChooseOp(peer); },
                                         absl::Now() + options_.default_timeout);
}

absl::StatusOr<std::string> TransferEngine::DataTransports(const RemoteRegion& peer) {
  if (peer.worker_address.empty()) return absl::InvalidArgumentError("empty worker address");
  Impl* impl = impl_.get();
  return impl->thread().RunSync<std::string>(
      [impl, peer]() -> absl::StatusOr<std::string> {
        TANDEM_ASSIGN_OR_RETURN(internal::Peer * connection, impl->sender().Connect(peer));
        return connection->transports;
      },
      absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::SetWriteObserver(WriteObserver observer) {
  Impl* impl = impl_.get();
  return impl->thread().RunSyncStatus(
      [impl, observer = std::move(observer)]() mutable {
        impl->receiver().SetObserver(std::move(observer));
        return absl::OkStatus();
      },
      absl::Now() + options_.default_timeout);
}

TransferStats TransferEngine::stats() const { return impl_->stats(); }

}  // namespace tandem::transfer
