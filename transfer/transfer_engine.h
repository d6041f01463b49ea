// The KV data plane: one-sided writes of KV blocks from this process into
// memory that another process registered, over UCX (shared memory on one
// host, RDMA or TCP between hosts).
//
//   // Decode worker (receiver): make a region peers may write into.
//   TransferOptions options;
//   options.name = "decode-0";
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<TransferEngine> engine,
//                           TransferEngine::Create(options));
//   TANDEM_ASSIGN_OR_RETURN(RegisteredRegion region, engine->Allocate(kv_bytes));
//   // ... send engine->worker_address() and `region` to the prefill worker
//   //     (gRPC; every field is plain bytes) ...
//
//   // Prefill worker (sender):
//   RemoteRegion peer = RemoteRegion::Of(decode_worker_address, region);
//   std::vector<WriteRequest> writes = {{block_ptr, block_id * block_bytes, block_bytes}};
//   TANDEM_RETURN_IF_ERROR(engine->Write(peer, writes, absl::Now() + absl::Seconds(2)));
//   // Returns OK only once every byte is in the decode worker's memory and the
//   // decode worker's engine has confirmed it: `block_ptr` may be reused.
//
// Threads. Each engine owns one ucp_context, one ucp_worker and one progress
// thread; only that thread calls UCX. The thread progresses the worker and
// sleeps on the worker's event fd (ucp_worker_arm + poll) when idle; public
// methods hand it work through a mutex-protected queue, wake it with
// ucp_worker_signal, and wait for the answer with a deadline. Public methods are
// thread safe, except that they must not be called from the write observer
// (which runs on the progress thread) other than Unregister.
//
// Connections. Write() connects to a peer address on first use and caches the
// connection. Every connection has a control endpoint with UCX peer-failure
// handling (UCP_ERR_HANDLING_MODE_PEER): when the peer process dies or its
// engine is destroyed, in-flight and later writes to it fail with
// UNAVAILABLE naming the peer, and the connection is dropped so a later Write
// reconnects. UCX 1.13 cannot combine peer-failure handling with its
// shared-memory transports (sysv/posix report no "peer failure" capability), so
// a peer on the same host additionally gets a data endpoint without error
// handling that uses shared memory; the control endpoint (TCP) watches the
// peer's liveness for it. See Options::shared_memory_fast_path.
//
// Completion. A Write returns OK only after remote completion confirmed by the
// peer's engine: the data is sent (puts + ucp_ep_flush_nbx, or active messages),
// then a small "fence" active message goes to the peer, whose handler answers
// with an acknowledgement once every byte of the batch is in place. Because
// the acknowledgement comes from the peer's progress thread, a write to a dead
// or wedged peer can never report success.
//
// Deadlines and cancellation. A Write that has not completed by its deadline
// fails with DEADLINE_EXCEEDED. Before it returns, its UCX requests are
// cancelled and the connection to that peer is closed with force (UCX then
// completes everything outstanding with UCS_ERR_CANCELED), so UCX never touches
// the caller's buffers after Write returns. Other writes in flight to the same
// peer at that moment fail with UNAVAILABLE; later writes reconnect.
//
// Memory kinds. Only host memory is accepted. Debian's UCX 1.13 is built
// without CUDA transports, so KV blocks in device memory are copied by the
// caller through pinned host staging buffers (MemoryKind::kCuda is reserved:
// a CUDA-aware UCX can register device memory and write it directly later).
//
// Byte order: the wire headers are in host byte order; both ends must share
// it (every Tandem target is little-endian x86-64 or aarch64).
#ifndef TANDEM_TRANSFER_TRANSFER_ENGINE_H_
#define TANDEM_TRANSFER_TRANSFER_ENGINE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace tandem::transfer {

enum class MemoryKind {
  // Ordinary host memory (pageable or pinned).
  kHost,
  // Device memory. Not supported by this build: Register() returns
  // UNIMPLEMENTED. Stage device blocks through host memory (cudaMemcpyAsync
  // into a pinned region registered as kHost) until a CUDA-aware UCX is used.
  kCuda,
};

// How a Write moves the bytes.
enum class WriteOp {
  // Chosen per connection and region (see TransferEngine::ChooseOp):
  //   kPut when the peer's memory is one-sided writable at full speed: the
  //     region is a UCX-allocated shared-memory segment on this host
  //     (ucp_rkey_ptr succeeds; the put is one memcpy into the mapped
  //     segment), or the connection has an RDMA transport (rc/dc: the NIC
  //     writes, the peer's CPU idles);
  //   kActiveMessage otherwise. Over TCP, UCX 1.13 has no put transport and
  //     emulates puts with messages that the peer's thread must serve:
  //     measured 0.4-0.6 GB/s (ucx_perftest, whose passive side barely
  //     progresses: 0.02-0.8) against 0.8-2.9 GB/s for active messages. Over
  //     shared memory into ordinary (Register'ed, not Allocate'd) memory, puts
  //     are emulated the same way and swing from 0.07 to 14 GB/s with the
  //     peer thread's scheduling, while an active message is a rendezvous
  //     whose bytes the peer pulls with one CMA copy (2.5-10 GB/s).
  //   Figures: bench/transfer_bench.cc, docs/PERFORMANCE.md.
  kAuto,
  // ucp_put_nbx into the registered remote region (one-sided), then
  // ucp_ep_flush_nbx.
  kPut,
  // ucp_am_send_nbx carrying (region id, offset) and the payload; the peer's
  // handler places the bytes (eager: memcpy; rendezvous: ucp_am_recv_data_nbx
  // straight into the region).
  kActiveMessage,
};

absl::string_view WriteOpName(WriteOp op);

struct TransferOptions {
  // Names this engine in error messages and in UCX's own diagnostics.
  // Default: "tandem".
  std::string name = "tandem";

  // How Write moves bytes when the call does not say. Default: kAuto.
  WriteOp op = WriteOp::kAuto;

  // Deadline used by the Write overload without one, and the limit on
  // Register/Allocate/Unregister/SetWriteObserver waiting for the progress
  // thread. Default: 10 s.
  absl::Duration default_timeout = absl::Seconds(10);

  // UCX transports (UCX_TLS syntax, e.g. "tcp" or "sm,tcp"). Empty means the
  // UCX_TLS environment variable, or UCX's default ("all") without it.
  // Default: "".
  std::string transports;

  // Use a separate shared-memory data endpoint to peers on this host (see the
  // file comment). Off: every byte goes over the control endpoint's
  // transports (TCP or RDMA), which are slower on one host but report peer
  // failure themselves. Default: true.
  bool shared_memory_fast_path = true;

  // UCX keepalive interval on control endpoints: how soon a peer that stops
  // answering without closing its sockets (host crash, network partition) is
  // declared failed. A peer process that dies is noticed at once through its
  // closed sockets, whatever this is. Zero keeps UCX's setting
  // (UCX_KEEPALIVE_INTERVAL, 20 s by default). Default: 2 s.
  absl::Duration keepalive_interval = absl::Seconds(2);
};

// A region of this process's memory that peers may write into. Every field is
// plain data so that it can travel in a protobuf message. `base_address` is the
// region's address in this process (peers address it remotely).
struct RegisteredRegion {
  uint32_t region_id = 0;
  uint64_t base_address = 0;
  size_t bytes = 0;
  // ucp_rkey_pack output: what a peer needs to write the region remotely.
  std::string packed_rkey;
};

// Where a Write goes: a peer engine's worker address and one of its regions.
struct RemoteRegion {
  // TransferEngine::worker_address() of the peer.
  std::string worker_address;
  uint32_t region_id = 0;
  uint64_t base_address = 0;
  size_t bytes = 0;
  std::string packed_rkey;
  // Names the peer in error messages (e.g. "decode-3"). Optional.
  std::string peer_name;

  static RemoteRegion Of(std::string worker_address, const RegisteredRegion& region,
                         std::string peer_name = "");
};

// One contiguous write: `bytes` bytes from `local` to `remote_offset` bytes
// into the remote region. `local` is borrowed until Write returns.
struct WriteRequest {
  const void* local = nullptr;
  uint64_t remote_offset = 0;
  size_t bytes = 0;
};

// Counters since Create. All monotonic.
struct TransferStats {
  // Write() calls that reached the transport, and how many of them failed.
  uint64_t write_calls = 0;
  uint64_t failed_write_calls = 0;
  // WriteRequests and bytes of successful Write() calls.
  uint64_t writes = 0;
  uint64_t bytes_written = 0;
  // Of those, bytes sent with kPut and with kActiveMessage.
  uint64_t bytes_put = 0;
  uint64_t bytes_active_message = 0;
  // Bytes that peers' active-message writes placed in this engine's regions.
  uint64_t bytes_received = 0;
  // Connections dropped because the peer failed or a write to it timed out.
  uint64_t connections_dropped = 0;
};

// Called on the progress thread after `bytes` bytes at `offset` of local
// region `region_id` were written by a peer and are in place: at once for
// active-message writes, and when the peer's fence arrives for put writes.
// Must be quick and must not block; it may call Unregister only.
using WriteObserver = std::function<void(uint32_t region_id, uint64_t offset, size_t bytes)>;

class TransferEngine {
 public:
  // Creates the UCX context (features RMA | AM | WAKEUP), the worker
  // (UCS_THREAD_MODE_SINGLE: only the progress thread touches it) and starts
  // the progress thread. Errors: UNAVAILABLE when UCX cannot start (no usable
  // transport), INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<TransferEngine>> Create(const TransferOptions& options);

  // Fails whatever is still in flight, closes every connection, unmaps every
  // region, destroys the worker and the context, and joins the progress
  // thread: at least ~20 ms (connection setups in flight finish first; UCX
  // 1.13 aborts the process if it purges one), at most ~3 s when peers do not
  // answer. REQUIRES: no other thread is inside a method of this engine.
  ~TransferEngine();

  TransferEngine(const TransferEngine&) = delete;
  TransferEngine& operator=(const TransferEngine&) = delete;

  // Registers [base, base + bytes) of caller-owned memory for remote writes
  // (ucp_mem_map + ucp_rkey_pack). The memory must stay valid until
  // Unregister or the engine's destruction. Over shared memory, remote puts
  // into such a region are emulated by UCX (slow); kAuto picks active
  // messages for it. Errors: INVALID_ARGUMENT (null or empty), UNIMPLEMENTED
  // (kCuda), RESOURCE_EXHAUSTED / INTERNAL from UCX.
  absl::StatusOr<RegisteredRegion> Register(void* base, size_t bytes, MemoryKind kind);

  // Allocates `bytes` of host memory through UCX (ucp_mem_map with
  // UCP_MEM_MAP_ALLOCATE: a System V / POSIX shared-memory segment where those
  // transports are enabled) and registers it. Peers on this host put into it
  // with a single memcpy. The memory is at `base_address`, zero-filled is not
  // guaranteed, and is freed by Unregister or the engine's destruction.
  absl::StatusOr<RegisteredRegion> Allocate(size_t bytes);

  // Unregisters (and, for Allocate'd regions, frees) a region. Later writes
  // into it from peers fail. Errors: NOT_FOUND; FAILED_PRECONDITION while an
  // active-message write is still landing in it (retry).
  absl::Status Unregister(uint32_t region_id);

  // This engine's address (our header + ucp_worker_get_address bytes), to be
  // sent to peers. Stable for the engine's lifetime.
  const std::string& worker_address() const { return worker_address_; }

  // Writes every request into the peer's region and returns once all of them
  // are in place at the peer (see the file comment), with `op` or, without
  // it, TransferOptions::op. Requests may be issued concurrently and land in
  // any order; overlapping requests give unspecified bytes in the overlap.
  // Errors:
  //   INVALID_ARGUMENT  a request outside the region, a null source, an empty
  //                     address or key; nothing is sent;
  //   DEADLINE_EXCEEDED not done by `deadline` (already past: returns at once);
  //   UNAVAILABLE       the peer failed, could not be reached, or its
  //                     connection was reset by another write's timeout;
  //   NOT_FOUND / OUT_OF_RANGE  the peer no longer has the region (it
  //                     unregistered it) or it is smaller than described;
  //   FAILED_PRECONDITION called from the progress thread (the observer).
  absl::Status Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes, absl::Time deadline);
  absl::Status Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes, absl::Time deadline,
                     WriteOp op);
  absl::Status Write(const RemoteRegion& peer, absl::Span<const WriteRequest> writes) {
    return Write(peer, writes, absl::Now() + options_.default_timeout);
  }

  // The op kAuto resolves to for this peer and region (connects if needed).
  absl::StatusOr<WriteOp> ChooseOp(const RemoteRegion& peer);

  // The UCX transports the data path to `peer` uses, e.g. "sysv,posix,cma" or
  // "tcp" (connects if needed). For diagnostics and benchmarks.
  absl::StatusOr<std::string> DataTransports(const RemoteRegion& peer);

  // Installs (or, with nullptr, removes) the write observer.
  absl::Status SetWriteObserver(WriteObserver observer);

  TransferStats stats() const;
  const TransferOptions& options() const { return options_; }

 private:
  class Impl;
  TransferEngine(const TransferOptions& options, std::unique_ptr<Impl> impl);

  TransferOptions options_;
  std::unique_ptr<Impl> impl_;
  std::string worker_address_;
};

// A compact binary encoding of a RemoteRegion (length-prefixed fields), for
// passing one through a pipe or a file where no protobuf is at hand (tests,
// benchmarks, tools). Services carry the fields in their protobuf messages.
std::string EncodeRemoteRegion(const RemoteRegion& region);
absl::StatusOr<RemoteRegion> DecodeRemoteRegion(absl::string_view bytes);

}  // namespace tandem::transfer

#endif  // TANDEM_TRANSFER_TRANSFER_ENGINE_H_
