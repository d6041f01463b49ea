#include "common/block_hash.h"

#include <xxhash.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::ElementsAreArray;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr int32_t kBlockSize = 4;

std::vector<int32_t> Iota(int n, int32_t start = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Builds HashBlock's input by hand, byte by byte, from the layout documented
// in block_hash.h, independently of the implementation's assembly code.
std::string HandAssembled(uint64_t prev, const std::string& model_id, const std::vector<int32_t>& tokens) {
  std::string b;
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(prev >> (8 * i)));
  b += model_id;
  for (int32_t t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    b.push_back(static_cast<char>(u & 0xff));
    b.push_back(static_cast<char>((u >> 8) & 0xff));
    b.push_back(static_cast<char>((u >> 16) & 0xff));
    b.push_back(static_cast<char>((u >> 24) & 0xff));
  }
  return b;
}

TEST(BlockHashTest, DomainTagIsPinned) {
  EXPECT_EQ(kBlockHashDomain, "tandem.kv_block_hash.v1:");
  EXPECT_EQ(kBlockHashDomain.size(), 24u);
}

TEST(BlockHashTest, SeedLayoutIsDomainTagThenModelId) {
  const std::string input = "tandem.kv_block_hash.v1:stories260K";
  EXPECT_EQ(ModelSeed("stories260K"), XXH3_64bits(input.data(), input.size()));
}

TEST(BlockHashTest, BlockLayoutIsPrevThenModelIdThenTokens) {
  const uint64_t prev = 0x0123456789abcdefULL;
  // Include a negative id and one with every byte distinct so byte order
  // and sign handling are both asserted.
  const std::vector<int32_t> tokens = {1, -2, 0x01020304, 65535};
  const std::string input = HandAssembled(prev, "m", tokens);
  ASSERT_EQ(input.size(), 8u + 1u + 16u);
  // Spot-check the hand assembly itself: little-endian prev and tokens.
  EXPECT_EQ(static_cast<uint8_t>(input[0]), 0xef);
  EXPECT_EQ(static_cast<uint8_t>(input[7]), 0x01);
  EXPECT_EQ(input[8], 'm');
  EXPECT_EQ(static_cast<uint8_t>(input[9]), 0x01);   // token 1, low byte
  EXPECT_EQ(static_cast<uint8_t>(input[13]), 0xfe);  // token -2, low byte
  EXPECT_EQ(static_cast<uint8_t>(input[16]), 0xff);  // token -2, high byte
  EXPECT_EQ(static_cast<uint8_t>(input[17]), 0x04);  // 0x01020304, low byte
  EXPECT_EQ(static_cast<uint8_t>(input[20]), 0x01);  // 0x01020304, high byte

  EXPECT_EQ(HashBlock(prev, "m", tokens), XXH3_64bits(input.data(), input.size()));
}

TEST(BlockHashTest, FullBlocksChainFromTheSeed) {
  const std::string model = "stories260K";
  const std::vector<int32_t> tokens = Iota(2 * kBlockSize, 100);
  const std::vector<int32_t> b0(tokens.begin(), tokens.begin() + kBlockSize);
  const std::vector<int32_t> b1(tokens.begin() + kBlockSize, tokens.end());

  const std::string seed_in = std::string(kBlockHashDomain) + model;
  const uint64_t seed = XXH3_64bits(seed_in.data(), seed_in.size());
  const std::string in0 = HandAssembled(seed, model, b0);
  const uint64_t h0 = XXH3_64bits(in0.data(), in0.size());
  const std::string in1 = HandAssembled(h0, model, b1);
  const uint64_t h1 = XXH3_64bits(in1.data(), in1.size());

  EXPECT_THAT(HashFullBlocks(model, tokens, kBlockSize), ElementsAreArray({h0, h1}));
}

// A pinned value: if this changes, every persisted block name (SSD tier, other
// processes' indexes) is invalidated. Bump kBlockHashDomain if that is meant.
TEST(BlockHashTest, GoldenValueIsStable) {
  const std::vector<int32_t> tokens = Iota(16, 1);
  const std::vector<BlockHash> hashes = HashFullBlocks("stories260K", tokens, 16);
  ASSERT_THAT(hashes, SizeIs(1));
  const std::string seed_in = "tandem.kv_block_hash.v1:stories260K";
  const uint64_t seed = XXH3_64bits(seed_in.data(), seed_in.size());
  const std::string in = HandAssembled(seed, "stories260K", tokens);
  EXPECT_EQ(hashes[0], XXH3_64bits(in.data(), in.size()));
  EXPECT_EQ(ModelSeed("stories260K"), uint64_t{0x68d65ae3844fb9edULL});
  EXPECT_EQ(hashes[0], uint64_t{0xd9a9e776200dd35aULL});
}

TEST(BlockHashTest, ChangingABlockChangesItAndEveryLaterHash) {
  const std::vector<int32_t> base = Iota(5 * kBlockSize);
  const std::vector<BlockHash> h = HashFullBlocks("m", base, kBlockSize);
  ASSERT_THAT(h, SizeIs(5));

  std::vector<int32_t> changed0 = base;
  changed0[1] += 1;  // in block 0
  const std::vector<BlockHash> h0 = HashFullBlocks("m", changed0, kBlockSize);
  for (int i = 0; i < 5; ++i) EXPECT_NE(h[i], h0[i]) << "block " << i;

  std::vector<int32_t> changed2 = base;
  changed2[2 * kBlockSize + 3] += 1;  // in block 2
  const std::vector<BlockHash> h2 = HashFullBlocks("m", changed2, kBlockSize);
  EXPECT_EQ(h[0], h2[0]);
  EXPECT_EQ(h[1], h2[1]);
  for (int i = 2; i < 5; ++i) EXPECT_NE(h[i], h2[i]) << "block " << i;
}

TEST(BlockHashTest, SameBlockAtDifferentPositionsHasDifferentHashes) {
  const std::vector<int32_t> tokens(3 * kBlockSize, 7);  // three identical blocks
  const std::vector<BlockHash> h = HashFullBlocks("m", tokens, kBlockSize);
  ASSERT_THAT(h, SizeIs(3));
  EXPECT_NE(h[0], h[1]);
  EXPECT_NE(h[1], h[2]);
  EXPECT_NE(h[0], h[2]);
}

TEST(BlockHashTest, PartialBlockIsNotHashed) {
  EXPECT_THAT(HashFullBlocks("m", Iota(kBlockSize - 1), kBlockSize), IsEmpty());
  EXPECT_THAT(HashFullBlocks("m", {}, kBlockSize), IsEmpty());
  const std::vector<int32_t> tokens = Iota(2 * kBlockSize + 3);
  const std::vector<BlockHash> with_tail = HashFullBlocks("m", tokens, kBlockSize);
  ASSERT_THAT(with_tail, SizeIs(2));
  // The tail's tokens do not influence the full blocks' hashes.
  std::vector<int32_t> other_tail = tokens;
  other_tail.back() = -1;
  EXPECT_EQ(HashFullBlocks("m", other_tail, kBlockSize), with_tail);
  EXPECT_EQ(HashFullBlocks("m", absl::MakeConstSpan(tokens).first(2 * kBlockSize), kBlockSize), with_tail);
}

TEST(BlockHashTest, DifferentModelsDiffer) {
  const std::vector<int32_t> tokens = Iota(2 * kBlockSize);
  EXPECT_NE(ModelSeed("llama-a"), ModelSeed("llama-b"));
  const auto a = HashFullBlocks("llama-a", tokens, kBlockSize);
  const auto b = HashFullBlocks("llama-b", tokens, kBlockSize);
  ASSERT_THAT(a, SizeIs(2));
  ASSERT_THAT(b, SizeIs(2));
  EXPECT_NE(a[0], b[0]);
  EXPECT_NE(a[1], b[1]);
}

TEST(BlockHashTest, HashFullBlocksMatchesHashBlockChain) {
  const std::vector<int32_t> tokens = Iota(3 * kBlockSize, -5);
  BlockHash prev = ModelSeed("m");
  std::vector<BlockHash> expected;
  for (int i = 0; i < 3; ++i) {
    prev = HashBlock(prev, "m", absl::MakeConstSpan(tokens).subspan(i * kBlockSize, kBlockSize));
    expected.push_back(prev);
  }
  EXPECT_EQ(HashFullBlocks("m", tokens, kBlockSize), expected);
}

TEST(BlockHashTest, NonPositiveBlockSizeHashesNothing) {
  EXPECT_THAT(HashFullBlocks("m", Iota(8), 0), IsEmpty());
  EXPECT_THAT(HashFullBlocks("m", Iota(8), -1), IsEmpty());
}

}  // namespace
}  // namespace tandem
