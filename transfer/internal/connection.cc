#include "transfer/internal/connection.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "transfer/internal/ucx_status.h"
#include "transfer/internal/wire.h"

namespace tandem::transfer::internal {
namespace {

void FreeRequestCallback(void* request, ucs_status_t, void*) { ucp_request_free(request); }

}  // namespace

absl::Status PeerError(const Peer& peer, ucs_status_t status, absl::string_view what) {
  return absl::UnavailableError(
      absl::StrCat("peer ", peer.label, ": ", what, ": ", ucs_status_string(status)));
}

std::string PeerLabel(const RemoteRegion& remote) {
  if (!remote.peer_name.empty()) return remote.peer_name;
  return absl::StrFormat("worker#%016x", Fnv1a(remote.worker_address));
}

Peer* Connections::Find(const std::string& address) {
  auto it = peers_.find(address);
  return it == peers_.end() ? nullptr : it->second.get();
}

bool Connections::IsOpen(const Peer* peer) const {
  auto it = peers_.find(peer->address);
  return it != peers_.end() && it->second.get() == peer;
}

void Connections::ErrorCallback(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* peer = static_cast<Peer*>(arg);
  if (peer->failed) return;
  peer->failed = true;
  peer->fail_status = status;
  // Acted on after ucp_worker_progress returns (Sender::HandleFailedPeers):
  // closing an endpoint from inside its own error callback is not allowed.
}

absl::StatusOr<Peer*> Connections::Connect(const RemoteRegion& remote) {
  absl::string_view ucx_bytes;
  absl::StatusOr<AddressHeader> header = DecodeWorkerAddress(remote.worker_address, &ucx_bytes);
  if (!header.ok()) return header.status();
  const auto* ucx_address = reinterpret_cast<const ucp_address_t*>(ucx_bytes.data());

  auto peer = std::make_unique<Peer>();
  peer->address = remote.worker_address;
  peer->label = PeerLabel(remote);

  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                         UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep_params.address = ucx_address;
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep_params.err_handler.cb = &Connections::ErrorCallback;
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
    param.cb.send = &FreeRequestCallback;
    ucs_status_ptr_t req = ucp_ep_flush_nbx(peer->ctl_ep, &param);
    (void)req;  // freed by its callback; UCS_PTR_IS_ERR shows up as an ep error
  }
  peer->data_ep = peer->ctl_ep;
  if (shared_memory_fast_path_ && local_has_shm_ && header->host_id == host_id_) {
    AddSharedMemoryEndpoint(*peer, ucx_address);
  }
  std::vector<std::string> tls = EndpointTransports(peer->data_ep);
  peer->transports = absl::StrJoin(tls, ",");
  peer->data_is_shm = peer->data_ep != peer->ctl_ep;
  peer->data_has_rdma =
      std::any_of(tls.begin(), tls.end(), [](const std::string& tl) { return IsRdmaTransport(tl); });

  Peer* raw = peer.get();
  peers_.emplace(remote.worker_address, std::move(peer));
  return raw;
}

void Connections::AddSharedMemoryEndpoint(Peer& peer, const ucp_address_t* address) {
  ucp_ep_params_t shm_params{};
  shm_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  shm_params.address = address;
  shm_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  ucp_ep_h shm_ep = nullptr;
  if (ucp_ep_create(worker_, &shm_params, &shm_ep) != UCS_OK) return;
  std::vector<std::string> tls = EndpointTransports(shm_ep);
  if (std::any_of(tls.begin(), tls.end(),
                  [](const std::string& tl) { return IsSharedMemoryTransport(tl); })) {
    peer.data_ep = shm_ep;
  } else {
    // The peer has no shared memory with us after all (its UCX_TLS, or
    // another IPC namespace): not worth a second connection.
    CloseEndpoint(shm_ep, /*force=*/false);
  }
}

absl::StatusOr<ucp_rkey_h> Connections::Rkey(Peer& peer, const std::string& packed) {
  auto it = peer.rkeys.find(packed);
  if (it != peer.rkeys.end()) return it->second;
  ucp_rkey_h rkey = nullptr;
  ucs_status_t st = ucp_ep_rkey_unpack(peer.data_ep, packed.data(), &rkey);
  if (st != UCS_OK) {
    absl::Status s = FromUcs(st, absl::StrCat("peer ", peer.label, ": ucp_ep_rkey_unpack"));
    return absl::InvalidArgumentError(s.message());
  }
  peer.rkeys.emplace(packed, rkey);
  return rkey;
}

WriteOp Connections::Resolve(const Peer& peer, ucp_rkey_h rkey, uint64_t base) {
  if (peer.data_is_shm) {
    void* mapped = nullptr;
    // A UCX-allocated segment is mapped here: put is a single memcpy. Other
    // memory would get software-emulated puts; AM rendezvous (CMA) is better.
    return ucp_rkey_ptr(rkey, base, &mapped) == UCS_OK ? WriteOp::kPut : WriteOp::kActiveMessage;
  }
  return peer.data_has_rdma ? WriteOp::kPut : WriteOp::kActiveMessage;
}

std::vector<Peer*> Connections::FailedPeers() const {
  std::vector<Peer*> failed;
  for (const auto& [address, peer] : peers_) {
    if (peer->failed) failed.push_back(peer.get());
  }
  return failed;
}

void Connections::Close(Peer* peer) {
  auto it = peers_.find(peer->address);
  if (it == peers_.end() || it->second.get() != peer) return;  // already closed
  std::unique_ptr<Peer> owned = std::move(it->second);
  peers_.erase(it);
  if (peer->data_ep != peer->ctl_ep) CloseEndpoint(peer->data_ep, /*force=*/true);
  CloseEndpoint(peer->ctl_ep, /*force=*/true);
  for (auto& [packed, rkey] : peer->rkeys) ucp_rkey_destroy(rkey);
  peer->rkeys.clear();
  closed_.push_back(std::move(owned));
}

void Connections::CloseAllGracefully() {
  for (auto& [address, peer] : peers_) {
    for (auto& [packed, rkey] : peer->rkeys) ucp_rkey_destroy(rkey);
    peer->rkeys.clear();
    if (peer->data_ep != peer->ctl_ep) CloseEndpoint(peer->data_ep, /*force=*/false);
    CloseEndpoint(peer->ctl_ep, /*force=*/false);
  }
}

void Connections::CloseEndpoint(ucp_ep_h ep, bool force) {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  TrackCloseRequest(ucp_ep_close_nbx(ep, &param));
}

void Connections::TrackCloseRequest(void* request) {
  if (request != nullptr && !UCS_PTR_IS_ERR(request)) close_requests_.push_back(request);
}

bool Connections::ReapCloseRequests() {
  close_requests_.erase(std::remove_if(close_requests_.begin(), close_requests_.end(),
                                       [](void* r) {
                                         if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
                                         ucp_request_free(r);
                                         return true;
                                       }),
                        close_requests_.end());
  return close_requests_.empty();
}

void Connections::FreeCloseRequests() {
  for (void* r : close_requests_) ucp_request_free(r);  // released with the worker
  close_requests_.clear();
}

void Connections::Housekeep() {
  // Two generations: a peer is freed one to two periods after its close.
  closed_old_.clear();
  closed_old_.swap(closed_);
  ReapCloseRequests();
}

}  // namespace tandem::transfer::internal
