// EncodeRemoteRegion / DecodeRemoteRegion (declared in transfer_engine.h): a
// RemoteRegion as length-prefixed fields, for tests, benchmarks and tools
// that pass one through a pipe or a file. Services use protobuf instead.
#include <cstdint>
#include <cstring>
#include <string>

#include "transfer/transfer_engine.h"

namespace tandem::transfer {
namespace {

constexpr uint64_t kRegionCodecMagic = 0x314e4f4947455254ULL;  // "TREGION1"

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
