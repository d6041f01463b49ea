// The sending half of the transfer engine: Write batches from submission to
// the peer's acknowledgement.
//
// Owns every unfinished write (WriteState, by sequence number). On the
// progress thread it connects (through Connections), issues the puts + flush
// or the data active messages, sends the fence, and finishes the write on the
// peer's acknowledgement, on a failure, or at its deadline. It also drops
// connections that failed or timed out, failing their writes, because only it
// knows which writes a connection carries (Peer::ops).
//
// Threads: Write runs on the caller's thread: it validates, hands the write to
// the progress thread and waits for it to finish. Every other method runs on
// the progress thread (UCX callbacks included). Internal to transfer/.
//
//   Sender sender("prefill-0", worker, &thread, &connections, &stats);
//   absl::Status s = sender.Write(peer, writes, absl::Now() + absl::Seconds(2), WriteOp::kAuto);
#ifndef TANDEM_TRANSFER_INTERNAL_SENDER_H_
#define TANDEM_TRANSFER_INTERNAL_SENDER_H_

#include <ucp/api/ucp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "transfer/internal/connection.h"
#include "transfer/internal/progress_thread.h"
#include "transfer/internal/stats.h"
#include "transfer/internal/wire.h"
#include "transfer/transfer_engine.h"

namespace tandem::transfer::internal {

class Sender;

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
  Sender* sender = nullptr;
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

class Sender {
 public:
  // Every pointer is borrowed and must outlive the Sender's use on the
  // progress thread; `stats` and `thread` also every Write call.
  Sender(std::string engine_name, ucp_worker_h worker, ProgressThread* thread, Connections* connections,
         StatsCounters* stats);

  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;

  // TransferEngine::Write. Caller's thread; FAILED_PRECONDITION on the
  // progress thread.
  absl::Status Write(const RemoteRegion& remote, absl::Span<const WriteRequest> writes, absl::Time deadline,
                     WriteOp op);

  // ---- Progress thread only. ----

  // The open connection to `remote`'s engine; a failed one is dropped (with
  // its writes) and replaced.
  absl::StatusOr<Peer*> Connect(const RemoteRegion& remote);
  // What WriteOp::kAuto resolves to for `remote` (connects if needed).
  absl::StatusOr<WriteOp> ChooseOp(const RemoteRegion& remote);
  // A peer acknowledged one of our batches (`message`: its error text).
  // Acknowledgements of other senders, or of writes already finished, are
  // ignored.
  void OnAck(const AckHeader& ack, absl::string_view message);
  // Drops the connections whose error callback fired, failing their writes.
  void HandleFailedPeers();
  // Fails the writes past their deadline and resets their connections.
  void ExpireWrites(absl::Time now);
  // The earliest deadline of an unfinished write.
  absl::Time NextDeadline() const;
  // Teardown: drops every connection with writes in flight, failing them.
  void DropBusyPeers(const absl::Status& status);
  // Teardown, with the worker quiet: finishes every write still unfinished
  // as CANCELLED and releases its UCX requests (no callback follows).
  void CancelAll();

 private:
  void Start(std::shared_ptr<WriteState> state);
  void IssuePuts(WriteState* s, ucp_rkey_h rkey);
  void IssueActiveMessages(WriteState* s);
  void SendFence(WriteState* s);
  // Keeps a request UCX returned (or fails the write for an error).
  void Track(WriteState* s, ucs_status_ptr_t ptr, absl::string_view what, bool is_flush = false);
  void OnRequestDone(WriteState* s, void* request, ucs_status_t status);
  void Fail(WriteState* s, absl::Status status);
  void MaybeFinish(WriteState* s);
  // The owning reference of an unfinished write: held across calls that may
  // finish it (after which the caller may free it).
  std::shared_ptr<WriteState> Hold(WriteState* s);
  // Fails every write to `peer` with `status`, cancels its requests and
  // closes the connection with force.
  void DropPeer(Peer* peer, const absl::Status& status);
  static void SendCallback(void* request, ucs_status_t status, void* user_data);

  const std::string engine_name_;
  const ucp_worker_h worker_;
  ProgressThread* const thread_;
  Connections* const connections_;
  StatsCounters* const stats_;
  // Names this engine's batches to receivers: random per engine.
  const uint64_t sender_id_;

  // Progress thread only.
  uint64_t next_seq_ = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<WriteState>> writes_;  // by seq
};

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_SENDER_H_
