#include "transfer/internal/wire.h"

#include <unistd.h>

#include <fstream>

#include "absl/status/status.h"

namespace tandem::transfer::internal {

uint64_t Fnv1a(absl::string_view bytes, uint64_t h) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t LocalHostId() {
  std::string boot_id;
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::getline(in, boot_id);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return Fnv1a(host, Fnv1a(boot_id));
}

std::string EncodeWorkerAddress(uint64_t host_id, const void* ucx_address, size_t ucx_length) {
  const AddressHeader header{kAddressMagic, kAddressVersion, host_id};
  std::string address(reinterpret_cast<const char*>(&header), sizeof(header));
  address.append(static_cast<const char*>(ucx_address), ucx_length);
  return address;
}

absl::StatusOr<AddressHeader> DecodeWorkerAddress(absl::string_view address, absl::string_view* ucx_address) {
  AddressHeader header;
  if (address.size() <= sizeof(header)) {
    return absl::InvalidArgumentError("worker address too short");
  }
  std::memcpy(&header, address.data(), sizeof(header));
  if (header.magic != kAddressMagic || header.version != kAddressVersion) {
    return absl::InvalidArgumentError("not a Tandem transfer worker address (or another version)");
  }
  *ucx_address = address.substr(sizeof(header));
  return header;
}

}  // namespace tandem::transfer::internal
