// The byte format of one KV block outside HBM: the value a DRAM slot holds, a
// RocksDB value on SSD, and what a remote peer reads from a registered DRAM
// slot. The checksum travels with the block, so every holder can verify it.
//
//   std::string value = EncodeBlock({.model_id_hash = ModelIdHash("stories260K"),
//                                    .block_hash = h, .tokens = tokens, .payload = kv_bytes});
//   TANDEM_ASSIGN_OR_RETURN(BlockView view, DecodeBlock(value, /*verify_checksum=*/true));
//   std::memcpy(dst, view.payload.data(), view.payload.size());
//
// Layout (all integers little-endian, no padding between fields):
//
//   offset size  field
//        0    4  magic            "TKVB" (0x42564B54 read as le32)
//        4    4  layout_version   kBlockLayoutVersion (the KV byte layout below)
//        8    8  model_id_hash    ModelIdHash(model_id)
//       16    8  block_hash       the chained XXH3 name (common/block_hash.h)
//       24    4  num_tokens       block_size
//       28    4  reserved         0
//       32    8  payload_bytes
//       40    4  checksum         CRC32C (Castagnoli, standard: "123456789" ->
//                                 0xE3069283; computed with ISA-L) of
//                                 bytes [0, 40) ‖ tokens ‖ payload
//       44    4  reserved         0 (not checksummed; DecodeBlock rejects non-zero)
//       48  4*n  tokens           num_tokens × le32 token ids
//   48+4*n    p  payload          the KV bytes, kernels/kv_layout.h:
//                                 [layer][K,V][token][kv_head][head_dim], F32
//
// Thread safety: all functions are pure.
#ifndef TANDEM_KVSTORE_BLOCK_FORMAT_H_
#define TANDEM_KVSTORE_BLOCK_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"

namespace tandem::kvstore {

inline constexpr uint32_t kBlockMagic = 0x42564B54;  // "TKVB"
// Bump when the payload layout (kernels/kv_layout.h) or this header changes.
inline constexpr uint32_t kBlockLayoutVersion = 1;
inline constexpr size_t kBlockHeaderBytes = 48;

// What goes into a block value. Spans are borrowed for the call.
struct BlockContents {
  uint64_t model_id_hash = 0;
  BlockHash block_hash = 0;
  absl::Span<const int32_t> tokens;
  absl::Span<const uint8_t> payload;
};

// A decoded value: views into the encoded bytes (valid while they are).
struct BlockView {
  uint64_t model_id_hash = 0;
  BlockHash block_hash = 0;
  uint32_t num_tokens = 0;
  uint32_t checksum = 0;
  // num_tokens × le32, possibly unaligned: read with Tokens().
  absl::Span<const uint8_t> token_bytes;
  absl::Span<const uint8_t> payload;

  std::vector<int32_t> Tokens() const;
  // Whether the block's tokens equal `tokens` (no allocation).
  bool TokensEqual(absl::Span<const int32_t> tokens) const;
};

// XXH3 of the model id (with the block-hash domain: ModelSeed), as stored in
// the header and in SSD keys.
uint64_t ModelIdHash(std::string_view model_id);

// Bytes of an encoded block with `num_tokens` tokens and `payload_bytes`.
size_t EncodedBlockBytes(size_t num_tokens, size_t payload_bytes);

// Encodes into `out`, which must be exactly EncodedBlockBytes(...) long.
void EncodeBlockInto(const BlockContents& contents, absl::Span<uint8_t> out);
std::string EncodeBlock(const BlockContents& contents);

// Parses `value`. DataLoss on a bad magic, truncated or oversized value,
// and, with verify_checksum, a checksum mismatch; FailedPrecondition on an
// unknown layout version.
absl::StatusOr<BlockView> DecodeBlock(absl::Span<const uint8_t> value, bool verify_checksum);
inline absl::StatusOr<BlockView> DecodeBlock(std::string_view value, bool verify_checksum) {
  return DecodeBlock(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(value.data()), value.size()),
                     verify_checksum);
}

// Standard CRC32C of `data`, continuing from `crc` (the CRC32C of the bytes
// before it; 0 to start): Crc32c(b, Crc32c(a)) == Crc32c(a ‖ b).
uint32_t Crc32c(absl::Span<const uint8_t> data, uint32_t crc = 0);

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_BLOCK_FORMAT_H_
