// Wire formats of the transfer engine: the header that precedes the UCX
// worker address in TransferEngine::worker_address(), and the UCX headers of
// the three active messages a Write uses (data, fence, acknowledgement).
// Fields are in host byte order (see transfer_engine.h). Internal to
// transfer/; plain data and pure functions, safe on any thread.
//
//   std::string address = EncodeWorkerAddress(LocalHostId(), ucx, ucx_length);
//   absl::string_view ucx_part;
//   absl::StatusOr<AddressHeader> header = DecodeWorkerAddress(address, &ucx_part);
//
//   DataHeader h;  // in an active-message handler
//   if (!ReadHeader(header, header_length, h)) return UCS_OK;  // not ours
#ifndef TANDEM_TRANSFER_INTERNAL_WIRE_H_
#define TANDEM_TRANSFER_INTERNAL_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tandem::transfer::internal {

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

// Copies an active message's UCX header into `out` when it has the size and
// the magic of a `Header`. False for anything else, which the handler drops:
// the one check every handler makes before trusting a header.
template <typename Header>
bool ReadHeader(const void* header, size_t header_length, Header& out) {
  if (header_length != sizeof(Header)) return false;
  std::memcpy(&out, header, sizeof(Header));
  return out.magic == kWireMagic;
}

// FNV-1a: a stable, process-independent hash for host ids and peer labels.
uint64_t Fnv1a(absl::string_view bytes, uint64_t h = 0xcbf29ce484222325ULL);

// Identifies this host (hostname and kernel boot id): equal ids mean shared
// memory may work between two engines.
uint64_t LocalHostId();

// Our address header followed by the `ucx_length` bytes of a UCX worker address.
std::string EncodeWorkerAddress(uint64_t host_id, const void* ucx_address, size_t ucx_length);

// Splits a peer's worker_address() into its header and (in `ucx_address`) the
// UCX worker address. INVALID_ARGUMENT when it is not a Tandem address of
// this version.
absl::StatusOr<AddressHeader> DecodeWorkerAddress(absl::string_view address, absl::string_view* ucx_address);

}  // namespace tandem::transfer::internal

#endif  // TANDEM_TRANSFER_INTERNAL_WIRE_H_
