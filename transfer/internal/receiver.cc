#include "transfer/internal/receiver.h"

#include <cstring>

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "transfer/internal/ucx_status.h"

namespace tandem::transfer::internal {
namespace {

// Inbound batches whose fence never arrives (the sender timed out or died)
// are forgotten after this long.
constexpr absl::Duration kInboundBatchTtl = absl::Seconds(60);

}  // namespace

Receiver::~Receiver() {
  for (RndvRecv* r : rndv_recvs_) delete r;
  for (AckMessage* a : acks_in_flight_) delete a;
}

template <typename Header, void (Receiver::*handle)(const Header&, const Receiver::Message&)>
ucs_status_t Receiver::Dispatch(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
  Header h;
  if (!ReadHeader(header, header_length, h)) return UCS_OK;  // not ours: drop
  const Message m{data, length, (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0,
                  (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 ? param->reply_ep : nullptr};
  (static_cast<Receiver*>(arg)->*handle)(h, m);
  // UCS_OK without receiving drops a rendezvous message; the handlers that
  // keep one have started ucp_am_recv_data_nbx.
  return UCS_OK;
}

absl::Status Receiver::InstallHandlers() {
  struct Handler {
    unsigned id;
    ucp_am_recv_callback_t cb;
  };
  const Handler handlers[] = {
      {kAmData, &Dispatch<DataHeader, &Receiver::OnData>},
      {kAmFence, &Dispatch<FenceHeader, &Receiver::OnFence>},
      {kAmAck, &Dispatch<AckHeader, &Receiver::OnAck>},
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
  return absl::OkStatus();
}

Receiver::InboundBatch& Receiver::Touch(const BatchKey& key) {
  InboundBatch& batch = inbound_[key];
  batch.touched = absl::Now();
  return batch;
}

// ---------------------------------------------------------------------------
// Data.

void Receiver::OnData(const DataHeader& h, const Message& m) {
  const BatchKey key{h.sender_id, h.batch_seq};
  Touch(key);
  absl::StatusOr<RegionTable::Region*> region = regions_->FindRange(h.region_id, h.offset, m.length);
  if (!region.ok()) {
    // Not receiving drops a rendezvous message; the sender learns about it
    // from the acknowledgement.
    Landed(key, h.region_id, h.offset, m.length, region.status(), m.reply_ep);
    return;
  }
  if (m.rendezvous) {
    ReceiveRendezvous(h, m, **region);
    return;
  }
  std::memcpy(reinterpret_cast<void*>((*region)->base + h.offset), m.data, m.length);
  Landed(key, h.region_id, h.offset, m.length, absl::OkStatus(), m.reply_ep);
}

void Receiver::ReceiveRendezvous(const DataHeader& h, const Message& m, RegionTable::Region& region) {
  auto* recv =
      new RndvRecv{this, BatchKey{h.sender_id, h.batch_seq}, h.region_id, h.offset, m.length, m.reply_ep};
  rndv_recvs_.insert(recv);
  regions_->ReceiveStarted(region);
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = &Receiver::RndvCallback;
  rp.user_data = recv;
  void* dst = reinterpret_cast<void*>(region.base + h.offset);
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(worker_, m.data, dst, m.length, &rp);
  if (req == nullptr) {
    OnRndvDone(recv, UCS_OK);
  } else if (UCS_PTR_IS_ERR(req)) {
    OnRndvDone(recv, UCS_PTR_STATUS(req));
  }
}

void Receiver::RndvCallback(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* recv = static_cast<RndvRecv*>(user_data);
  ucp_request_free(request);
  recv->receiver->OnRndvDone(recv, status);
}

void Receiver::OnRndvDone(RndvRecv* recv, ucs_status_t status) {
  rndv_recvs_.erase(recv);
  regions_->ReceiveEnded(recv->region_id);
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

void Receiver::Landed(const BatchKey& key, uint32_t region_id, uint64_t offset, size_t bytes,
                      const absl::Status& status, ucp_ep_h reply_ep) {
  InboundBatch& batch = Touch(key);
  ++batch.landed;
  if (!status.ok()) {
    if (batch.status.ok()) batch.status = status;
  } else {
    stats_->Add([bytes](TransferStats& st) { st.bytes_received += bytes; });
    if (observer_) observer_(region_id, offset, bytes);
  }
  MaybeAck(key, reply_ep);
}

// ---------------------------------------------------------------------------
// Fences and acknowledgements.

void Receiver::OnFence(const FenceHeader& h, const Message& m) {
  const BatchKey key{h.sender_id, h.batch_seq};
  InboundBatch& batch = Touch(key);
  batch.expected = h.num_messages;
  // Put records: the bytes are already in place (the sender flushed first).
  bool records_ok = !m.rendezvous && m.length == static_cast<size_t>(h.num_put_records) * sizeof(PutRecord);
  if (!records_ok && h.num_put_records > 0) {
    if (batch.status.ok()) batch.status = absl::InternalError("malformed fence");
  } else {
    for (uint32_t i = 0; i < h.num_put_records; ++i) {
      PutRecord r;
      std::memcpy(&r, static_cast<const char*>(m.data) + i * sizeof(PutRecord), sizeof(r));
      absl::StatusOr<RegionTable::Region*> region = regions_->FindRange(r.region_id, r.offset, r.bytes);
      if (!region.ok()) {
        if (batch.status.ok()) batch.status = region.status();
        continue;
      }
      if (observer_) observer_(r.region_id, r.offset, r.bytes);
    }
  }
  MaybeAck(key, m.reply_ep);
}

void Receiver::MaybeAck(const BatchKey& key, ucp_ep_h reply_ep) {
  auto it = inbound_.find(key);
  if (it == inbound_.end()) return;
  InboundBatch& batch = it->second;
  if (batch.expected == InboundBatch::kUnknown || batch.landed < batch.expected) return;
  absl::Status status = batch.status;
  inbound_.erase(it);
  if (reply_ep != nullptr) SendAck(reply_ep, key, status);
}

void Receiver::SendAck(ucp_ep_h reply_ep, const BatchKey& key, const absl::Status& status) {
  auto* ack =
      new AckMessage{this, AckHeader{kWireMagic, static_cast<int32_t>(status.code()), key.first, key.second},
                     std::string(status.message())};
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &Receiver::AckSentCallback;
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

void Receiver::AckSentCallback(void* request, ucs_status_t, void* user_data) {
  auto* ack = static_cast<AckMessage*>(user_data);
  ack->receiver->acks_in_flight_.erase(ack);
  delete ack;
  ucp_request_free(request);
}

void Receiver::OnAck(const AckHeader& h, const Message& m) {
  absl::string_view message;
  if (!m.rendezvous && m.data != nullptr)
    message = absl::string_view(static_cast<const char*>(m.data), m.length);
  sender_->OnAck(h, message);
}

void Receiver::ExpireBatches(absl::Time now) {
  absl::erase_if(inbound_,
                 [now](const auto& entry) { return now - entry.second.touched > kInboundBatchTtl; });
}

}  // namespace tandem::transfer::internal
