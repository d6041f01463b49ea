// Connections to peer engines and the remote keys unpacked on them.
//
// A Peer is one connection: a control endpoint with UCX peer-failure handling
// that watches the peer's liveness, and the endpoint data goes over (the same
// one, or a shared-memory endpoint to a peer on this host; see
// transfer_engine.h). Connections owns every Peer by its worker address, its
// endpoints and unpacked rkeys, the peers it closed (kept until UCX can no
// longer name them in a callback) and the requests of endpoints being
// closed. It knows nothing of writes: the Sender keeps Peer::ops and decides
// when a failed peer is closed. Borrows the ucp_worker, which must outlive
// it. Progress thread only. Internal to transfer/.
//
//   Connections connections(worker, /*shared_memory_fast_path=*/true, has_shm, host_id);
//   TANDEM_ASSIGN_OR_RETURN(Peer* peer, connections.Connect(remote));
//   TANDEM_ASSIGN_OR_RETURN(ucp_rkey_h rkey, connections.Rkey(*peer, remote.packed_rkey));
//   WriteOp op = Connections::Resolve(*peer, rkey, remote.base_address);
#ifndef TANDEM_TRANSFER_INTERNAL_CONNECTION_H_
#define TANDEM_TRANSFER_INTERNAL_CONNECTION_H_

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
#include "transfer/transfer_engine.h"

namespace tandem::transfer::internal {

struct WriteState;  // sender.h

struct Peer {
  std::string address;         // the peer's worker_address()
  std::string label;           // names the peer in errors (PeerLabel)
  ucp_ep_h ctl_ep = nullptr;   // UCP_ERR_HANDLING_MODE_PEER; watches liveness
  ucp_ep_h data_ep = nullptr;  // == ctl_ep unless a shared-memory endpoint
  bool data_is_shm = false;
  bool data_has_rdma = false;
  std::string transports;                              // of data_ep, e.g. "sysv,posix,cma"
  absl::flat_hash_map<std::string, ucp_rkey_h> rkeys;  // by packed rkey
  // The Sender's unfinished writes to this peer; the Sender keeps this set.
  absl::flat_hash_set<WriteState*> ops;
  // Set by UCX's error callback during progress; acted on after it.
  bool failed = false;
  ucs_status_t fail_status = UCS_OK;
};

// "peer <label>: <what>: <UCX message>", UNAVAILABLE: what a write to a
// failed peer reports.
absl::Status PeerError(const Peer& peer, ucs_status_t status, absl::string_view what);

// RemoteRegion::peer_name, or "worker#<hash of the address>" without one.
std::string PeerLabel(const RemoteRegion& remote);

class Connections {
 public:
  // `shared_memory_fast_path`: TransferOptions' field. `local_has_shm`: this
  // engine's context has a shared-memory transport. `host_id`: LocalHostId().
  Connections(ucp_worker_h worker, bool shared_memory_fast_path, bool local_has_shm, uint64_t host_id)
      : worker_(worker),
        shared_memory_fast_path_(shared_memory_fast_path),
        local_has_shm_(local_has_shm),
        host_id_(host_id) {}

  Connections(const Connections&) = delete;
  Connections& operator=(const Connections&) = delete;

  // The open connection to `address` (maybe failed), or null.
  Peer* Find(const std::string& address);
  // Whether `peer` is open (not closed since).
  bool IsOpen(const Peer* peer) const;
  // Opens a connection to `remote`'s engine. REQUIRES: none is open
  // (Find returns null). INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when UCX cannot create the endpoint.
  absl::StatusOr<Peer*> Connect(const RemoteRegion& remote);
  // The remote key `packed` unpacked on `peer`'s data endpoint (cached).
  absl::StatusOr<ucp_rkey_h> Rkey(Peer& peer, const std::string& packed);
  // What WriteOp::kAuto means for this peer and remote region (see
  // transfer_engine.h).
  static WriteOp Resolve(const Peer& peer, ucp_rkey_h rkey, uint64_t base);
  // The open connections whose error callback fired.
  std::vector<Peer*> FailedPeers() const;

  // Closes `peer` with force (UCX completes its outstanding requests with
  // UCS_ERR_CANCELED, so it reads no caller buffer afterwards) and destroys
  // its rkeys. The Peer stays allocated for one to two housekeeping periods.
  void Close(Peer* peer);
  // Destroys every rkey and closes every connection gracefully (teardown).
  void CloseAllGracefully();
  // Keeps `request` (a ucs_status_ptr_t; null or an error is ignored) until
  // it completes, like the requests of closing endpoints: teardown waits for
  // them all (ReapCloseRequests).
  void TrackCloseRequest(void* request);
  // Frees finished close requests. True when none is left.
  bool ReapCloseRequests();
  // Frees every close request, finished or not (teardown, before the worker
  // is destroyed).
  void FreeCloseRequests();
  // Frees peers closed two housekeeping periods ago and finished close
  // requests.
  void Housekeep();

 private:
  void CloseEndpoint(ucp_ep_h ep, bool force);
  // Gives `peer` a shared-memory data endpoint when one really uses shared
  // memory with the peer; otherwise leaves data_ep as it is.
  void AddSharedMemoryEndpoint(Peer& peer, const ucp_address_t* address);
  static void ErrorCallback(void* arg, ucp_ep_h ep, ucs_status_t status);

  const ucp_worker_h worker_;
  const bool shared_memory_fast_path_;
  const bool local_has_shm_;
  const uint64_t host_id_;
  absl::flat_hash_map<std::string, std::unique_ptr<Peer>> peers_;  // by address
  // Closed peers, kept for a housekeeping period in case UCX still names one
  // in a callback: two generations.
  std::vector<std::unique_ptr<Peer>> closed_;
  std::vector<std::unique_ptr<Peer>> closed_old_;
  std::vector<void*> close_requests_;
};

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_CONNECTION_H_
