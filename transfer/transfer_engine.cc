#include "transfer/transfer_engine.h"

#include <poll.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"

namespace tandem::transfer {
namespace {

// ---------------------------------------------------------------------------
// Wire formats. Every active message carries one of these as its UCX header.

constexpr uint32_t kAddressMagic = 0x57444e54;  // "TNDW"
constexpr uint32_t kAddressVersion = 1;
constexpr uint32_t kWireMagic = 0x31444e54;  // "TND1"

// Active-message ids. A UCX 1.13 worker crashes on an id it has no handler
// for, so all three are installed before the address is published.
constexpr unsigned kAmData = 1;
constexpr unsigned kAmFence = 2;
constexpr unsigned kAmAck = 3;

// What precedes the UCX worker address in worker_address().
struct AddressHeader {
  uint32_t magic;
  uint32_t version;
  uint64_t host_id;  // peers with equal host ids may share memory
};

// Header of a data active message; the payload is the bytes to place.
struct DataHeader {
  uint32_t magic;
  uint32_t region_id;
  uint64_t sender_id;
  uint64_t batch_seq;
  uint64_t offset;
};

// Header of the fence that ends a Write batch. The payload is
// `num_put_records` PutRecords (the writes of a put batch, for the observer).
struct FenceHeader {
  uint32_t magic;
  uint32_t num_messages;  // data active messages in the batch
  uint64_t sender_id;
  uint64_t batch_seq;
  uint32_t num_put_records;
  uint32_t reserved;
};

struct PutRecord {
  uint32_t region_id;
  uint32_t reserved;
  uint64_t offset;
  uint64_t bytes;
};

// The receiver's answer to a fence; the payload is an error message.
struct AckHeader {
  uint32_t magic;
  int32_t code;  // absl::StatusCode
  uint64_t sender_id;
  uint64_t batch_seq;
};

// Inbound batches whose fence never arrives (the sender timed out or died)
// are forgotten after this long.
constexpr absl::Duration kInboundBatchTtl = absl::Seconds(60);
// How often the progress thread wakes up with nothing to do (housekeeping).
constexpr absl::Duration kHousekeepingPeriod = absl::Seconds(1);
// How long a caller waits past its deadline for the progress thread to have
// cancelled its write, before it reports that the thread is stuck.
constexpr absl::Duration kCancelGrace = absl::Seconds(5);
// Destruction first lets the worker run until it has been idle this long.
constexpr absl::Duration kDrainQuietPeriod = absl::Milliseconds(20);
// How long destruction spends closing connections gracefully.
constexpr absl::Duration kGracefulCloseTimeout = absl::Seconds(1);

// ---------------------------------------------------------------------------
// ucs_status_t -> absl::Status, the only place UCX errors are translated.

absl::Status FromUcs(ucs_status_t status, absl::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string message =
      absl::StrCat(what, ": ", ucs_status_string(status), " (ucs ", static_cast<int>(status), ")");
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
    case UCS_ERR_OUT_OF_RANGE:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(message);
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
      return absl::UnimplementedError(message);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(message);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(message);
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_BUSY:
    case UCS_ERR_SOME_CONNECTS_FAILED:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

bool IsSharedMemoryTransport(absl::string_view tl) {
  return tl == "sysv" || tl == "posix" || tl == "xpmem" || tl == "knem" || tl == "cma" || tl == "self";
}

bool IsRdmaTransport(absl::string_view tl) {
  return absl::StartsWith(tl, "rc") || absl::StartsWith(tl, "dc");
}

// Runs a UCX print function into a string.
template <typename PrintFn>
std::string CaptureUcxPrint(PrintFn print) {
  char* buffer = nullptr;
  size_t size = 0;
  FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) return "";
  print(stream);
  std::fclose(stream);
  std::string out(buffer, size);
  std::free(buffer);
  return out;
}

// The transports of an endpoint's lanes, in lane order, from
// ucp_ep_print_info (UCX 1.13 has no ucp_ep_query for transports). Lines
// look like "#   lane[0]:  3:sysv/memory.0 md[2]  -> md[2]/sysv ...".
std::vector<std::string> EndpointTransports(ucp_ep_h ep) {
  std::string info = CaptureUcxPrint([ep](FILE* f) { ucp_ep_print_info(ep, f); });
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    size_t lane = line.find("lane[");
    if (lane == absl::string_view::npos) continue;
    size_t colon = line.find("]:", lane);
    if (colon == absl::string_view::npos) continue;
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(colon + 2));
    size_t index_end = rest.find(':');
    size_t slash = rest.find('/');
    if (index_end == absl::string_view::npos || slash == absl::string_view::npos || slash < index_end) {
      continue;
    }
    std::string tl(rest.substr(index_end + 1, slash - index_end - 1));
    if (std::find(out.begin(), out.end(), tl) == out.end()) out.push_back(std::move(tl));
  }
  return out;
}

// Whether the context has any shared-memory transport among its resources
// ("#  resource 3  :  md 2  dev 3  flags -- sysv/memory").
bool ContextHasSharedMemory(ucp_context_h context) {
  std::string info = CaptureUcxPrint([context](FILE* f) { ucp_context_print_info(context, f); });
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    if (line.find("resource") == absl::string_view::npos) continue;
    size_t flags = line.find("-- ");
    if (flags == absl::string_view::npos) continue;
    absl::string_view res = line.substr(flags + 3);
    absl::string_view tl = res.substr(0, res.find('/'));
    if (IsSharedMemoryTransport(tl) && tl != "self") return true;
  }
  return false;
}

uint64_t Fnv1a(absl::string_view bytes, uint64_t h = 0xcbf29ce484222325ULL) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Identifies this host (kernel boot): equal ids mean shared memory may work.
uint64_t HostId() {
  std::string boot_id;
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::getline(in, boot_id);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return Fnv1a(host, Fnv1a(boot_id));
}

uint64_t RandomId() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
}

std::string PeerLabel(const RemoteRegion& remote) {
  if (!remote.peer_name.empty()) return remote.peer_name;
  return absl::StrFormat("worker#%016x", Fnv1a(remote.worker_address));
}

int PollTimeoutMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1))),
                                            absl::ToInt64Milliseconds(kHousekeepingPeriod)));
}

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

class TransferEngine::Impl {
 public:
  explicit Impl(const TransferOptions& options) : options_(options) {}
  ~Impl() { Stop(); }

  // Starts the progress thread, which creates every UCX object, and waits
  // for it to be ready.
  absl::Status Start();
  // Asks the progress thread to tear down and joins it. Idempotent.
  void Stop();

  const std::string& address() const { return address_; }

  // Runs `fn` on the progress thread and returns its result, waiting at most
  // until `deadline`. Runs inline when called on the progress thread.
  template <typename T>
  absl::StatusOr<T> RunSync(absl::AnyInvocable<absl::StatusOr<T>()> fn, absl::Time deadline);
  absl::Status RunSyncStatus(absl::AnyInvocable<absl::Status()> fn, absl::Time deadline);

  absl::Status Write(const RemoteRegion& remote, absl::Span<const WriteRequest> writes, absl::Time deadline,
                     WriteOp op);

  // Progress-thread bodies of the public methods.
  absl::StatusOr<RegisteredRegion> DoRegister(void* base, size_t bytes, bool allocate);
  absl::Status DoUnregister(uint32_t region_id);
  absl::StatusOr<WriteOp> DoChooseOp(const RemoteRegion& remote);
  absl::StatusOr<std::string> DoDataTransports(const RemoteRegion& remote);
  void DoSetObserver(WriteObserver observer) { observer_ = std::move(observer); }

  TransferStats stats() const {
    absl::MutexLock lock(&stats_mu_);
    return stats_;
  }

  bool OnProgressThread() const { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  struct Peer;

  // One Write call, from submission until it is finished.
  struct WriteState {
    // Set before submission, then read-only.
    RemoteRegion remote;
    std::string label;
    std::vector<WriteRequest> writes;
    absl::Time deadline;
    WriteOp requested = WriteOp::kAuto;
    uint64_t total_bytes = 0;
    // Progress thread only.
    Impl* impl = nullptr;
    WriteOp op = WriteOp::kAuto;
    uint64_t seq = 0;
    Peer* peer = nullptr;
    absl::flat_hash_set<void*> requests;  // UCX requests in flight
    void* flush_request = nullptr;
    bool acked = false;
    bool finished = false;
    std::vector<DataHeader> headers;  // live until the sends complete
    std::vector<PutRecord> records;
    FenceHeader fence{};
    absl::Status status;
    // Written by the progress thread before done.Notify().
    absl::Notification done;
  };

  // A connection to one peer engine.
  struct Peer {
    Impl* impl = nullptr;
    std::string address;  // the peer's worker_address()
    std::string label;
    ucp_ep_h ctl_ep = nullptr;   // UCP_ERR_HANDLING_MODE_PEER; watches liveness
    ucp_ep_h data_ep = nullptr;  // == ctl_ep unless a shared-memory endpoint
    bool data_is_shm = false;
    bool data_has_rdma = false;
    std::string transports;
    absl::flat_hash_map<std::string, ucp_rkey_h> rkeys;  // by packed rkey
    absl::flat_hash_set<WriteState*> ops;
    bool failed = false;
    ucs_status_t fail_status = UCS_OK;
  };

  struct Region {
    uint32_t id = 0;
    uint64_t base = 0;
    size_t bytes = 0;
    ucp_mem_h memh = nullptr;
    bool allocated = false;
    int inflight = 0;  // rendezvous receives landing in it
  };

  using BatchKey = std::pair<uint64_t, uint64_t>;  // (sender id, batch seq)

  // What the receiver knows about one inbound batch.
  struct InboundBatch {
    static constexpr uint32_t kUnknown = UINT32_MAX;
    uint32_t expected = kUnknown;  // from the fence
    uint32_t landed = 0;           // data messages placed (or rejected)
    absl::Status status;           // the first rejection
    absl::Time touched;
  };

  // A rendezvous receive in flight.
  struct RndvRecv {
    Impl* impl;
    BatchKey key;
    uint32_t region_id;
    uint64_t offset;
    size_t bytes;
    ucp_ep_h reply_ep;
  };

  // An acknowledgement being sent.
  struct AckMessage {
    Impl* impl;
    AckHeader header;
    std::string message;
  };

  void ThreadMain();
  absl::Status Setup();
  void Loop();
  void Teardown();
  void RunTasks();
  bool HasTasks() {
    absl::MutexLock lock(&mu_);
    return !tasks_.empty();
  }
  absl::Status Submit(absl::AnyInvocable<void()> task);

  // Sender side.
  void StartWrite(std::shared_ptr<WriteState> state);
  absl::StatusOr<Peer*> GetOrConnect(const RemoteRegion& remote);
  absl::StatusOr<ucp_rkey_h> GetRkey(Peer* peer, const std::string& packed);
  WriteOp Resolve(Peer* peer, ucp_rkey_h rkey, uint64_t base) const;
  void IssuePuts(WriteState* s, ucp_rkey_h rkey);
  void IssueActiveMessages(WriteState* s);
  void SendFence(WriteState* s);
  void Track(WriteState* s, ucs_status_ptr_t ptr, absl::string_view what, bool is_flush = false);
  void OnRequestDone(WriteState* s, void* request, ucs_status_t status);
  void Fail(WriteState* s, absl::Status status);
  // The owning reference of an unfinished write: held across calls that may
  // finish it (after which the caller may free it).
  std::shared_ptr<WriteState> Hold(WriteState* s) {
    auto it = writes_.find(s->seq);
    return it == writes_.end() ? nullptr : it->second;
  }
  void MaybeFinish(WriteState* s);
  void ExpireWrites(absl::Time now);
  void HandleFailedPeers();
  void DropPeer(Peer* peer, const absl::Status& status);
  void CloseEndpoint(ucp_ep_h ep, bool force);
  // Frees finished close/flush requests.
  void ReapCloseRequests();
  // Progresses the worker until every close/flush request is done or `until`.
  void WaitForCloseRequests(absl::Time until);
  // Progresses the worker until nothing has happened for kDrainQuietPeriod
  // (connection setup in flight finishes) or `until`.
  void DrainUntilQuiet(absl::Time until);
  absl::Time NextDeadline() const;
  absl::Status PeerError(const Peer& peer, ucs_status_t status, absl::string_view what) const;

  // Receiver side.
  ucs_status_t OnData(const void* header, size_t header_length, void* data, size_t length,
                      const ucp_am_recv_param_t* param);
  ucs_status_t OnFence(const void* header, size_t header_length, void* data, size_t length,
                       const ucp_am_recv_param_t* param);
  ucs_status_t OnAck(const void* header, size_t header_length, void* data, size_t length,
                     const ucp_am_recv_param_t* param);
  void OnRndvDone(RndvRecv* recv, ucs_status_t status);
  void Landed(const BatchKey& key, uint32_t region_id, uint64_t offset, size_t bytes,
              const absl::Status& status, ucp_ep_h reply_ep);
  void MaybeAck(const BatchKey& key, ucp_ep_h reply_ep);
  void SendAck(ucp_ep_h reply_ep, const BatchKey& key, const absl::Status& status);
  void ExpireInboundBatches(absl::Time now);
  absl::StatusOr<Region*> FindRegionRange(uint32_t region_id, uint64_t offset, size_t bytes);

  void AddStats(absl::FunctionRef<void(TransferStats&)> fn) {
    absl::MutexLock lock(&stats_mu_);
    fn(stats_);
  }

  static void SendCallback(void* request, ucs_status_t status, void* user_data);
  static void FreeRequestCallback(void* request, ucs_status_t status, void* user_data);
  static void AckSentCallback(void* request, ucs_status_t status, void* user_data);
  static void RndvCallback(void* request, ucs_status_t status, size_t length, void* user_data);
  static void ErrorCallback(void* arg, ucp_ep_h ep, ucs_status_t status);

  const TransferOptions options_;

  // Immutable after Start() returns OK.
  std::thread thread_;
  std::string address_;
  ucp_worker_h worker_ = nullptr;  // set once under mu_ in Setup(), then read-only
  uint64_t sender_id_ = 0;
  uint64_t host_id_ = 0;

  absl::Notification setup_done_;
  absl::Status setup_status_;  // written before setup_done_

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  // Set (under mu_) before the worker is destroyed: nobody signals it after.
  bool torn_down_ ABSL_GUARDED_BY(mu_) = false;

  mutable absl::Mutex stats_mu_;
  TransferStats stats_ ABSL_GUARDED_BY(stats_mu_);

  // Progress thread only from here on.
  ucp_context_h context_ = nullptr;
  int efd_ = -1;
  bool local_has_shm_ = false;
  WriteObserver observer_;
  uint32_t next_region_id_ = 1;
  uint64_t next_seq_ = 1;
  absl::flat_hash_map<uint32_t, Region> regions_;
  absl::flat_hash_map<std::string, std::unique_ptr<Peer>> peers_;
  // Dropped peers, kept for a housekeeping period in case UCX still names
  // one in a callback.
  std::vector<std::unique_ptr<Peer>> retired_peers_;
  std::vector<std::unique_ptr<Peer>> retired_peers_old_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<WriteState>> writes_;  // by seq
  absl::flat_hash_map<BatchKey, InboundBatch> inbound_;
  absl::flat_hash_set<RndvRecv*> rndv_recvs_;
  absl::flat_hash_set<AckMessage*> acks_in_flight_;
  std::vector<void*> close_requests_;
  absl::Time next_housekeeping_ = absl::InfinitePast();
};

// ---------------------------------------------------------------------------
// Thread and task plumbing.

absl::Status TransferEngine::Impl::Start() {
  thread_ = std::thread([this] { ThreadMain(); });
  if (!setup_done_.WaitForNotificationWithTimeout(options_.default_timeout + absl::Seconds(5))) {
    // ucp_init does not take this long; the thread is joined in Stop().
    return absl::DeadlineExceededError(
        absl::StrCat("transfer engine '", options_.name, "': UCX setup did not finish"));
  }
  return setup_status_;
}

void TransferEngine::Impl::Stop() {
  if (!thread_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;
    accepting_ = false;
    if (worker_ != nullptr && !torn_down_) ucp_worker_signal(worker_);
  }
  thread_.join();
}

void TransferEngine::Impl::ThreadMain() {
  absl::Status status = Setup();
  setup_status_ = status;
  if (!status.ok()) {
    {
      absl::MutexLock lock(&mu_);
      accepting_ = false;
    }
    setup_done_.Notify();
    Teardown();
    return;
  }
  setup_done_.Notify();
  Loop();
  Teardown();
}

absl::Status TransferEngine::Impl::Submit(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (!accepting_) {
    return absl::FailedPreconditionError(
        absl::StrCat("transfer engine '", options_.name, "' is shutting down"));
  }
  tasks_.push_back(std::move(task));
  // Thread safe in every UCX thread mode; under mu_ so that Teardown cannot
  // destroy the worker in between.
  ucp_worker_signal(worker_);
  return absl::OkStatus();
}

void TransferEngine::Impl::RunTasks() {
  std::deque<absl::AnyInvocable<void()>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
  }
  for (auto& task : tasks) task();
}

template <typename T>
absl::StatusOr<T> TransferEngine::Impl::RunSync(absl::AnyInvocable<absl::StatusOr<T>()> fn,
                                                absl::Time deadline) {
  if (OnProgressThread()) return fn();
  struct Shared {
    absl::Notification done;
    absl::StatusOr<T> result = absl::UnknownError("not run");
  };
  auto shared = std::make_shared<Shared>();
  TANDEM_RETURN_IF_ERROR(Submit([shared, fn = std::move(fn)]() mutable {
    shared->result = fn();
    shared->done.Notify();
  }));
  if (!shared->done.WaitForNotificationWithDeadline(deadline)) {
    return absl::DeadlineExceededError(
        absl::StrCat("transfer engine '", options_.name, "': progress thread busy"));
  }
  return std::move(shared->result);
}

absl::Status TransferEngine::Impl::RunSyncStatus(absl::AnyInvocable<absl::Status()> fn, absl::Time deadline) {
  absl::StatusOr<bool> result = RunSync<bool>(
      [fn = std::move(fn)]() mutable -> absl::StatusOr<bool> {
        TANDEM_RETURN_IF_ERROR(fn());
        return true;
      },
      deadline);
  return result.status();
}

absl::Status TransferEngine::Impl::Setup() {
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

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_NAME;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  wparams.name = options_.name.c_str();
  ucp_worker_h worker = nullptr;
  st = ucp_worker_create(context_, &wparams, &worker);
  if (st != UCS_OK) return FromUcs(st, "ucp_worker_create");
  {
    absl::MutexLock lock(&mu_);  // Stop() may read it if Start() gave up waiting
    worker_ = worker;
  }

  struct Handler {
    unsigned id;
    ucp_am_recv_callback_t cb;
  };
  const Handler handlers[] = {
      {kAmData, [](void* arg, const void* h, size_t hl, void* d, size_t l,
                   const ucp_am_recv_param_t* p) { return static_cast<Impl*>(arg)->OnData(h, hl, d, l, p); }},
      {kAmFence,
       [](void* arg, const void* h, size_t hl, void* d, size_t l, const ucp_am_recv_param_t* p) {
         return static_cast<Impl*>(arg)->OnFence(h, hl, d, l, p);
       }},
      {kAmAck, [](void* arg, const void* h, size_t hl, void* d, size_t l,
                  const ucp_am_recv_param_t* p) { return static_cast<Impl*>(arg)->OnAck(h, hl, d, l, p); }},
  };
  for (const Handler& h : handlers) {
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = h.id;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = h.cb;
    hp.arg = this;
    TANDEM_RETURN_IF_ERROR(
        FromUcs(ucp_worker_set_am_recv_handler(worker_, &hp), "ucp_worker_set_am_recv_handler"));
  }

  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_worker_get_efd(worker_, &efd_), "ucp_worker_get_efd"));

  ucp_address_t* ucx_address = nullptr;
  size_t ucx_address_length = 0;
  TANDEM_RETURN_IF_ERROR(
      FromUcs(ucp_worker_get_address(worker_, &ucx_address, &ucx_address_length), "ucp_worker_get_address"));
  host_id_ = HostId();
  sender_id_ = RandomId();
  AddressHeader header{kAddressMagic, kAddressVersion, host_id_};
  address_.assign(reinterpret_cast<const char*>(&header), sizeof(header));
  address_.append(reinterpret_cast<const char*>(ucx_address), ucx_address_length);
  ucp_worker_release_address(worker_, ucx_address);

  local_has_shm_ = ContextHasSharedMemory(context_);
  return absl::OkStatus();
}

absl::Time TransferEngine::Impl::NextDeadline() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [seq, state] : writes_) next = std::min(next, state->deadline);
  return next;
}

void TransferEngine::Impl::Loop() {
  for (;;) {
    RunTasks();
    while (ucp_worker_progress(worker_) != 0) {
    }
    HandleFailedPeers();
    absl::Time now = absl::Now();
    ExpireWrites(now);
    if (now >= next_housekeeping_) {
      // Two generations: a peer is freed one to two periods after its drop.
      retired_peers_old_.clear();
      retired_peers_old_.swap(retired_peers_);
      ExpireInboundBatches(now);
      ReapCloseRequests();
      next_housekeeping_ = now + kHousekeepingPeriod;
    }
    {
      absl::MutexLock lock(&mu_);
      if (stop_requested_) return;
    }
    ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (HasTasks()) continue;
    int timeout_ms = st == UCS_OK ? PollTimeoutMs(std::min(NextDeadline(), next_housekeeping_) - absl::Now())
                                  : 1;  // arm failed (never seen): poll gently
    pollfd pfd{efd_, POLLIN, 0};
    poll(&pfd, 1, timeout_ms);
  }
}

void TransferEngine::Impl::ReapCloseRequests() {
  close_requests_.erase(std::remove_if(close_requests_.begin(), close_requests_.end(),
                                       [](void* r) {
                                         if (ucp_request_check_status(r) == UCS_INPROGRESS) {
                                           return false;
                                         }
                                         ucp_request_free(r);
                                         return true;
                                       }),
                        close_requests_.end());
}

void TransferEngine::Impl::WaitForCloseRequests(absl::Time until) {
  for (;;) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    ReapCloseRequests();
    if (close_requests_.empty() || absl::Now() >= until) return;
    if (ucp_worker_arm(worker_) == UCS_OK) {
      pollfd pfd{efd_, POLLIN, 0};
      poll(&pfd, 1, PollTimeoutMs(until - absl::Now()));
    }
  }
}

void TransferEngine::Impl::DrainUntilQuiet(absl::Time until) {
  absl::Time last_activity = absl::Now();
  for (;;) {
    int events = 0;
    while (ucp_worker_progress(worker_) != 0) ++events;
    absl::Time now = absl::Now();
    if (events > 0) last_activity = now;
    absl::Time quiet_at = last_activity + kDrainQuietPeriod;
    if (now >= quiet_at || now >= until) return;
    if (ucp_worker_arm(worker_) == UCS_OK) {
      pollfd pfd{efd_, POLLIN, 0};
      if (poll(&pfd, 1, PollTimeoutMs(std::min(quiet_at, until) - now)) > 0) last_activity = now;
    }
  }
}

void TransferEngine::Impl::CloseEndpoint(ucp_ep_h ep, bool force) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &param);
  if (req != nullptr && !UCS_PTR_IS_ERR(req)) close_requests_.push_back(req);
}

void TransferEngine::Impl::Teardown() {
  // Stop taking work, and start what was submitted before (so that no
  // caller waits for a task that never runs); it is cancelled below.
  {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
  }
  if (worker_ != nullptr) RunTasks();
  if (worker_ != nullptr) HandleFailedPeers();
  // Writes still in flight (the destructor's REQUIRES forbids them, but a
  // caller that broke the contract must not hang): fail them.
  std::vector<std::shared_ptr<WriteState>> left;
  std::vector<Peer*> peers;
  for (auto& [address, peer] : peers_) peers.push_back(peer.get());
  if (worker_ != nullptr) {
    for (Peer* peer : peers) {
      if (!peer->ops.empty()) {
        DropPeer(peer, absl::CancelledError(absl::StrCat("transfer engine '", options_.name, "' destroyed")));
      }
    }
    // Let in-flight connection setup finish first, including endpoints that
    // peers' connections created here: UCX 1.13 asserts when
    // ucp_worker_destroy purges a wireup reply still pending on a TCP
    // endpoint (fixed upstream in openucx/ucx#8175). Bounded in time.
    {
      ucp_request_param_t param{};
      ucs_status_ptr_t req = ucp_worker_flush_nbx(worker_, &param);
      if (req != nullptr && !UCS_PTR_IS_ERR(req)) close_requests_.push_back(req);
    }
    WaitForCloseRequests(absl::Now() + kGracefulCloseTimeout);
    DrainUntilQuiet(absl::Now() + kGracefulCloseTimeout);
    // Close the rest gracefully, bounded in time.
    for (auto& [address, peer] : peers_) {
      for (auto& [packed, rkey] : peer->rkeys) ucp_rkey_destroy(rkey);
      peer->rkeys.clear();
      if (peer->data_ep != peer->ctl_ep) CloseEndpoint(peer->data_ep, /*force=*/false);
      CloseEndpoint(peer->ctl_ep, /*force=*/false);
    }
    WaitForCloseRequests(absl::Now() + kGracefulCloseTimeout);
    for (void* r : close_requests_) ucp_request_free(r);  // released with the worker
    close_requests_.clear();
    // Anything else still waiting (a write whose peer never answered a
    // graceful close) is finished now.
    for (auto& [seq, s] : writes_) left.push_back(s);
    for (auto& s : left) {
      if (s->status.ok()) s->status = absl::CancelledError("transfer engine destroyed");
      for (void* r : s->requests) ucp_request_free(r);  // no callback after this
      s->requests.clear();
      MaybeFinish(s.get());
    }
  }
  {
    absl::MutexLock lock(&mu_);
    torn_down_ = true;
  }
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  // Peers (error-callback arguments) and regions outlive the worker.
  peers_.clear();
  retired_peers_.clear();
  retired_peers_old_.clear();
  for (auto& [id, region] : regions_) {
    if (region.memh != nullptr) ucp_mem_unmap(context_, region.memh);
  }
  regions_.clear();
  inbound_.clear();
  for (RndvRecv* r : rndv_recvs_) delete r;
  rndv_recvs_.clear();
  for (AckMessage* a : acks_in_flight_) delete a;
  acks_in_flight_.clear();
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
  // worker_ keeps its (now dangling) value; torn_down_ keeps it unused.
}

// ---------------------------------------------------------------------------
// Regions.

absl::StatusOr<RegisteredRegion> TransferEngine::Impl::DoRegister(void* base, size_t bytes, bool allocate) {
  ucp_mem_map_params_t mp{};
  mp.field_mask =
      UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  mp.address = allocate ? nullptr : base;
  mp.length = bytes;
  mp.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
  ucp_mem_h memh = nullptr;
  TANDEM_RETURN_IF_ERROR(
      FromUcs(ucp_mem_map(context_, &mp, &memh), absl::StrCat("ucp_mem_map of ", bytes, " bytes")));
  absl::Cleanup unmap = [this, memh] { ucp_mem_unmap(context_, memh); };

  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_mem_query(memh, &attr), "ucp_mem_query"));

  void* rkey_buffer = nullptr;
  size_t rkey_size = 0;
  TANDEM_RETURN_IF_ERROR(FromUcs(ucp_rkey_pack(context_, memh, &rkey_buffer, &rkey_size), "ucp_rkey_pack"));
  std::string packed(static_cast<const char*>(rkey_buffer), rkey_size);
  ucp_rkey_buffer_release(rkey_buffer);

  Region region;
  region.id = next_region_id_++;
  region.base = reinterpret_cast<uint64_t>(attr.address);
  region.bytes = bytes;
  region.memh = memh;
  region.allocated = allocate;
  std::move(unmap).Cancel();
  regions_.emplace(region.id, region);

  RegisteredRegion out;
  out.region_id = region.id;
  out.base_address = region.base;
  out.bytes = bytes;
  out.packed_rkey = std::move(packed);
  return out;
}

absl::Status TransferEngine::Impl::DoUnregister(uint32_t region_id) {
  auto it = regions_.find(region_id);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("no region ", region_id));
  }
  if (it->second.inflight > 0) {
    return absl::FailedPreconditionError(absl::StrCat("region ", region_id, ": ", it->second.inflight,
                                                      " active-message writes still landing"));
  }
  ucs_status_t st = ucp_mem_unmap(context_, it->second.memh);
  regions_.erase(it);
  return FromUcs(st, absl::StrCat("ucp_mem_unmap of region ", region_id));
}

absl::StatusOr<TransferEngine::Impl::Region*> TransferEngine::Impl::FindRegionRange(uint32_t region_id,
                                                                                    uint64_t offset,
                                                                                    size_t bytes) {
  auto it = regions_.find(region_id);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("engine '", options_.name, "' has no region ", region_id));
  }
  Region& r = it->second;
  if (offset > r.bytes || bytes > r.bytes - offset) {
    return absl::OutOfRangeError(absl::StrCat("engine '", options_.name, "': [", offset, ", ", offset + bytes,
                                              ") outside region ", region_id, " of ", r.bytes, " bytes"));
  }
  return &r;
}

// ---------------------------------------------------------------------------
// Connections.

absl::Status TransferEngine::Impl::PeerError(const Peer& peer, ucs_status_t status,
                                             absl::string_view what) const {
  return absl::UnavailableError(
      absl::StrCat("peer ", peer.label, ": ", what, ": ", ucs_status_string(status)));
}

void TransferEngine::Impl::ErrorCallback(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* peer = static_cast<Peer*>(arg);
  if (peer->failed) return;
  peer->failed = true;
  peer->fail_status = status;
  // Handled after ucp_worker_progress returns (HandleFailedPeers): closing an
  // endpoint from inside its own error callback is not allowed.
}

void TransferEngine::Impl::HandleFailedPeers() {
  std::vector<Peer*> failed;
  for (auto& [address, peer] : peers_) {
    if (peer->failed) failed.push_back(peer.get());
  }
  for (Peer* peer : failed) {
    DropPeer(peer, PeerError(*peer, peer->fail_status, "connection failed"));
  }
}

void TransferEngine::Impl::DropPeer(Peer* peer, const absl::Status& status) {
  auto it = peers_.find(peer->address);
  if (it == peers_.end() || it->second.get() != peer) return;  // already dropped
  std::unique_ptr<Peer> owned = std::move(it->second);
  peers_.erase(it);

  std::vector<std::shared_ptr<WriteState>> ops;
  for (WriteState* s : peer->ops) ops.push_back(Hold(s));
  for (auto& s : ops) {
    if (s->status.ok()) s->status = status;
    std::vector<void*> requests(s->requests.begin(), s->requests.end());
    for (void* r : requests) {
      if (s->requests.contains(r)) ucp_request_cancel(worker_, r);
    }
  }
  // Force: every request still outstanding completes with UCS_ERR_CANCELED,
  // so UCX no longer reads the callers' buffers once this returns.
  if (peer->data_ep != peer->ctl_ep) CloseEndpoint(peer->data_ep, /*force=*/true);
  CloseEndpoint(peer->ctl_ep, /*force=*/true);
  for (auto& [packed, rkey] : peer->rkeys) ucp_rkey_destroy(rkey);
  peer->rkeys.clear();
  for (auto& s : ops) {
    s->peer = nullptr;
    // A forced close completes the requests of an endpoint with error
    // handling. On the shared-memory endpoint (no error handling) UCX 1.13
    // leaves a rendezvous send to a dead peer pending forever: release it
    // (ucp_request_free: no callback will follow). Its endpoint is gone, so
    // nothing reads the caller's buffer for it any more.
    for (void* r : s->requests) ucp_request_free(r);
    s->requests.clear();
    s->flush_request = nullptr;
    MaybeFinish(s.get());
  }
  peer->ops.clear();
  AddStats([](TransferStats& st) { ++st.connections_dropped; });
  retired_peers_.push_back(std::move(owned));
}

absl::StatusOr<TransferEngine::Impl::Peer*> TransferEngine::Impl::GetOrConnect(const RemoteRegion& remote) {
  auto it = peers_.find(remote.worker_address);
  if (it != peers_.end()) {
    Peer* peer = it->second.get();
    if (!peer->failed) return peer;
    DropPeer(peer, PeerError(*peer, peer->fail_status, "connection failed"));
  }

  const std::string& address = remote.worker_address;
  AddressHeader header;
  if (address.size() <= sizeof(header)) {
    return absl::InvalidArgumentError("worker address too short");
  }
  std::memcpy(&header, address.data(), sizeof(header));
  if (header.magic != kAddressMagic || header.version != kAddressVersion) {
    return absl::InvalidArgumentError("not a Tandem transfer worker address (or another version)");
  }
  const auto* ucx_address = reinterpret_cast<const ucp_address_t*>(address.data() + sizeof(header));

  auto peer = std::make_unique<Peer>();
  peer->impl = this;
  peer->address = address;
  peer->label = PeerLabel(remote);

  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                         UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep_params.address = ucx_address;
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep_params.err_handler.cb = &Impl::ErrorCallback;
  ep_params.err_handler.arg = peer.get();
  ucs_status_t st = ucp_ep_create(worker_, &ep_params, &peer->ctl_ep);
  if (st != UCS_OK) {
    return absl::UnavailableError(
        absl::StrCat("peer ", peer->label, ": ucp_ep_create: ", ucs_status_string(st)));
  }
  // Connect now (a flush forces the wireup) so that the control endpoint
  // watches the peer even while data goes over shared memory.
  {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
    param.cb.send = &Impl::FreeRequestCallback;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(peer->ctl_ep, &param);
    (void)req;  // freed by its callback; UCS_PTR_IS_ERR shows up as an ep error
  }
  peer->data_ep = peer->ctl_ep;

  if (options_.shared_memory_fast_path && local_has_shm_ && header.host_id == host_id_) {
    ucp_ep_params_t shm_params{};
    shm_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    shm_params.address = ucx_address;
    shm_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    ucp_ep_h shm_ep = nullptr;
    if (ucp_ep_create(worker_, &shm_params, &shm_ep) == UCS_OK) {
      std::vector<std::string> tls = EndpointTransports(shm_ep);
      bool shm = std::any_of(tls.begin(), tls.end(),
                             [](const std::string& tl) { return IsSharedMemoryTransport(tl); });
      if (shm) {
        peer->data_ep = shm_ep;
      } else {
        // The peer has no shared memory with us after all (its UCX_TLS, or
        // another IPC namespace): not worth a second connection.
        CloseEndpoint(shm_ep, /*force=*/false);
      }
    }
  }
  std::vector<std::string> tls = EndpointTransports(peer->data_ep);
  peer->transports = absl::StrJoin(tls, ",");
  peer->data_is_shm = peer->data_ep != peer->ctl_ep;
  peer->data_has_rdma =
      std::any_of(tls.begin(), tls.end(), [](const std::string& tl) { return IsRdmaTransport(tl); });

  Peer* raw = peer.get();
  peers_.emplace(address, std::move(peer));
  return raw;
}

absl::StatusOr<ucp_rkey_h> TransferEngine::Impl::GetRkey(Peer* peer, const std::string& packed) {
  auto it = peer->rkeys.find(packed);
  if (it != peer->rkeys.end()) return it->second;
  ucp_rkey_h rkey = nullptr;
  ucs_status_t st = ucp_ep_rkey_unpack(peer->data_ep, packed.data(), &rkey);
  if (st != UCS_OK) {
    absl::Status s = FromUcs(st, absl::StrCat("peer ", peer->label, ": ucp_ep_rkey_unpack"));
    return absl::InvalidArgumentError(s.message());
  }
  peer->rkeys.emplace(packed, rkey);
  return rkey;
}

WriteOp TransferEngine::Impl::Resolve(Peer* peer, ucp_rkey_h rkey, uint64_t base) const {
  if (peer->data_is_shm) {
    void* mapped = nullptr;
    // A UCX-allocated segment is mapped here: put is a single memcpy. Other
    // memory would get software-emulated puts; AM rendezvous (CMA) is better.
    return ucp_rkey_ptr(rkey, base, &mapped) == UCS_OK ? WriteOp::kPut : WriteOp::kActiveMessage;
  }
  return peer->data_has_rdma ? WriteOp::kPut : WriteOp::kActiveMessage;
}

absl::StatusOr<WriteOp> TransferEngine::Impl::DoChooseOp(const RemoteRegion& remote) {
  TANDEM_ASSIGN_OR_RETURN(Peer * peer, GetOrConnect(remote));
  TANDEM_ASSIGN_OR_RETURN(ucp_rkey_h rkey, GetRkey(peer, remote.packed_rkey));
  return Resolve(peer, rkey, remote.base_address);
}

absl::StatusOr<std::string> TransferEngine::Impl::DoDataTransports(const RemoteRegion& remote) {
  TANDEM_ASSIGN_OR_RETURN(Peer * peer, GetOrConnect(remote));
  return peer->transports;
}

// ---------------------------------------------------------------------------
// Writes (sender side).

absl::Status TransferEngine::Impl::Write(const RemoteRegion& remote, absl::Span<const WriteRequest> writes,
                                         absl::Time deadline, WriteOp op) {
  if (OnProgressThread()) {
    return absl::FailedPreconditionError("Write called on the transfer progress thread");
  }
  if (remote.worker_address.empty()) return absl::InvalidArgumentError("empty worker address");
  if (remote.packed_rkey.empty()) return absl::InvalidArgumentError("empty remote key");
  auto state = std::make_shared<WriteState>();
  state->writes.reserve(writes.size());
  for (size_t i = 0; i < writes.size(); ++i) {
    const WriteRequest& w = writes[i];
    if (w.bytes == 0) continue;
    if (w.local == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("write ", i, ": null source"));
    }
    if (w.remote_offset > remote.bytes || w.bytes > remote.bytes - w.remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat("write ", i, ": [", w.remote_offset, ", ",
                                                     w.remote_offset + w.bytes, ") outside remote region ",
                                                     remote.region_id, " of ", remote.bytes, " bytes"));
    }
    state->writes.push_back(w);
    state->total_bytes += w.bytes;
  }
  if (state->writes.empty()) return absl::OkStatus();
  if (state->writes.size() >= InboundBatch::kUnknown) {
    return absl::InvalidArgumentError("too many writes in one call");
  }
  state->label = PeerLabel(remote);
  if (absl::Now() >= deadline) {
    AddStats([](TransferStats& st) {
      ++st.write_calls;
      ++st.failed_write_calls;
    });
    return absl::DeadlineExceededError(
        absl::StrCat("write to peer ", state->label, ": deadline already passed"));
  }
  state->remote = remote;
  state->deadline = deadline;
  state->requested = op;
  state->impl = this;

  TANDEM_RETURN_IF_ERROR(Submit([this, state] { StartWrite(state); }));
  // The progress thread finishes the write by its deadline (cancelling it if
  // needed); only then may the caller reuse its buffers, so wait for it.
  absl::Time wait_until = deadline + kCancelGrace;
  while (!state->done.WaitForNotificationWithDeadline(wait_until)) {
    std::fprintf(stderr,
                 "tandem transfer '%s': a write to %s is still not cancelled %s after its "
                 "deadline; the progress thread is blocked (observer or registration?)\n",
                 options_.name.c_str(), state->label.c_str(),
                 absl::FormatDuration(absl::Now() - deadline).c_str());
    wait_until = absl::Now() + kCancelGrace;
  }
  AddStats([&](TransferStats& st) {
    ++st.write_calls;
    if (state->status.ok()) {
      st.writes += state->writes.size();
      st.bytes_written += state->total_bytes;
      (state->op == WriteOp::kPut ? st.bytes_put : st.bytes_active_message) += state->total_bytes;
    } else {
      ++st.failed_write_calls;
    }
  });
  return state->status;
}

void TransferEngine::Impl::StartWrite(std::shared_ptr<WriteState> state) {
  WriteState* s = state.get();
  s->seq = next_seq_++;
  writes_.emplace(s->seq, state);
  if (absl::Now() >= s->deadline) {
    Fail(s, absl::DeadlineExceededError(
                absl::StrCat("write to peer ", s->label, ": deadline passed before it started")));
    return;
  }
  absl::StatusOr<Peer*> peer = GetOrConnect(s->remote);
  if (!peer.ok()) {
    Fail(s, peer.status());
    return;
  }
  s->peer = *peer;
  s->peer->ops.insert(s);
  ucp_rkey_h rkey = nullptr;
  WriteOp op = s->requested;
  if (op != WriteOp::kActiveMessage) {
    absl::StatusOr<ucp_rkey_h> r = GetRkey(s->peer, s->remote.packed_rkey);
    if (!r.ok()) {
      Fail(s, r.status());
      return;
    }
    rkey = *r;
    if (op == WriteOp::kAuto) op = Resolve(s->peer, rkey, s->remote.base_address);
  }
  s->op = op;
  if (op == WriteOp::kPut) {
    IssuePuts(s, rkey);
  } else {
    IssueActiveMessages(s);
  }
  MaybeFinish(s);
}

void TransferEngine::Impl::SendCallback(void* request, ucs_status_t status, void* user_data) {
  auto* s = static_cast<WriteState*>(user_data);
  s->impl->OnRequestDone(s, request, status);
}

void TransferEngine::Impl::FreeRequestCallback(void* request, ucs_status_t, void*) {
  ucp_request_free(request);
}

void TransferEngine::Impl::Track(WriteState* s, ucs_status_ptr_t ptr, absl::string_view what, bool is_flush) {
  if (ptr == nullptr) {  // completed in place
    if (is_flush) SendFence(s);
    return;
  }
  if (UCS_PTR_IS_ERR(ptr)) {
    ucs_status_t st = UCS_PTR_STATUS(ptr);
    Fail(s, s->peer != nullptr ? PeerError(*s->peer, st, what) : FromUcs(st, what));
    return;
  }
  s->requests.insert(ptr);
  if (is_flush) s->flush_request = ptr;
}

void TransferEngine::Impl::OnRequestDone(WriteState* s, void* request, ucs_status_t status) {
  // `s` is alive: a write with requests in flight is never finished.
  std::shared_ptr<WriteState> keep = Hold(s);
  s->requests.erase(request);
  bool was_flush = request == s->flush_request;
  if (was_flush) s->flush_request = nullptr;
  ucp_request_free(request);
  if (status != UCS_OK) {
    if (s->status.ok()) {
      s->status = s->peer != nullptr ? PeerError(*s->peer, status, "write") : FromUcs(status, "write");
    }
  } else if (was_flush && s->status.ok()) {
    SendFence(s);
  }
  MaybeFinish(s);
}

void TransferEngine::Impl::IssuePuts(WriteState* s, ucp_rkey_h rkey) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Impl::SendCallback;
  param.user_data = s;
  s->records.reserve(s->writes.size());
  for (const WriteRequest& w : s->writes) {
    Track(s,
          ucp_put_nbx(s->peer->data_ep, w.local, w.bytes, s->remote.base_address + w.remote_offset, rkey,
                      &param),
          "ucp_put_nbx");
    if (!s->status.ok()) return;
    s->records.push_back(PutRecord{s->remote.region_id, 0, w.remote_offset, w.bytes});
  }
  // Remote completion of every put, then the fence (sent from Track or from
  // the flush's callback).
  Track(s, ucp_ep_flush_nbx(s->peer->data_ep, &param), "ucp_ep_flush_nbx", /*is_flush=*/true);
}

void TransferEngine::Impl::IssueActiveMessages(WriteState* s) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Impl::SendCallback;
  param.user_data = s;
  param.flags = UCP_AM_SEND_FLAG_REPLY;  // the receiver answers on its reply endpoint
  s->headers.resize(s->writes.size());
  for (size_t i = 0; i < s->writes.size(); ++i) {
    const WriteRequest& w = s->writes[i];
    s->headers[i] = DataHeader{kWireMagic, s->remote.region_id, sender_id_, s->seq, w.remote_offset};
    Track(s,
          ucp_am_send_nbx(s->peer->data_ep, kAmData, &s->headers[i], sizeof(DataHeader), w.local, w.bytes,
                          &param),
          "ucp_am_send_nbx");
    if (!s->status.ok()) return;
  }
  // The receiver counts the messages, so the fence may overtake them.
  SendFence(s);
}

void TransferEngine::Impl::SendFence(WriteState* s) {
  if (s->peer == nullptr || !s->status.ok()) return;
  s->fence.magic = kWireMagic;
  s->fence.num_messages = s->op == WriteOp::kActiveMessage ? s->writes.size() : 0;
  s->fence.sender_id = sender_id_;
  s->fence.batch_seq = s->seq;
  s->fence.num_put_records = s->records.size();
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Impl::SendCallback;
  param.user_data = s;
  param.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  Track(s,
        ucp_am_send_nbx(s->peer->data_ep, kAmFence, &s->fence, sizeof(FenceHeader), s->records.data(),
                        s->records.size() * sizeof(PutRecord), &param),
        "fence ucp_am_send_nbx");
}

void TransferEngine::Impl::Fail(WriteState* s, absl::Status status) {
  if (s->status.ok()) s->status = std::move(status);
  MaybeFinish(s);
}

void TransferEngine::Impl::MaybeFinish(WriteState* s) {
  if (s->finished || !s->requests.empty()) return;
  if (s->status.ok() && !s->acked) return;
  s->finished = true;
  if (s->peer != nullptr) s->peer->ops.erase(s);
  s->peer = nullptr;
  auto it = writes_.find(s->seq);
  std::shared_ptr<WriteState> keep;
  if (it != writes_.end()) {
    keep = std::move(it->second);
    writes_.erase(it);
  }
  s->done.Notify();
}

void TransferEngine::Impl::ExpireWrites(absl::Time now) {
  std::vector<std::shared_ptr<WriteState>> expired;
  for (const auto& [seq, s] : writes_) {
    if (!s->finished && s->deadline <= now) expired.push_back(s);
  }
  for (auto& s : expired) {
    if (s->finished) continue;
    Fail(s.get(), absl::DeadlineExceededError(absl::StrCat("write of ", s->total_bytes, " bytes to peer ",
                                                           s->label, " (", WriteOpName(s->op),
                                                           ") not complete by its deadline")));
    if (s->finished) continue;
    if (s->peer != nullptr) {
      // Never leave UCX working on the caller's buffers: reset the connection.
      DropPeer(s->peer, absl::UnavailableError(absl::StrCat(
                            "peer ", s->label, ": connection reset because a write to it timed out")));
    }
  }
}

// ---------------------------------------------------------------------------
// Receiver side.

ucs_status_t TransferEngine::Impl::OnData(const void* header, size_t header_length, void* data, size_t length,
                                          const ucp_am_recv_param_t* param) {
  if (header_length != sizeof(DataHeader)) return UCS_OK;  // not ours: drop
  DataHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kWireMagic) return UCS_OK;
  BatchKey key{h.sender_id, h.batch_seq};
  ucp_ep_h reply_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr;
  InboundBatch& batch = inbound_[key];
  batch.touched = absl::Now();

  absl::StatusOr<Region*> region = FindRegionRange(h.region_id, h.offset, length);
  if (!region.ok()) {
    // Returning UCS_OK without receiving drops a rendezvous message; the
    // sender learns about it from the acknowledgement.
    Landed(key, h.region_id, h.offset, length, region.status(), reply_ep);
    return UCS_OK;
  }
  void* dst = reinterpret_cast<void*>((*region)->base + h.offset);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    std::memcpy(dst, data, length);
    Landed(key, h.region_id, h.offset, length, absl::OkStatus(), reply_ep);
    return UCS_OK;
  }
  auto* recv = new RndvRecv{this, key, h.region_id, h.offset, length, reply_ep};
  rndv_recvs_.insert(recv);
  ++(*region)->inflight;
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = &Impl::RndvCallback;
  rp.user_data = recv;
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(worker_, data, dst, length, &rp);
  if (req == nullptr) {
    OnRndvDone(recv, UCS_OK);
  } else if (UCS_PTR_IS_ERR(req)) {
    OnRndvDone(recv, UCS_PTR_STATUS(req));
  }
  return UCS_OK;
}

void TransferEngine::Impl::RndvCallback(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* recv = static_cast<RndvRecv*>(user_data);
  ucp_request_free(request);
  recv->impl->OnRndvDone(recv, status);
}

void TransferEngine::Impl::OnRndvDone(RndvRecv* recv, ucs_status_t status) {
  rndv_recvs_.erase(recv);
  auto it = regions_.find(recv->region_id);
  if (it != regions_.end()) --it->second.inflight;
  if (status == UCS_OK) {
    Landed(recv->key, recv->region_id, recv->offset, recv->bytes, absl::OkStatus(), recv->reply_ep);
  } else {
    // The sender failed or cancelled; its endpoint may be gone, so no reply.
    auto b = inbound_.find(recv->key);
    if (b != inbound_.end()) {
      ++b->second.landed;
      if (b->second.status.ok()) b->second.status = FromUcs(status, "rendezvous receive");
    }
  }
  delete recv;
}

void TransferEngine::Impl::Landed(const BatchKey& key, uint32_t region_id, uint64_t offset, size_t bytes,
                                  const absl::Status& status, ucp_ep_h reply_ep) {
  InboundBatch& batch = inbound_[key];
  batch.touched = absl::Now();
  ++batch.landed;
  if (!status.ok()) {
    if (batch.status.ok()) batch.status = status;
  } else {
    AddStats([bytes](TransferStats& st) { st.bytes_received += bytes; });
    if (observer_) observer_(region_id, offset, bytes);
  }
  MaybeAck(key, reply_ep);
}

ucs_status_t TransferEngine::Impl::OnFence(const void* header, size_t header_length, void* data,
                                           size_t length, const ucp_am_recv_param_t* param) {
  if (header_length != sizeof(FenceHeader)) return UCS_OK;
  FenceHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kWireMagic) return UCS_OK;
  BatchKey key{h.sender_id, h.batch_seq};
  ucp_ep_h reply_ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr;
  InboundBatch& batch = inbound_[key];
  batch.touched = absl::Now();
  batch.expected = h.num_messages;
  // Put records: the bytes are already in place (the sender flushed first).
  bool records_ok = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0 &&
                    length == static_cast<size_t>(h.num_put_records) * sizeof(PutRecord);
  if (!records_ok && h.num_put_records > 0) {
    if (batch.status.ok()) batch.status = absl::InternalError("malformed fence");
  } else {
    for (uint32_t i = 0; i < h.num_put_records; ++i) {
      PutRecord r;
      std::memcpy(&r, static_cast<const char*>(data) + i * sizeof(PutRecord), sizeof(r));
      absl::StatusOr<Region*> region = FindRegionRange(r.region_id, r.offset, r.bytes);
      if (!region.ok()) {
        if (batch.status.ok()) batch.status = region.status();
        continue;
      }
      if (observer_) observer_(r.region_id, r.offset, r.bytes);
    }
  }
  MaybeAck(key, reply_ep);
  return UCS_OK;
}

void TransferEngine::Impl::MaybeAck(const BatchKey& key, ucp_ep_h reply_ep) {
  auto it = inbound_.find(key);
  if (it == inbound_.end()) return;
  InboundBatch& batch = it->second;
  if (batch.expected == InboundBatch::kUnknown || batch.landed < batch.expected) return;
  absl::Status status = batch.status;
  inbound_.erase(it);
  if (reply_ep != nullptr) SendAck(reply_ep, key, status);
}

void TransferEngine::Impl::AckSentCallback(void* request, ucs_status_t, void* user_data) {
  auto* ack = static_cast<AckMessage*>(user_data);
  ack->impl->acks_in_flight_.erase(ack);
  delete ack;
  ucp_request_free(request);
}

void TransferEngine::Impl::SendAck(ucp_ep_h reply_ep, const BatchKey& key, const absl::Status& status) {
  auto* ack =
      new AckMessage{this, AckHeader{kWireMagic, static_cast<int32_t>(status.code()), key.first, key.second},
                     std::string(status.message())};
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Impl::AckSentCallback;
  param.user_data = ack;
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  ucs_status_ptr_t req = ucp_am_send_nbx(reply_ep, kAmAck, &ack->header, sizeof(AckHeader),
                                         ack->message.data(), ack->message.size(), &param);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) {
    delete ack;  // sent in place, or the sender is gone (it will time out)
    return;
  }
  acks_in_flight_.insert(ack);
}

ucs_status_t TransferEngine::Impl::OnAck(const void* header, size_t header_length, void* data, size_t length,
                                         const ucp_am_recv_param_t* param) {
  if (header_length != sizeof(AckHeader)) return UCS_OK;
  AckHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (h.magic != kWireMagic || h.sender_id != sender_id_) return UCS_OK;
  auto it = writes_.find(h.batch_seq);
  if (it == writes_.end()) return UCS_OK;  // timed out meanwhile
  std::shared_ptr<WriteState> keep = it->second;
  WriteState* s = keep.get();
  s->acked = true;
  if (h.code != 0 && s->status.ok()) {
    std::string message;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0 && data != nullptr) {
      message.assign(static_cast<const char*>(data), length);
    }
    s->status = absl::Status(static_cast<absl::StatusCode>(h.code),
                             absl::StrCat("peer ", s->label, " rejected the write: ", message));
  }
  MaybeFinish(s);
  return UCS_OK;
}

void TransferEngine::Impl::ExpireInboundBatches(absl::Time now) {
  absl::erase_if(inbound_,
                 [now](const auto& entry) { return now - entry.second.touched > kInboundBatchTtl; });
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
  return impl->RunSync<RegisteredRegion>(
      [impl, base, bytes] { return impl->DoRegister(base, bytes, /*allocate=*/false); },
      absl::Now() + options_.default_timeout);
}

absl::StatusOr<RegisteredRegion> TransferEngine::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("Allocate needs a non-zero size");
  Impl* impl = impl_.get();
  return impl->RunSync<RegisteredRegion>(
      [impl, bytes] { return impl->DoRegister(nullptr, bytes, /*allocate=*/true); },
      absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::Unregister(uint32_t region_id) {
  Impl* impl = impl_.get();
  return impl->RunSyncStatus([impl, region_id] { return impl->DoUnregister(region_id); },
                             absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes,
                                   absl::Time deadline) {
  return impl_->Write(peer, writes, deadline, options_.op);
}

absl::Status TransferEngine::Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes,
                                   absl::Time deadline, WriteOp op) {
  return impl_->Write(peer, writes, deadline, op);
}

absl::StatusOr<WriteOp> TransferEngine::ChooseOp(const RemoteRegion& peer) {
  if (peer.worker_address.empty() || peer.packed_rkey.empty()) {
    return absl::InvalidArgumentError("empty worker address or remote key");
  }
  Impl* impl = impl_.get();
  return impl->RunSync<WriteOp>([impl, peer] { return impl->DoChooseOp(peer); },
                                absl::Now() + options_.default_timeout);
}

absl::StatusOr<std::string> TransferEngine::DataTransports(const RemoteRegion& peer) {
  if (peer.worker_address.empty()) return absl::InvalidArgumentError("empty worker address");
  Impl* impl = impl_.get();
  return impl->RunSync<std::string>([impl, peer] { return impl->DoDataTransports(peer); },
                                    absl::Now() + options_.default_timeout);
}

absl::Status TransferEngine::SetWriteObserver(WriteObserver observer) {
  Impl* impl = impl_.get();
  return impl->RunSyncStatus(
      [impl, observer = std::move(observer)]() mutable {
        impl->DoSetObserver(std::move(observer));
        return absl::OkStatus();
      },
      absl::Now() + options_.default_timeout);
}

TransferStats TransferEngine::stats() const { return impl_->stats(); }

// ---------------------------------------------------------------------------
// Encoding for pipes and files.

namespace {

void PutU64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void PutBytes(std::string& out, absl::string_view b) {
  PutU64(out, b.size());
  out.append(b.data(), b.size());
}
bool GetU64(absl::string_view& in, uint64_t& v) {
  if (in.size() < 8) return false;
  std::memcpy(&v, in.data(), 8);
  in.remove_prefix(8);
  return true;
}
bool GetBytes(absl::string_view& in, std::string& b) {
  uint64_t n = 0;
  if (!GetU64(in, n) || in.size() < n) return false;
  b.assign(in.data(), n);
  in.remove_prefix(n);
  return true;
}

constexpr uint64_t kRegionCodecMagic = 0x314e4f4947455254ULL;  // "TREGION1"

}  // namespace

std::string EncodeRemoteRegion(const RemoteRegion& region) {
  std::string out;
  PutU64(out, kRegionCodecMagic);
  PutBytes(out, region.worker_address);
  PutU64(out, region.region_id);
  PutU64(out, region.base_address);
  PutU64(out, region.bytes);
  PutBytes(out, region.packed_rkey);
  PutBytes(out, region.peer_name);
  return out;
}

absl::StatusOr<RemoteRegion> DecodeRemoteRegion(absl::string_view in) {
  RemoteRegion r;
  uint64_t magic = 0, id = 0, base = 0, bytes = 0;
  if (!GetU64(in, magic) || magic != kRegionCodecMagic || !GetBytes(in, r.worker_address) ||
      !GetU64(in, id) || !GetU64(in, base) || !GetU64(in, bytes) || !GetBytes(in, r.packed_rkey) ||
      !GetBytes(in, r.peer_name) || !in.empty()) {
    return absl::InvalidArgumentError("malformed encoded RemoteRegion");
  }
  r.region_id = static_cast<uint32_t>(id);
  r.base_address = base;
  r.bytes = bytes;
  return r;
}

}  // namespace tandem::transfer
