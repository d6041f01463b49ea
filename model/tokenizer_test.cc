#include "model/tokenizer.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kModelPath[] = TANDEM_SHARED_DIR "/models/stories260K.gguf";
constexpr char kReferencePath[] = TANDEM_SHARED_DIR "/data/reference/stories260K_greedy.jsonl";

bool FileExists(const char* path) { return std::ifstream(path).good(); }

// The stories260K tokenizer, or nullptr (with the test skipped) when the
// shared model is absent.
std::unique_ptr<Tokenizer> LoadStoriesTokenizer() {
  if (!FileExists(kModelPath)) return nullptr;
  auto gguf = GgufFile::Open(kModelPath);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return nullptr;
  auto tok = Tokenizer::FromGguf(**gguf);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return nullptr;
  return std::move(tok).value();
}

#define LOAD_STORIES_OR_SKIP(var)                                          \
  if (!FileExists(kModelPath)) GTEST_SKIP() << kModelPath << " not found"; \
  std::unique_ptr<Tokenizer> var = LoadStoriesTokenizer();                 \
  ASSERT_NE(var, nullptr)

std::vector<std::string> PiecesOf(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(tok.vocabulary().tokens[id]);
  return pieces;
}

int32_t IdOf(const Tokenizer& tok, std::string_view piece) {
  const auto& tokens = tok.vocabulary().tokens;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] == piece) return static_cast<int32_t>(i);
  }
  ADD_FAILURE() << "no token '" << piece << "'";
  return -1;
}

// ---------------------------------------------------------------------------
// stories260K: llama.cpp's vocabulary and reference outputs.

TEST(StoriesTokenizerTest, LoadsGgufVocabulary) {
  LOAD_STORIES_OR_SKIP(tok);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->vocabulary().unk_id, 0);
  EXPECT_TRUE(tok->vocabulary().add_bos);           // key absent: llama.cpp default
  EXPECT_TRUE(tok->vocabulary().add_space_prefix);  // key absent: llama.cpp default
  EXPECT_EQ(tok->vocabulary().types[1], TokenType::kControl);
  EXPECT_EQ(tok->vocabulary().types[3], TokenType::kByte);
  EXPECT_EQ(tok->vocabulary().tokens[3], "<0x00>");
  EXPECT_TRUE(tok->IsEndOfGeneration(2));
  EXPECT_FALSE(tok->IsEndOfGeneration(1));
}

TEST(StoriesTokenizerTest, MatchesLlamaCppReference) {
  if (!FileExists(kReferencePath)) GTEST_SKIP() << kReferencePath << " not found";
  LOAD_STORIES_OR_SKIP(tok);
  std::ifstream in(kReferencePath);
  std::string line;
  int records = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json record = nlohmann::json::parse(line);
    const std::string prompt = record.at("prompt").get<std::string>();
    SCOPED_TRACE(prompt);
    EXPECT_EQ(tok->Encode(prompt, /*add_bos=*/true),
              record.at("prompt_token_ids").get<std::vector<int32_t>>());
    EXPECT_EQ(tok->Decode(record.at("generated_token_ids").get<std::vector<int32_t>>()),
              record.at("generated_text").get<std::string>());
    ++records;
  }
  EXPECT_GT(records, 0);
}

// Ids from llama.cpp's own llama_tokenize(add_special=true, parse_special=false)
// on stories260K.gguf (libllama as shipped in node-llama-cpp 3.22.1).
TEST(StoriesTokenizerTest, MatchesLlamaCppOnEdgeCases) {
  LOAD_STORIES_OR_SKIP(tok);
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"", {1}},
      {"Hello world", {1, 346, 306, 414, 263, 304, 341}},
      {"  two  spaces\tand\ttabs\nnew line\n\n",
       {1,  410, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419, 12, 412, 264,
        12, 413, 412, 430, 419, 13,  416, 411, 424, 278, 271, 411, 13, 13}},
      {"h\xC3\xA9llo w\xC3\xB6rld", {1, 270, 485, 306, 414, 263, 198, 185, 420, 341}},
      {"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",  // 日本語
       {1, 410, 233, 154, 168, 233, 159, 175, 235, 173, 161}},
      {"emoji \xF0\x9F\x98\x80!", {1, 344, 423, 414, 449, 417, 410, 243, 162, 155, 131, 443}},
      // Special-token text is plain text with parse_special=false.
      {"<s>hi</s><unk>", {1, 410, 504, 419, 505, 415, 417, 504, 492, 419, 505, 504, 379, 433, 505}},
      {"<0x41>", {1, 410, 504, 477, 444, 484, 475, 505}},
      {" leading", {1, 410, 278, 411, 380, 299}},
      {"trailing ", {1, 259, 420, 412, 290, 299, 410}},
      {" ", {1, 410, 410}},
      {"\n", {1, 410, 13}},
      {"a", {1, 261}},
      {"The cat's toys, 123 and 4.5%?", {1,   291, 280, 294, 439, 419, 267, 422, 419, 432, 410,
                                         475, 479, 472, 269, 410, 484, 426, 480, 501, 450}},
      // A literal U+2581 is indistinguishable from an escaped space.
      {"a\xE2\x96\x81"
       "b",
       {1, 261, 268}},
      // Malformed UTF-8: llama.cpp groups a lead byte with the bytes its
      // high nibble announces, valid continuations or not ("\xC3(" is one
      // symbol, as is "\xF0ab"), and a stray continuation byte stands alone.
      {"\xC3(x", {1, 410, 198, 43, 444}},
      {"\x80"
       "abc",
       {1, 410, 131, 412, 430, 429}},
      {"ab\xF0"
       "ab",
       {1, 261, 430, 243, 100, 101}},
      // Spaces are escaped before the split, so a truncated lead byte can
      // swallow (part of) the "\xE2\x96\x81" of a following space.
      {"\xF2 \x02"
       "a",
       {1, 410, 245, 229, 153, 132, 5, 412}},
      {"\xC3 ", {1, 410, 198, 229, 153, 132}},
  };
  for (const auto& [text, ids] : cases) {
    SCOPED_TRACE(absl::CHexEscape(text));
    EXPECT_EQ(tok->Encode(text, /*add_bos=*/true), ids);
  }
}

TEST(StoriesTokenizerTest, AddBosFalseOmitsBos) {
  LOAD_STORIES_OR_SKIP(tok);
  EXPECT_THAT(tok->Encode("Once upon a time", /*add_bos=*/false), ElementsAre(403, 407, 261, 378));
  EXPECT_TRUE(tok->Encode("", /*add_bos=*/false).empty());
}

TEST(StoriesTokenizerTest, ByteFallback) {
  LOAD_STORIES_OR_SKIP(tok);
  const int32_t space = IdOf(*tok, "\xE2\x96\x81");
  // ö (C3 B6) and 😀 (F0 9F 98 80) are in no piece: one <0xXX> token per byte.
  EXPECT_EQ(tok->Encode("\xC3\xB6", /*add_bos=*/false),
            (std::vector<int32_t>{space, IdOf(*tok, "<0xC3>"), IdOf(*tok, "<0xB6>")}));
  EXPECT_EQ(tok->Encode("\xF0\x9F\x98\x80", /*add_bos=*/false),
            (std::vector<int32_t>{space, IdOf(*tok, "<0xF0>"), IdOf(*tok, "<0x9F>"), IdOf(*tok, "<0x98>"),
                                  IdOf(*tok, "<0x80>")}));
  // Byte tokens are ids 3..258 for bytes 0..255.
  EXPECT_EQ(IdOf(*tok, "<0xC3>"), 3 + 0xC3);
  EXPECT_EQ(tok->TokenToPiece(3 + 0xC3), "\xC3");
  EXPECT_EQ(tok->Decode({3 + 0xC3, 3 + 0xB6}), "\xC3\xB6");
  // é, by contrast, is a piece of its own.
  EXPECT_EQ(tok->Encode("\xC3\xA9", /*add_bos=*/false),
            (std::vector<int32_t>{space, IdOf(*tok, "\xC3\xA9")}));
}

TEST(StoriesTokenizerTest, TokenToPiece) {
  LOAD_STORIES_OR_SKIP(tok);
  EXPECT_EQ(tok->TokenToPiece(0), "");  // <unk>: unknown
  EXPECT_EQ(tok->TokenToPiece(1), "");  // <s>: control
  EXPECT_EQ(tok->TokenToPiece(2), "");  // </s>: control
  EXPECT_EQ(tok->TokenToPiece(3 + 'A'), "A");
  EXPECT_EQ(tok->TokenToPiece(3 + '\n'), "\n");
  EXPECT_EQ(tok->TokenToPiece(3), std::string(1, '\0'));
  EXPECT_EQ(tok->TokenToPiece(403), " Once");
  EXPECT_EQ(tok->TokenToPiece(410), " ");
  EXPECT_EQ(tok->TokenToPiece(-1), "");
  EXPECT_EQ(tok->TokenToPiece(512), "");
  EXPECT_EQ(tok->Decode({1, 403, 407, 261, 378, 2}), " Once upon a time");
}

// Decoding what was encoded gives the text back behind the dummy-prefix
// space: every character is either covered by normal pieces ("▁" back to " ")
// or by byte tokens, and BOS decodes to nothing. Exceptions, as in llama.cpp:
// "" encodes to BOS alone (no prefix, so it decodes to ""); a literal U+2581
// in the input comes back as a space; and in malformed UTF-8 a lead byte
// right before a space takes bytes of that space's escape "\xE2\x96\x81",
// which then come back as those bytes, not as a space.
TEST(StoriesTokenizerTest, RoundTrips) {
  LOAD_STORIES_OR_SKIP(tok);
  std::vector<std::string> texts = {
      "Once upon a time",
      "Hello, world! How are you? (fine) [ok] {x} a-b_c; \"quoted\" 'single'",
      "multiple   spaces    here",
      "  leading and trailing  ",
      "new\nlines\n\nand\ttabs\t\t\r\n",
      "h\xC3\xA9llo w\xC3\xB6rld",
      "\xF0\x9F\x98\x80\xF0\x9F\x8E\x89 emoji \xF0\x9F\x91\x8D",
      "\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97\xE7\xAC\xA6 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
      "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",  // CJK and Hangul
      "<s> </s> <unk> <0x41>",
      std::string("nul\0byte", 8),
      "0123456789 ~`!@#$%^&*()_+=|\\/<>",
  };
  // Random valid UTF-8 (code points from every encoded length, no U+2581).
  std::mt19937 rng(20240601);
  auto append_utf8 = [](uint32_t cp, std::string* s) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  };
  const uint32_t kRangeEnd[] = {0x80, 0x800, 0x10000, 0x110000};
  for (int i = 0; i < 200; ++i) {
    std::string s;
    const int length = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < length; ++j) {
      uint32_t cp = rng() % kRangeEnd[rng() % 4];
      if ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581) cp = ' ';
      append_utf8(cp, &s);
    }
    texts.push_back(std::move(s));
  }
  // Random bytes, malformed UTF-8 included, but no spaces (see above): byte
  // fallback still round-trips.
  for (int i = 0; i < 200; ++i) {
    std::string s;
    const int length = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < length; ++j) {
      const char c = static_cast<char>(rng() % 256);
      s.push_back(c == ' ' ? 'x' : c);
    }
    if (s.find("\xE2\x96\x81") != std::string::npos) continue;
    texts.push_back(std::move(s));
  }
  for (const std::string& text : texts) {
    SCOPED_TRACE(absl::CHexEscape(text));
    const std::vector<int32_t> ids = tok->Encode(text, /*add_bos=*/true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], tok->bos_id());
    EXPECT_EQ(tok->Decode(ids), " " + text);
  }
  EXPECT_EQ(tok->Decode(tok->Encode("", /*add_bos=*/true)), "");
  EXPECT_EQ(tok->Decode(tok->Encode("a\xE2\x96\x81"
                                    "b",
                                    /*add_bos=*/true)),
            " a b");
  EXPECT_EQ(tok->Decode(tok->Encode("\xF2 a", /*add_bos=*/true)),
            " \xF2\xE2\x96\x81"
            "a");
}

// ---------------------------------------------------------------------------
// Hand-built vocabularies.

// <unk>, <s>, </s>, then `pieces` as normal tokens with their scores. No byte
// tokens unless `with_bytes`.
Vocabulary MakeVocab(const std::vector<std::pair<std::string, float>>& pieces, bool with_bytes = false) {
  Vocabulary v;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.scores = {0, 0, 0};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  if (with_bytes) {
    for (int b = 0; b < 256; ++b) {
      v.tokens.push_back(absl::StrFormat("<0x%02X>", b));
      v.scores.push_back(0);
      v.types.push_back(TokenType::kByte);
    }
  }
  for (const auto& [piece, score] : pieces) {
    v.tokens.push_back(piece);
    v.scores.push_back(score);
    v.types.push_back(TokenType::kNormal);
  }
  v.add_space_prefix = false;
  return v;
}

std::vector<std::string> EncodePieces(const Vocabulary& vocab, std::string_view text) {
  auto tok = Tokenizer::FromVocabulary(vocab);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return {};
  return PiecesOf(**tok, (*tok)->Encode(text, /*add_bos=*/false));
}

TEST(TinyVocabTest, HighestScoringPairMergesFirst) {
  // "ab" and "bc" compete for the "b" in "abc": the better score wins.
  EXPECT_THAT(EncodePieces(MakeVocab({{"a", 0}, {"b", 0}, {"c", 0}, {"ab", -2}, {"bc", -1}}), "abc"),
              ElementsAre("a", "bc"));
  EXPECT_THAT(EncodePieces(MakeVocab({{"a", 0}, {"b", 0}, {"c", 0}, {"ab", -1}, {"bc", -2}}), "abc"),
              ElementsAre("ab", "c"));
}

TEST(TinyVocabTest, TiesGoToTheLeftmostPair) {
  EXPECT_THAT(EncodePieces(MakeVocab({{"a", 0}, {"b", 0}, {"c", 0}, {"ab", -1}, {"bc", -1}}), "abc"),
              ElementsAre("ab", "c"));
  const Vocabulary aa = MakeVocab({{"a", 0}, {"aa", -1}});
  EXPECT_THAT(EncodePieces(aa, "aaa"), ElementsAre("aa", "a"));
  EXPECT_THAT(EncodePieces(aa, "aaaaa"), ElementsAre("aa", "aa", "a"));
}

TEST(TinyVocabTest, MergesPairsNotLongestMatch) {
  // "abcd" is a piece, but only pairs of current symbols merge: "bc" goes
  // first and no pair forms "abcd" afterwards.
  EXPECT_THAT(
      EncodePieces(
          MakeVocab(
              {{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"ab", -1}, {"cd", -2}, {"bc", 0}, {"abcd", 10}}),
          "abcd"),
      ElementsAre("a", "bc", "d"));
  // Without "bc" the pairs build it up.
  EXPECT_THAT(
      EncodePieces(MakeVocab({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"ab", -1}, {"cd", -2}, {"abcd", 10}}),
                   "abcd"),
      ElementsAre("abcd"));
}

TEST(TinyVocabTest, StaleQueueEntriesAreSkipped) {
  // After "bc" merges, the queued "ab" and "cd" still outrank "bcd" but are
  // stale (their symbols were merged away or grew), so they are skipped.
  EXPECT_THAT(
      EncodePieces(
          MakeVocab({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"bc", 5}, {"ab", 1}, {"cd", 1}, {"bcd", -3}}),
          "abcd"),
      ElementsAre("a", "bcd"));
}

TEST(TinyVocabTest, SpacePrefixAndEscaping) {
  Vocabulary v = MakeVocab({{"\xE2\x96\x81", 0},
                            {"a", 0},
                            {"b", 0},
                            {"\xE2\x96\x81"
                             "a",
                             -1},
                            {"\xE2\x96\x81"
                             "b",
                             -1}});
  EXPECT_THAT(EncodePieces(v, "a b"), ElementsAre("a",
                                                  "\xE2\x96\x81"
                                                  "b"));
  v.add_space_prefix = true;
  EXPECT_THAT(EncodePieces(v, "a b"), ElementsAre("\xE2\x96\x81"
                                                  "a",
                                                  "\xE2\x96\x81"
                                                  "b"));
  EXPECT_THAT(EncodePieces(v, "a  b"), ElementsAre("\xE2\x96\x81"
                                                   "a",
                                                   "\xE2\x96\x81",
                                                   "\xE2\x96\x81"
                                                   "b"));
  // No prefix on empty text.
  EXPECT_THAT(EncodePieces(v, ""), ElementsAre());
}

TEST(TinyVocabTest, ByteFallbackWithoutByteTokens) {
  // No <0xXX> tokens: llama.cpp tries the raw one-byte piece, and we use
  // <unk> where that is missing too (llama.cpp would throw).
  Vocabulary v = MakeVocab({{"a", 0}, {"\xC3", 0}});
  EXPECT_THAT(EncodePieces(v, "a\xC3\xA9"), ElementsAre("a", "\xC3", "<unk>"));
  EXPECT_THAT(EncodePieces(MakeVocab({{"a", 0}}, /*with_bytes=*/true), "a\xC3\xA9"),
              ElementsAre("a", "<0xC3>", "<0xA9>"));
}

TEST(TinyVocabTest, UserDefinedTokensAreMatchedFirst) {
  // As llama.cpp with parse_special=false: user-defined tokens are split out
  // of the text before the merge (and the dummy prefix follows them), while
  // control tokens stay plain text.
  Vocabulary v = MakeVocab({{"\xE2\x96\x81", 0},
                            {"a", 0},
                            {"<", 0},
                            {"s", 0},
                            {">", 0},
                            {"\xE2\x96\x81"
                             "a",
                             -1}});
  v.tokens.push_back("<u>");
  v.scores.push_back(0);
  v.types.push_back(TokenType::kUserDefined);
  v.add_space_prefix = true;
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromVocabulary(v));
  EXPECT_THAT(PiecesOf(*tok, tok->Encode("a<u>a<s>", /*add_bos=*/true)), ElementsAre("<s>",
                                                                                     "\xE2\x96\x81"
                                                                                     "a",
                                                                                     "<u>",
                                                                                     "\xE2\x96\x81"
                                                                                     "a",
                                                                                     "<", "s", ">"));
  EXPECT_EQ(tok->Decode(tok->Encode("a<u>a", /*add_bos=*/true)), " a<u> a");
  // With parse_special, control tokens ("<s>", as MakeVocab types it) are
  // split out too, followed by a dummy prefix, as llama.cpp's parse_special.
  EXPECT_THAT(PiecesOf(*tok, tok->Encode("a<s>a", /*add_bos=*/false, /*parse_special=*/true)),
              ElementsAre("\xE2\x96\x81"
                          "a",
                          "<s>",
                          "\xE2\x96\x81"
                          "a"));
  EXPECT_EQ(tok->Decode(tok->Encode("a<s>", false, true), /*special=*/true), " a<s>");
}

TEST(TinyVocabTest, TokenToPieceByType) {
  Vocabulary v =
      MakeVocab({{"\xE2\x96\x81"
                  "x\xE2\x96\x81",
                  0}});
  v.tokens.insert(v.tokens.end(), {"\xE2\x96\x81"
                                   "user",
                                   "unused", "<0x0A>", "undef"});
  v.scores.insert(v.scores.end(), {0, 0, 0, 0});
  v.types.insert(v.types.end(),
                 {TokenType::kUserDefined, TokenType::kUnused, TokenType::kByte, TokenType::kUndefined});
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromVocabulary(v));
  EXPECT_EQ(tok->TokenToPiece(3), " x ");
  EXPECT_EQ(tok->TokenToPiece(4),
            "\xE2\x96\x81"
            "user");  // user-defined: as is
  EXPECT_EQ(tok->TokenToPiece(5), "");
  EXPECT_EQ(tok->TokenToPiece(6), "\n");
  EXPECT_EQ(tok->TokenToPiece(7), "");
}

TEST(TinyVocabTest, RejectsInconsistentVocabulary) {
  Vocabulary v = MakeVocab({{"a", 0}});
  v.scores.pop_back();
  EXPECT_THAT(Tokenizer::FromVocabulary(v),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scores")));
  v = MakeVocab({{"a", 0}});
  v.types.push_back(TokenType::kNormal);
  EXPECT_THAT(Tokenizer::FromVocabulary(v), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("types")));
  v = MakeVocab({{"a", 0}});
  v.eos_id = 4;
  EXPECT_THAT(Tokenizer::FromVocabulary(v),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eos_id")));
  v = MakeVocab({{"a", 0}});
  v.bos_id = -1;
  EXPECT_THAT(Tokenizer::FromVocabulary(v),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bos_id")));
  v = MakeVocab({{"a", 0}});
  v.model = "bert";
  EXPECT_THAT(Tokenizer::FromVocabulary(v),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("unsupported tokenizer")));
}

// ---------------------------------------------------------------------------
// FromGguf on GGUF images built here.

class GgufBuilder {
 public:
  GgufBuilder& String(std::string_view key, std::string_view value) {
    Key(key, 8);
    Str(value);
    return *this;
  }
  GgufBuilder& Uint32(std::string_view key, uint32_t value) {
    Key(key, 4);
    Pod(value);
    return *this;
  }
  GgufBuilder& Int32(std::string_view key, int32_t value) {
    Key(key, 5);
    Pod(value);
    return *this;
  }
  GgufBuilder& Bool(std::string_view key, bool value) {
    Key(key, 7);
    Pod(static_cast<uint8_t>(value));
    return *this;
  }
  GgufBuilder& StringArray(std::string_view key, const std::vector<std::string>& values) {
    Key(key, 9);
    Pod(uint32_t{8});
    Pod(static_cast<uint64_t>(values.size()));
    for (const std::string& v : values) Str(v);
    return *this;
  }
  GgufBuilder& FloatArray(std::string_view key, const std::vector<float>& values) {
    Key(key, 9);
    Pod(uint32_t{6});
    Pod(static_cast<uint64_t>(values.size()));
    for (float v : values) Pod(v);
    return *this;
  }
  GgufBuilder& Int32Array(std::string_view key, const std::vector<int32_t>& values) {
    Key(key, 9);
    Pod(uint32_t{5});
    Pod(static_cast<uint64_t>(values.size()));
    for (int32_t v : values) Pod(v);
    return *this;
  }

  // GGUF v3, no tensors, padded to the default alignment.
  std::string Build() const {
    std::string out = "GGUF";
    AppendPod(uint32_t{3}, &out);
    AppendPod(uint64_t{0}, &out);  // tensors
    AppendPod(kv_count_, &out);
    out += kvs_;
    out.resize((out.size() + 31) / 32 * 32, '\0');
    return out;
  }

 private:
  template <typename T>
  static void AppendPod(T value, std::string* out) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out->append(bytes, sizeof(T));
  }
  template <typename T>
  void Pod(T value) {
    AppendPod(value, &kvs_);
  }
  void Str(std::string_view s) {
    Pod(static_cast<uint64_t>(s.size()));
    kvs_.append(s);
  }
  void Key(std::string_view key, uint32_t type) {
    Str(key);
    Pod(type);
    ++kv_count_;
  }

  std::string kvs_;
  uint64_t kv_count_ = 0;
};

const std::vector<std::string> kGgufTokens = {"<unk>",
                                              "<s>",
                                              "</s>",
                                              "\xE2\x96\x81",
                                              "a",
                                              "\xE2\x96\x81"
                                              "a"};

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromImage(const GgufBuilder& builder) {
  auto gguf = GgufFile::FromBuffer(builder.Build());
  if (!gguf.ok()) return gguf.status();
  return Tokenizer::FromGguf(**gguf);
}

TEST(FromGgufTest, DefaultsForOptionalKeys) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "llama").StringArray("tokenizer.ggml.tokens", kGgufTokens);
  ASSERT_OK_AND_ASSIGN(auto tok, TokenizerFromImage(b));
  const Vocabulary& v = tok->vocabulary();
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_TRUE(v.add_bos);
  EXPECT_TRUE(v.add_space_prefix);
  EXPECT_THAT(v.scores, ::testing::Each(0.0f));
  EXPECT_THAT(v.types, ::testing::Each(TokenType::kNormal));
  EXPECT_THAT(tok->Encode("a", /*add_bos=*/true), ElementsAre(1, 5));
}

TEST(FromGgufTest, ReadsEveryKey) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", kGgufTokens)
      .FloatArray("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3})
      .Int32Array("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 99})
      .Uint32("tokenizer.ggml.unknown_token_id", 3)
      .Uint32("tokenizer.ggml.bos_token_id", 2)
      .Int32("tokenizer.ggml.eos_token_id", 1)
      .Uint32("tokenizer.ggml.padding_token_id", 4294967295u)
      .Uint32("tokenizer.ggml.seperator_token_id", 4294967295u)
      .Bool("tokenizer.ggml.add_bos_token", false)
      .Bool("tokenizer.ggml.add_space_prefix", false);
  ASSERT_OK_AND_ASSIGN(auto tok, TokenizerFromImage(b));
  const Vocabulary& v = tok->vocabulary();
  EXPECT_EQ(v.unk_id, 3);
  EXPECT_EQ(v.bos_id, 2);
  EXPECT_EQ(v.eos_id, 1);
  EXPECT_FALSE(v.add_bos);
  EXPECT_FALSE(v.add_space_prefix);
  EXPECT_THAT(v.scores, ElementsAre(0, 0, 0, -1, -2, -3));
  EXPECT_EQ(v.types[0], TokenType::kUnknown);
  EXPECT_EQ(v.types[5], TokenType::kUndefined);  // out-of-range type, as llama.cpp
  EXPECT_THAT(tok->Encode("a", /*add_bos=*/true), ElementsAre(4));
}

TEST(FromGgufTest, UnsetSentinelKeepsDefault) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", kGgufTokens)
      .Uint32("tokenizer.ggml.unknown_token_id", 4294967295u)
      .Int32("tokenizer.ggml.eos_token_id", -1);
  ASSERT_OK_AND_ASSIGN(auto tok, TokenizerFromImage(b));
  EXPECT_EQ(tok->vocabulary().unk_id, 0);
  EXPECT_EQ(tok->eos_id(), 2);
}

TEST(FromGgufTest, UnsupportedModel) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "bert").StringArray("tokenizer.ggml.tokens", kGgufTokens);
  EXPECT_THAT(TokenizerFromImage(b),
              StatusIs(absl::StatusCode::kUnimplemented,
                       HasSubstr("unsupported tokenizer model 'bert' (supported: llama, gpt2)")));
}

// A gpt2 (byte-level BPE) vocabulary as GGUF stores it: the printable ASCII
// bytes spell themselves, "Ġ" (U+0120) is the space; merges "a b".
TEST(FromGgufTest, Gpt2ByteLevelBpe) {
  std::vector<std::string> tokens;
  for (char c = 33; c < 127; ++c) tokens.push_back(std::string(1, c));  // ids 0..93
  tokens.push_back("\xC4\xA0");                                         // 94: ' '
  tokens.push_back("\xC4\xA0h");                                        // 95
  tokens.push_back("hi");                                               // 96
  tokens.push_back("\xC4\xA0hi");                                       // 97
  tokens.push_back("<|eot_id|>");                                       // 98, control
  std::vector<int32_t> types(tokens.size(), 1);
  types[98] = 3;
  const auto build = [&](std::string_view pre) {
    GgufBuilder b;
    b.String("tokenizer.ggml.model", "gpt2")
        .String("tokenizer.ggml.pre", pre)
        .StringArray("tokenizer.ggml.tokens", tokens)
        .Int32Array("tokenizer.ggml.token_type", types)
        .StringArray("tokenizer.ggml.merges", {"\xC4\xA0 h", "h i", "\xC4\xA0h i"})
        .Uint32("tokenizer.ggml.bos_token_id", 0)
        .Uint32("tokenizer.ggml.eos_token_id", 1);
    return b;
  };
  ASSERT_OK_AND_ASSIGN(auto tok, TokenizerFromImage(build("llama-bpe")));
  const int32_t h = 'h' - 33;
  const int32_t i = 'i' - 33;
  // "hi hi": pre-tokens "hi", " hi"; "Ġh" (rank 0) merges before "hi" (rank 1)
  // in " hi", then "Ġh"+"i" (rank 2).
  EXPECT_THAT(tok->Encode("hi hi", false), ElementsAre(96, 97));
  // llama-bpe adds BOS by default (no add_bos_token key).
  EXPECT_THAT(tok->Encode("ih", true), ElementsAre(0, i, h));
  EXPECT_THAT(tok->Encode("<|eot_id|>", false, true), ElementsAre(98));
  EXPECT_TRUE(tok->IsEndOfGeneration(98));
  EXPECT_EQ(tok->Decode(tok->Encode("hi hi", false)), "hi hi");
  EXPECT_EQ(tok->TokenToPiece(97), " hi");
  EXPECT_THAT(TokenizerFromImage(build("unknown-pre")),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("unknown-pre")));
}

TEST(FromGgufTest, MissingRequiredKeys) {
  GgufBuilder no_model;
  no_model.StringArray("tokenizer.ggml.tokens", kGgufTokens);
  EXPECT_THAT(TokenizerFromImage(no_model),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer.ggml.model")));
  GgufBuilder no_tokens;
  no_tokens.String("tokenizer.ggml.model", "llama");
  EXPECT_THAT(TokenizerFromImage(no_tokens),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tokenizer.ggml.tokens")));
}

TEST(FromGgufTest, InconsistentArraysNameTheKey) {
  GgufBuilder scores;
  scores.String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", kGgufTokens)
      .FloatArray("tokenizer.ggml.scores", {0, 0, 0});
  EXPECT_THAT(TokenizerFromImage(scores),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer.ggml.scores")));
  GgufBuilder types;
  types.String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", kGgufTokens)
      .Int32Array("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 1, 1});
  EXPECT_THAT(TokenizerFromImage(types),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer.ggml.token_type")));
}

TEST(FromGgufTest, SpecialIdOutOfRange) {
  GgufBuilder b;
  b.String("tokenizer.ggml.model", "llama")
      .StringArray("tokenizer.ggml.tokens", kGgufTokens)
      .Uint32("tokenizer.ggml.bos_token_id", 6);
  EXPECT_THAT(TokenizerFromImage(b),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tokenizer.ggml.bos_token_id")));
  GgufBuilder tiny;  // defaults that do not fit a 2-token vocabulary
  tiny.String("tokenizer.ggml.model", "llama").StringArray("tokenizer.ggml.tokens", {"a", "b"});
  EXPECT_THAT(TokenizerFromImage(tiny), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eos_id")));
}

}  // namespace
}  // namespace tandem::model
