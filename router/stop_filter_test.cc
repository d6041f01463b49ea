#include "router/stop_filter.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::router {
namespace {

// Whether `s` is well-formed UTF-8 (no truncated or stray sequences).
bool IsWholeUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// Pushes `chunks`, checking each output is whole UTF-8; returns the outputs
// with the flush (if the stream did not stop) as the last element.
std::vector<std::string> PushAll(StopFilter& filter, const std::vector<std::string>& chunks) {
  std::vector<std::string> out;
  for (const std::string& c : chunks) {
    out.push_back(filter.Push(c));
    EXPECT_TRUE(IsWholeUtf8(out.back())) << "chunk '" << c << "' emitted a split character";
    if (filter.stopped()) return out;
  }
  out.push_back(filter.Flush());
  EXPECT_TRUE(IsWholeUtf8(out.back()));
  return out;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string s;
  for (const std::string& p : parts) s += p;
  return s;
}

// The review's case: holding back 2 bytes of "Hello €" used to cut "€"
// (3 bytes) after its first byte and send "o \xe2", then "\x82\xacu".
TEST(StopFilterTest, NeverSplitsAMultiByteCharacter) {
  StopFilter filter({"END"});
  std::vector<std::string> out = PushAll(filter, {"Hello ", "€", "uro"});
  EXPECT_FALSE(filter.stopped());
  EXPECT_EQ(out, (std::vector<std::string>{"Hell", "o ", "€u", "ro"}));
  EXPECT_EQ(Join(out), "Hello €uro");
}

TEST(StopFilterTest, HoldsBackWholeCharactersOfEveryWidth) {
  // 2-, 3- and 4-byte characters, each arriving alone after ASCII.
  for (const std::string ch : {"é", "€", "日", "😀"}) {
    SCOPED_TRACE(ch);
    StopFilter filter({"STOP!"});  // holds back 4 bytes
    std::vector<std::string> out = PushAll(filter, {"ab", ch, "c", ch + ch, "d"});
    EXPECT_EQ(Join(out), "ab" + ch + "c" + ch + ch + "d");
  }
}

TEST(StopFilterTest, StopStringSpanningChunksEndsTheStream) {
  StopFilter filter({"END"});
  std::vector<std::string> out = PushAll(filter, {"the E", "N", "D of it"});
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(Join(out), "the ");
  EXPECT_EQ(filter.Flush(), "");  // nothing after a stop
}

TEST(StopFilterTest, StopStringOfMultiByteCharacters) {
  // The stop string starts with a 3-byte character and follows one.
  StopFilter filter({"€!"});
  std::vector<std::string> out = PushAll(filter, {"5€ and 6", "€", "!", " more"});
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(Join(out), "5€ and 6");
}

TEST(StopFilterTest, ANearMissBesideMultiByteCharactersIsSent) {
  // "€" followed by something other than the stop string's rest: all of it
  // is eventually sent, whole.
  StopFilter filter({"€uro"});
  std::vector<std::string> out = PushAll(filter, {"€", "ur", "o", "p", "€", "u"});
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(Join(out), "");

  StopFilter other({"€uro"});
  out = PushAll(other, {"€", "ur", "a", " ñ€", "u"});
  EXPECT_FALSE(other.stopped());
  EXPECT_EQ(Join(out), "€ura ñ€u");
}

TEST(StopFilterTest, FlushSendsTheHeldBackTail) {
  StopFilter filter({"XYZ"});
  // Holding back 2 bytes would cut "€" (3 bytes): all of it waits.
  EXPECT_EQ(filter.Push("abc€"), "abc");
  EXPECT_EQ(filter.Flush(), "€");
  EXPECT_EQ(filter.Flush(), "");
}

TEST(StopFilterTest, WithoutStopStringsEverythingPassesAtOnce) {
  StopFilter filter({});
  EXPECT_EQ(filter.Push("a€"), "a€");
  EXPECT_EQ(filter.Flush(), "");
  EXPECT_FALSE(filter.stopped());
}

TEST(StopFilterTest, TheEarliestOfSeveralStopStringsWins) {
  StopFilter filter({"world", "lo"});
  EXPECT_EQ(filter.Push("hello world"), "hel");
  EXPECT_TRUE(filter.stopped());
}

}  // namespace
}  // namespace tandem::router
