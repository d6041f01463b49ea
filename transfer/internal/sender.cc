#include "transfer/internal/sender.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "transfer/internal/ucx_status.h"

namespace tandem::transfer::internal {
namespace {

// How long a caller waits past its deadline for the progress thread to have
// cancelled its write, before it reports that the thread is stuck.
constexpr absl::Duration kCancelGrace = absl::Seconds(5);

uint64_t RandomId() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
}

// A WriteState for the non-empty requests of `writes`, or INVALID_ARGUMENT
// for a request outside the region or without a source.
absl::StatusOr<std::shared_ptr<WriteState>> NewWriteState(const RemoteRegion& remote,
                                                          absl::Span<const WriteRequest> writes) {
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
  // The fence counts data messages in 32 bits, UINT32_MAX meaning "unknown".
  if (state->writes.size() >= UINT32_MAX) {
    return absl::InvalidArgumentError("too many writes in one call");
  }
  state->label = PeerLabel(remote);
  return state;
}

}  // namespace

Sender::Sender(std::string engine_name, ucp_worker_h worker, ProgressThread* thread, Connections* connections,
               StatsCounters* stats)
    : engine_name_(std::move(engine_name)),
      worker_(worker),
      thread_(thread),
      connections_(connections),
      stats_(stats),
      sender_id_(RandomId()) {}

// ---------------------------------------------------------------------------
// The caller's side.

absl::Status Sender::Write(const RemoteRegion& remote, absl::Span<const WriteRequest> writes,
                           absl::Time deadline, WriteOp op) {
  if (thread_->OnThread()) {
    return absl::FailedPreconditionError("Write called on the transfer progress thread");
  }
  TANDEM_ASSIGN_OR_RETURN(std::shared_ptr<WriteState> state, NewWriteState(remote, writes));
  if (state->writes.empty()) return absl::OkStatus();
  if (absl::Now() >= deadline) {
    stats_->Add([](TransferStats& st) {
      ++st.write_calls;
      ++st.failed_write_calls;
    });
    return absl::DeadlineExceededError(
        absl::StrCat("write to peer ", state->label, ": deadline already passed"));
  }
  state->remote = remote;
  state->deadline = deadline;
  state->requested = op;
  state->sender = this;

  TANDEM_RETURN_IF_ERROR(thread_->Submit([this, state] { Start(state); }));
  // The progress thread finishes the write by its deadline (cancelling it if
  // needed); only then may the caller reuse its buffers, so wait for it.
  absl::Time wait_until = deadline + kCancelGrace;
  while (!state->done.WaitForNotificationWithDeadline(wait_until)) {
    LOG(ERROR) << "transfer engine '" << engine_name_ << "': a write to " << state->label
               << " is still not cancelled " << absl::FormatDuration(absl::Now() - deadline)
               << " after its deadline; the progress thread is blocked (observer or registration?)";
    wait_until = absl::Now() + kCancelGrace;
  }
  stats_->Add([&](TransferStats& st) {
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

// ---------------------------------------------------------------------------
// Connections.

absl::StatusOr<Peer*> Sender::Connect(const RemoteRegion& remote) {
  if (Peer* peer = connections_->Find(remote.worker_address)) {
    if (!peer->failed) return peer;
    DropPeer(peer, PeerError(*peer, peer->fail_status, "connection failed"));
  }
  return connections_->Connect(remote);
}

absl::StatusOr<WriteOp> Sender::ChooseOp(const RemoteRegion& remote) {
  TANDEM_ASSIGN_OR_RETURN(Peer * peer, Connect(remote));
  TANDEM_ASSIGN_OR_RETURN(ucp_rkey_h rkey, connections_->Rkey(*peer, remote.packed_rkey));
  return Connections::Resolve(*peer, rkey, remote.base_address);
}

void Sender::HandleFailedPeers() {
  for (Peer* peer : connections_->FailedPeers()) {
    DropPeer(peer, PeerError(*peer, peer->fail_status, "connection failed"));
  }
}

void Sender::DropBusyPeers(const absl::Status& status) {
  std::vector<Peer*> busy;
  for (const auto& [seq, s] : writes_) {
    if (s->peer != nullptr && std::find(busy.begin(), busy.end(), s->peer) == busy.end()) {
      busy.push_back(s->peer);
    }
  }
  for (Peer* peer : busy) DropPeer(peer, status);
}

void Sender::DropPeer(Peer* peer, const absl::Status& status) {
  if (!connections_->IsOpen(peer)) return;  // already dropped
  std::vector<std::shared_ptr<WriteState>> ops;
  for (WriteState* s : peer->ops) ops.push_back(Hold(s));
  for (auto& s : ops) {
    if (s->status.ok()) s->status = status;
    std::vector<void*> requests(s->requests.begin(), s->requests.end());
    for (void* r : requests) {
      if (s->requests.contains(r)) ucp_request_cancel(worker_, r);
    }
  }
  connections_->Close(peer);
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
  stats_->Add([](TransferStats& st) { ++st.connections_dropped; });
}

// ---------------------------------------------------------------------------
// One write on the progress thread.

void Sender::Start(std::shared_ptr<WriteState> state) {
  WriteState* s = state.get();
  s->seq = next_seq_++;
  writes_.emplace(s->seq, state);
  if (absl::Now() >= s->deadline) {
    Fail(s, absl::DeadlineExceededError(
                absl::StrCat("write to peer ", s->label, ": deadline passed before it started")));
    return;
  }
  absl::StatusOr<Peer*> peer = Connect(s->remote);
  if (!peer.ok()) {
    Fail(s, peer.status());
    return;
  }
  s->peer = *peer;
  s->peer->ops.insert(s);
  ucp_rkey_h rkey = nullptr;
  WriteOp op = s->requested;
  if (op != WriteOp::kActiveMessage) {
    absl::StatusOr<ucp_rkey_h> r = connections_->Rkey(*s->peer, s->remote.packed_rkey);
    if (!r.ok()) {
      Fail(s, r.status());
      return;
    }
    rkey = *r;
    if (op == WriteOp::kAuto) op = Connections::Resolve(*s->peer, rkey, s->remote.base_address);
  }
  s->op = op;
  if (op == WriteOp::kPut) {
    IssuePuts(s, rkey);
  } else {
    IssueActiveMessages(s);
  }
  MaybeFinish(s);
}

void Sender::IssuePuts(WriteState* s, ucp_rkey_h rkey) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &Sender::SendCallback;
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

void Sender::IssueActiveMessages(WriteState* s) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Sender::SendCallback;
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

void Sender::SendFence(WriteState* s) {
  if (s->peer == nullptr || !s->status.ok()) return;
  s->fence.magic = kWireMagic;
  s->fence.num_messages = s->op == WriteOp::kActiveMessage ? s->writes.size() : 0;
  s->fence.sender_id = sender_id_;
  s->fence.batch_seq = s->seq;
  s->fence.num_put_records = s->records.size();
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Sender::SendCallback;
  param.user_data = s;
  param.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  Track(s,
        ucp_am_send_nbx(s->peer->data_ep, kAmFence, &s->fence, sizeof(FenceHeader), s->records.data(),
                        s->records.size() * sizeof(PutRecord), &param),
        "fence ucp_am_send_nbx");
}

void Sender::SendCallback(void* request, ucs_status_t status, void* user_data) {
  auto* s = static_cast<WriteState*>(user_data);
  s->sender->OnRequestDone(s, request, status);
}

void Sender::Track(WriteState* s, ucs_status_ptr_t ptr, absl::string_view what, bool is_flush) {
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

void Sender::OnRequestDone(WriteState* s, void* request, ucs_status_t status) {
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

void Sender::OnAck(const AckHeader& ack, absl::string_view message) {
  if (ack.sender_id != sender_id_) return;
  auto it = writes_.find(ack.batch_seq);
  if (it == writes_.end()) return;  // timed out meanwhile
  std::shared_ptr<WriteState> keep = it->second;
  WriteState* s = keep.get();
  s->acked = true;
  if (ack.code != 0 && s->status.ok()) {
    s->status = absl::Status(static_cast<absl::StatusCode>(ack.code),
                             absl::StrCat("peer ", s->label, " rejected the write: ", message));
  }
  MaybeFinish(s);
}

// ---------------------------------------------------------------------------
// Finishing.

std::shared_ptr<WriteState> Sender::Hold(WriteState* s) {
  auto it = writes_.find(s->seq);
  return it == writes_.end() ? nullptr : it->second;
}

void Sender::Fail(WriteState* s, absl::Status status) {
  if (s->status.ok()) s->status = std::move(status);
  MaybeFinish(s);
}

void Sender::MaybeFinish(WriteState* s) {
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

absl::Time Sender::NextDeadline() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [seq, state] : writes_) next = std::min(next, state->deadline);
  return next;
}

void Sender::ExpireWrites(absl::Time now) {
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

void Sender::CancelAll() {
  std::vector<std::shared_ptr<WriteState>> left;
  for (auto& [seq, s] : writes_) left.push_back(s);
  for (auto& s : left) {
    if (s->status.ok()) s->status = absl::CancelledError("transfer engine destroyed");
    for (void* r : s->requests) ucp_request_free(r);  // no callback after this
    s->requests.clear();
    MaybeFinish(s.get());
  }
}

}  // namespace tandem::transfer::internal
