#include "kvstore/block_format.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;

TEST(Crc32cTest, MatchesTheStandardCheckValueAndChains) {
  const std::string s = "123456789";
  const auto bytes = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  EXPECT_EQ(Crc32c(bytes), 0xE3069283u);  // the CRC-32C catalogue's check value
  EXPECT_EQ(Crc32c(bytes.subspan(4), Crc32c(bytes.subspan(0, 4))), Crc32c(bytes));
}

TEST(BlockFormatTest, RoundTripsTokensAndPayloadBitExact) {
  const std::vector<int32_t> tokens = TokensFor(7, 16);
  const std::vector<uint8_t> payload = PayloadFor(7, 5000);
  const std::string value = EncodeBlock(
      {.model_id_hash = ModelIdHash("m"), .block_hash = 0x1234, .tokens = tokens, .payload = payload});
  ASSERT_EQ(value.size(), EncodedBlockBytes(16, 5000));
  ASSERT_OK_AND_ASSIGN(BlockView view, DecodeBlock(value, /*verify_checksum=*/true));
  EXPECT_EQ(view.model_id_hash, ModelIdHash("m"));
  EXPECT_EQ(view.block_hash, 0x1234u);
  EXPECT_EQ(view.Tokens(), tokens);
  EXPECT_TRUE(view.TokensEqual(tokens));
  EXPECT_EQ(std::vector<uint8_t>(view.payload.begin(), view.payload.end()), payload);
}

TEST(BlockFormatTest, EveryFlippedByteIsCaught) {
  const std::vector<int32_t> tokens = TokensFor(3, 4);
  const std::vector<uint8_t> payload = PayloadFor(3, 100);
  const std::string value =
      EncodeBlock({.model_id_hash = 1, .block_hash = 2, .tokens = tokens, .payload = payload});
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] ^= 0x10;
    EXPECT_FALSE(DecodeBlock(bad, /*verify_checksum=*/true).ok()) << "byte " << i;
  }
}

TEST(BlockFormatTest, RejectsTruncatedAndForeignValues) {
  const std::vector<int32_t> tokens = TokensFor(1, 4);
  const std::vector<uint8_t> payload = PayloadFor(1, 64);
  const std::string value =
      EncodeBlock({.model_id_hash = 1, .block_hash = 2, .tokens = tokens, .payload = payload});
  EXPECT_THAT(DecodeBlock(value.substr(0, 20), false), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeBlock(value.substr(0, value.size() - 1), false), StatusIs(absl::StatusCode::kDataLoss));
  std::string other_version = value;
  other_version[4] = 9;
  EXPECT_THAT(DecodeBlock(other_version, false), StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace tandem::kvstore
