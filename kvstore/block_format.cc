#include "kvstore/block_format.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "isa-l/crc.h"

namespace tandem::kvstore {
namespace {

// Every Tandem target is little-endian (x86-64, aarch64); the header is
// defined little-endian, so plain copies are the encoding.
static_assert(std::endian::native == std::endian::little, "kvstore assumes a little-endian host");

template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

constexpr size_t kChecksumOffset = 40;

}  // namespace

uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc) {
  const uint8_t* p = data.data();
  size_t left = data.size();
  constexpr size_t kChunk = size_t{1} << 30;  // crc32_iscsi takes an int length
  while (left > 0) {
    const size_t n = std::min(left, kChunk);
    // ISA-L's crc32_iscsi works on the inverted register: standard CRC32C is
    // ~crc32_iscsi(data, ~crc).
    crc = ~crc32_iscsi(const_cast<unsigned char*>(p), static_cast<int>(n), ~crc);
    p += n;
    left -= n;
  }
  return crc;
}

uint64_t ModelIdHash(std::string_view model_id) { return ModelSeed(model_id); }

size_t EncodedBlockBytes(size_t num_tokens, size_t payload_bytes) {
  return kBlockHeaderBytes + num_tokens * sizeof(int32_t) + payload_bytes;
}

void EncodeBlockInto(const BlockContents& c, absl::Span<uint8_t> out) {
  uint8_t* p = out.data();
  Store<uint32_t>(p + 0, kBlockMagic);
  Store<uint32_t>(p + 4, kBlockLayoutVersion);
  Store<uint64_t>(p + 8, c.model_id_hash);
  Store<uint64_t>(p + 16, c.block_hash);
  Store<uint32_t>(p + 24, static_cast<uint32_t>(c.tokens.size()));
  Store<uint32_t>(p + 28, 0);
  Store<uint64_t>(p + 32, c.payload.size());
  Store<uint32_t>(p + 44, 0);
  const size_t token_bytes = c.tokens.size() * sizeof(int32_t);
  if (token_bytes > 0) std::memcpy(p + kBlockHeaderBytes, c.tokens.data(), token_bytes);
  if (!c.payload.empty()) {
    std::memcpy(p + kBlockHeaderBytes + token_bytes, c.payload.data(), c.payload.size());
  }
  uint32_t crc = Crc32c(absl::MakeConstSpan(p, kChecksumOffset));
  crc = Crc32c(absl::MakeConstSpan(p + kBlockHeaderBytes, token_bytes + c.payload.size()), crc);
  Store<uint32_t>(p + kChecksumOffset, crc);
}

std::string EncodeBlock(const BlockContents& c) {
  std::string out(EncodedBlockBytes(c.tokens.size(), c.payload.size()), '\0');
  EncodeBlockInto(c, absl::MakeSpan(reinterpret_cast<uint8_t*>(out.data()), out.size()));
  return out;
}

absl::StatusOr<BlockView> DecodeBlock(absl::Span<const uint8_t> value, bool verify_checksum) {
  if (value.size() < kBlockHeaderBytes) {
    return absl::DataLossError(
        absl::StrFormat("KV block value of %d bytes is shorter than its header", value.size()));
  }
  const uint8_t* p = value.data();
  if (Load<uint32_t>(p) != kBlockMagic) return absl::DataLossError("KV block value: bad magic");
  if (const uint32_t v = Load<uint32_t>(p + 4); v != kBlockLayoutVersion) {
    return absl::FailedPreconditionError(
        absl::StrFormat("KV block layout version %d, this build reads %d", v, kBlockLayoutVersion));
  }
  if (Load<uint32_t>(p + 44) != 0) {
    // Outside the checksummed bytes, so it must hold its one valid value.
    return absl::DataLossError("KV block value: reserved header bytes 44..47 are not zero");
  }
  BlockView view;
  view.model_id_hash = Load<uint64_t>(p + 8);
  view.block_hash = Load<uint64_t>(p + 16);
  view.num_tokens = Load<uint32_t>(p + 24);
  const uint64_t payload_bytes = Load<uint64_t>(p + 32);
  view.checksum = Load<uint32_t>(p + kChecksumOffset);
  const uint64_t token_bytes = uint64_t{view.num_tokens} * sizeof(int32_t);
  if (payload_bytes > value.size() || kBlockHeaderBytes + token_bytes + payload_bytes != value.size()) {
    return absl::DataLossError(
        absl::StrFormat("KV block %016x: header says %d tokens and %d payload bytes, value has %d bytes",
                        view.block_hash, view.num_tokens, payload_bytes, value.size()));
  }
  view.token_bytes = value.subspan(kBlockHeaderBytes, token_bytes);
  view.payload = value.subspan(kBlockHeaderBytes + token_bytes, payload_bytes);
  if (verify_checksum) {
    uint32_t crc = Crc32c(value.subspan(0, kChecksumOffset));
    crc = Crc32c(value.subspan(kBlockHeaderBytes), crc);
    if (crc != view.checksum) {
      return absl::DataLossError(
          absl::StrFormat("KV block %016x: checksum mismatch (stored %08x, computed %08x)", view.block_hash,
                          view.checksum, crc));
    }
  }
  return view;
}

std::vector<int32_t> BlockView::Tokens() const {
  std::vector<int32_t> tokens(num_tokens);
  if (num_tokens > 0) std::memcpy(tokens.data(), token_bytes.data(), token_bytes.size());
  return tokens;
}

bool BlockView::TokensEqual(absl::Span<const int32_t> tokens) const {
  return tokens.size() == num_tokens &&
         (num_tokens == 0 || std::memcmp(tokens.data(), token_bytes.data(), token_bytes.size()) == 0);
}

}  // namespace tandem::kvstore
