#include "model/text_stream.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

std::unique_ptr<Tokenizer> ByteTokenizer() {
  Vocabulary v;
  v.tokens = {"<unk>", "<s>", "</s>",
              "\xE2\x96\x81"
              "a"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v.tokens.push_back(buf);
    v.types.push_back(TokenType::kByte);
  }
  v.scores.assign(v.tokens.size(), 0.0f);
  return *Tokenizer::FromVocabulary(v);
}

int32_t Byte(int b) { return 4 + b; }

TEST(TextStreamTest, HoldsBackPartialCharacters) {
  auto tok = ByteTokenizer();
  TextStream s(tok.get());
  // "é" = C3 A9, "😀" = F0 9F 98 80, split over tokens.
  EXPECT_EQ(s.Push(3), " a");
  EXPECT_EQ(s.Push(Byte(0xC3)), "");
  EXPECT_EQ(s.Push(Byte(0xA9)), "\xC3\xA9");
  EXPECT_EQ(s.Push(Byte(0xF0)), "");
  EXPECT_EQ(s.Push(Byte(0x9F)), "");
  EXPECT_EQ(s.Push(Byte(0x98)), "");
  EXPECT_EQ(s.Push(Byte(0x80)), "\xF0\x9F\x98\x80");
  EXPECT_EQ(s.Finish(), "");
}

TEST(TextStreamTest, InvalidBytesBecomeReplacementCharacters) {
  auto tok = ByteTokenizer();
  TextStream s(tok.get());
  EXPECT_EQ(s.Push(Byte(0xC3)), "");
  EXPECT_EQ(s.Push(Byte('x')), "\xEF\xBF\xBDx");  // lead byte then ASCII
  EXPECT_EQ(s.Push(Byte(0x80)), "\xEF\xBF\xBD");  // stray continuation
  EXPECT_EQ(s.Push(Byte(0xE2)), "");
  EXPECT_EQ(s.Finish(), "\xEF\xBF\xBD");                                       // cut short at the end
  EXPECT_EQ(TextStream::ToValidUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(TextStream::ToValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(TextStream::ToValidUtf8("ok \xE2\x96\x81"), "ok \xE2\x96\x81");
}

}  // namespace
}  // namespace tandem::model
