#include "common/block_hash.h"

#include <xxhash.h>

#include <bit>
#include <cstring>
#include <string>

namespace tandem {
namespace {

// Appends the bytes of HashBlock's input (see the layout in block_hash.h) to
// `buf`, which is cleared first. Reusing one buffer across a chain keeps
// HashFullBlocks to one allocation.
void AssembleBlockInput(BlockHash prev, std::string_view model_id, absl::Span<const int32_t> tokens,
                        std::string& buf) {
  buf.clear();
  buf.reserve(sizeof(uint64_t) + model_id.size() + tokens.size() * sizeof(int32_t));
  for (int i = 0; i < 8; ++i) {
    buf.push_back(static_cast<char>((prev >> (8 * i)) & 0xff));
  }
  buf.append(model_id);
  if constexpr (std::endian::native == std::endian::little) {
    buf.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(int32_t));
  } else {
    for (int32_t t : tokens) {
      const uint32_t u = static_cast<uint32_t>(t);
      for (int i = 0; i < 4; ++i) buf.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
    }
  }
}

}  // namespace

BlockHash ModelSeed(std::string_view model_id) {
  std::string buf;
  buf.reserve(kBlockHashDomain.size() + model_id.size());
  buf.append(kBlockHashDomain);
  buf.append(model_id);
  return XXH3_64bits(buf.data(), buf.size());
}

BlockHash HashBlock(BlockHash prev, std::string_view model_id, absl::Span<const int32_t> tokens) {
  std::string buf;
  AssembleBlockInput(prev, model_id, tokens, buf);
  return XXH3_64bits(buf.data(), buf.size());
}

std::vector<BlockHash> HashFullBlocks(std::string_view model_id, absl::Span<const int32_t> tokens,
                                      int32_t block_size) {
  std::vector<BlockHash> hashes;
  if (block_size <= 0) return hashes;
  const size_t num_full = tokens.size() / static_cast<size_t>(block_size);
  hashes.reserve(num_full);
  std::string buf;
  BlockHash prev = ModelSeed(model_id);
  for (size_t i = 0; i < num_full; ++i) {
    AssembleBlockInput(prev, model_id, tokens.subspan(i * block_size, block_size), buf);
    prev = XXH3_64bits(buf.data(), buf.size());
    hashes.push_back(prev);
  }
  return hashes;
}

}  // namespace tandem
