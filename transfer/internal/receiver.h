// The receiving half of the transfer engine: the active-message handlers.
//
// Data messages are placed into this engine's regions (eager: memcpy;
// rendezvous: ucp_am_recv_data_nbx straight into the region); a fence says how
// many data messages its batch has and lists the writes of a put batch, whose
// bytes are already in place; once every message of a batch has landed, the
// sender gets an acknowledgement carrying the batch's first error. The write
// observer hears of every write that landed. Acknowledgements of this
// engine's own writes are handed to the Sender.
//
// Owns the inbound batches, the rendezvous receives and acknowledgements in
// flight (freed by the destructor, which must run after the worker is
// destroyed, when no callback can name them), and the write observer.
// Borrows the worker, the region table, the sender and the counters.
// Progress thread only: UCX calls the handlers from ucp_worker_progress.
// Internal to transfer/.
//
//   Receiver receiver(worker, &regions, &sender, &stats);
//   TANDEM_RETURN_IF_ERROR(receiver.InstallHandlers());  // before the address is published
#ifndef TANDEM_TRANSFER_INTERNAL_RECEIVER_H_
#define TANDEM_TRANSFER_INTERNAL_RECEIVER_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transfer/internal/region_table.h"
#include "transfer/internal/sender.h"
#include "transfer/internal/stats.h"
#include "transfer/internal/wire.h"
#include "transfer/transfer_engine.h"

namespace tandem::transfer::internal {

class Receiver {
 public:
  Receiver(ucp_worker_h worker, RegionTable* regions, Sender* sender, StatsCounters* stats)
      : worker_(worker), regions_(regions), sender_(sender), stats_(stats) {}
  // Frees the rendezvous receives and acknowledgements still in flight.
  // REQUIRES: the worker is destroyed.
  ~Receiver();

  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  // Installs the data, fence and acknowledgement handlers on the worker.
  absl::Status InstallHandlers();
  // Installs (or, with nullptr, removes) the write observer.
  void SetObserver(WriteObserver observer) { observer_ = std::move(observer); }
  // Forgets batches whose fence never came (the sender timed out or died).
  void ExpireBatches(absl::Time now);

 private:
  using BatchKey = std::pair<uint64_t, uint64_t>;  // (sender id, batch seq)

  // What the receiver knows about one inbound batch.
  struct InboundBatch {
    static constexpr uint32_t kUnknown = UINT32_MAX;
    uint32_t expected = kUnknown;  // from the fence
    uint32_t landed = 0;           // data messages placed (or rejected)
    absl::Status status;           // the first rejection
    absl::Time touched;
  };

  // An active message past its header.
  struct Message {
    void* data;
    size_t length;
    bool rendezvous;    // `data` is a descriptor for ucp_am_recv_data_nbx
    ucp_ep_h reply_ep;  // null when the sender asked for no reply
  };

  // A rendezvous receive in flight.
  struct RndvRecv {
    Receiver* receiver;
    BatchKey key;
    uint32_t region_id;
    uint64_t offset;
    size_t bytes;
    ucp_ep_h reply_ep;
  };

  // An acknowledgement being sent.
  struct AckMessage {
    Receiver* receiver;
    AckHeader header;
    std::string message;
  };

  // The UCX handler for messages with a `Header`: checks and copies the
  // header (ReadHeader), then calls `handle`. Anything else is dropped.
  template <typename Header, void (Receiver::*handle)(const Header&, const Message&)>
  static ucs_status_t Dispatch(void* arg, const void* header, size_t header_length, void* data, size_t length,
                               const ucp_am_recv_param_t* param);

  void OnData(const DataHeader& h, const Message& m);
  void OnFence(const FenceHeader& h, const Message& m);
  void OnAck(const AckHeader& h, const Message& m);
  // The batch, created on first sight, marked as just touched.
  InboundBatch& Touch(const BatchKey& key);
  void ReceiveRendezvous(const DataHeader& h, const Message& m, RegionTable::Region& region);
  void OnRndvDone(RndvRecv* recv, ucs_status_t status);
  // One data message of batch `key` landed (or, with an error, was rejected).
  void Landed(const BatchKey& key, uint32_t region_id, uint64_t offset, size_t bytes,
              const absl::Status& status, ucp_ep_h reply_ep);
  void MaybeAck(const BatchKey& key, ucp_ep_h reply_ep);
  void SendAck(ucp_ep_h reply_ep, const BatchKey& key, const absl::Status& status);
  static void RndvCallback(void* request, ucs_status_t status, size_t length, void* user_data);
  static void AckSentCallback(void* request, ucs_status_t status, void* user_data);

  const ucp_worker_h worker_;
  RegionTable* const regions_;
  Sender* const sender_;
  StatsCounters* const stats_;
  WriteObserver observer_;
  absl::flat_hash_map<BatchKey, InboundBatch> inbound_;
  absl::flat_hash_set<RndvRecv*> rndv_recvs_;        // owned
  absl::flat_hash_set<AckMessage*> acks_in_flight_;  // owned
};

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_RECEIVER_H_
