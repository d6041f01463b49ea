// Block hashes: the 64-bit names of full KV blocks, shared by every process.
//
//   BlockHash prev = ModelSeed("stories260K");
//   BlockHash h0 = HashBlock(prev, "stories260K", absl::MakeConstSpan(tokens).subspan(0, 16));
//   // or, for a whole prompt (only full blocks are hashed):
//   std::vector<BlockHash> hashes = HashFullBlocks("stories260K", tokens, 16);
//
// The same hash names a block in a worker's prefix cache, in the store's tiers,
// in KV events and in the router's index, so the router, the workers and the
// store (different processes, possibly different machines) must compute
// bit-identical values. The exact byte layout is therefore part of the
// contract and must never change without bumping kBlockHashDomain:
//
//   h_{-1} = ModelSeed(model_id)
//          = XXH3_64bits(kBlockHashDomain bytes ‖ model_id bytes)
//   h_i    = HashBlock(h_{i-1}, model_id, tokens of block i)
//          = XXH3_64bits(le64(h_{i-1}) ‖ model_id bytes ‖ le32(t_0) ‖ ... ‖ le32(t_{n-1}))
//
// where XXH3_64bits is xxHash's one-shot XXH3 with the default secret and seed
// 0, le64/le32 are the 8/4 bytes of the value in little-endian order (token
// ids are int32_t, written as their two's-complement bit pattern), ‖ is
// concatenation, and no length prefixes or separators are added. Both sides
// of the domain tag and model id are raw bytes (no terminating NUL).
// kBlockHashDomain is the 24 ASCII bytes "tandem.kv_block_hash.v1:".
//
// Only full blocks are hashed: a partial tail block has no name until it
// fills. A collision (two different token blocks with one hash) is possible in
// principle; holders that have the tokens at hand compare them.
//
// absl::Hash must never be used for this: it is seeded per process.
//
// Thread safety: all functions are pure and may be called concurrently.
#ifndef TANDEM_COMMON_BLOCK_HASH_H_
#define TANDEM_COMMON_BLOCK_HASH_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/types/span.h"

namespace tandem {

using BlockHash = uint64_t;

// The domain tag hashed in front of the model id to form the chain's seed.
inline constexpr std::string_view kBlockHashDomain = "tandem.kv_block_hash.v1:";

// h_{-1}: the seed of every chain for `model_id`.
BlockHash ModelSeed(std::string_view model_id);

// h_i from h_{i-1} (`prev`) and the tokens of block i. `tokens` is normally
// exactly block_size long; the function itself accepts any length.
BlockHash HashBlock(BlockHash prev, std::string_view model_id, absl::Span<const int32_t> tokens);

// The chained hashes of every full block of `tokens`, starting from
// ModelSeed(model_id): result[i] names tokens [i*block_size, (i+1)*block_size).
// A trailing partial block is not hashed. REQUIRES: block_size > 0 (returns an
// empty vector otherwise).
std::vector<BlockHash> HashFullBlocks(std::string_view model_id, absl::Span<const int32_t> tokens,
                                      int32_t block_size);

}  // namespace tandem

#endif  // TANDEM_COMMON_BLOCK_HASH_H_
