// BpeTokenizer and tokenizer.json on small hand-built vocabularies (the real
// Llama 3 / Qwen3 / Llama 2 files are checked against their reference in
// tests/tokenizer_reference_test.cc).
#include "model/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/tokenizer_json.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

// A Llama 2-style (SentencePiece BPE) tokenizer.json: <unk> <s> </s>, the 256
// byte tokens, then pieces built by the merges below.
Json Llama2StyleJson() {
  Json vocab = Json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int next = 259;
  for (const char* piece : {"\xE2\x96\x81", "h", "e", "l", "o", "w", "r", "d", "\xE2\x96\x81h", "ll", "llo",
                            "\xE2\x96\x81he", "\xE2\x96\x81hello", "\xE2\x96\x81w", "or", "\xE2\x96\x81wor",
                            "\xE2\x96\x81world", "\xE2\x96\x81worl"}) {
    vocab[piece] = next++;
  }
  Json merges =
      Json::array({"\xE2\x96\x81 h", "l l", "ll o", "\xE2\x96\x81h e", "\xE2\x96\x81he llo", "\xE2\x96\x81 w",
                   "o r", "\xE2\x96\x81w or", "\xE2\x96\x81wor l", "\xE2\x96\x81worl d"});
  Json added = Json::array();
  for (int id = 0; id < 3; ++id) {
    const char* content[] = {"<unk>", "<s>", "</s>"};
    added.push_back({{"id", id}, {"content", content[id]}, {"special", true}});
  }
  return Json{
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", merges},
        {"byte_fallback", true},
        {"unk_token", "<unk>"}}},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         Json::array({{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", Json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
  };
}

absl::StatusOr<HfTokenizer> FromJson(const Json& tokenizer, const Json& config = Json::object()) {
  return TokenizerFromHfFiles({.tokenizer_json = tokenizer.dump(), .tokenizer_config_json = config.dump()});
}

TEST(BpeTokenizerJsonTest, SentencePieceStyleMergesFallsBackToBytesAndAddsBos) {
  ASSERT_OK_AND_ASSIGN(HfTokenizer hf,
                       FromJson(Llama2StyleJson(), {{"bos_token", "<s>"}, {"eos_token", "</s>"}}));
  const Tokenizer& tok = *hf.tokenizer;
  // "hello world" -> "▁hello▁world": ▁hello (271) and ▁world (275).
  EXPECT_THAT(tok.Encode("hello world", false), ElementsAre(271, 275));
  EXPECT_THAT(tok.Encode("hello world", true), ElementsAre(1, 271, 275));
  // "é" is no piece: its UTF-8 bytes C3 A9 as byte tokens (3 + byte).
  EXPECT_THAT(tok.Encode("\xC3\xA9", false), ElementsAre(259, 3 + 0xC3, 3 + 0xA9));
  // Invalid UTF-8 goes out as bytes too.
  EXPECT_THAT(tok.Encode("\xFF", false), ElementsAre(259, 3 + 0xFF));
  // "<s>" is special: text unless parse_special; the Prepend normalizer puts
  // a "▁" in front of every section.
  EXPECT_THAT(tok.Encode("<s>hello", false, true), ElementsAre(1, 271));
  EXPECT_NE(tok.Encode("<s>", false, false), std::vector<int32_t>{1});
  EXPECT_EQ(tok.Decode(tok.Encode("hello world \xC3\xA9", false)), " hello world \xC3\xA9");
  EXPECT_EQ(tok.TokenToPiece(1), "");
  EXPECT_EQ(tok.TokenToPiece(1, /*special=*/true), "<s>");
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_TRUE(tok.IsEndOfGeneration(2));
}

// A byte-level vocabulary: the 256 byte characters, then "aa", "aaaa".
Vocabulary ByteLevelVocabulary() {
  Vocabulary v;
  v.model = "gpt2";
  for (int b = 0; b < 256; ++b) {
    // GPT-2's byte-to-unicode: printable Latin-1 as itself, others from U+0100.
    v.tokens.push_back("");
  }
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    v.tokens[b] = s;
  }
  v.tokens.push_back("aa");    // 256
  v.tokens.push_back("aaaa");  // 257
  v.tokens.push_back(
      "\xC4\xA0"
      "a");                       // 258 "Ġa" = " a"
  v.tokens.push_back("<|end|>");  // 259, control
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[259] = TokenType::kControl;
  v.merges = {"a a", "aa aa", "\xC4\xA0 a"};
  v.bos_id = v.eos_id = 259;
  v.add_bos = false;
  return v;
}

TEST(BpeTokenizerTest, ByteLevelMergesAndDecodesToRawBytes) {
  ASSERT_OK_AND_ASSIGN(BpeOptions options, BpeOptionsForGgufPre("gpt2"));
  ASSERT_OK_AND_ASSIGN(auto tok, BpeTokenizer::Create(ByteLevelVocabulary(), options));
  EXPECT_THAT(tok->Encode("aaaaa a", false), ElementsAre(257, 'a', 258));
  EXPECT_THAT(tok->Encode("<|end|>", false, true), ElementsAre(259));
  EXPECT_EQ(tok->Encode("<|end|>", false, false).size(), 7u);  // its bytes: no merges cover them
  EXPECT_TRUE(tok->IsEndOfGeneration(259));
  // A two-byte character is two byte tokens; each piece is one raw byte.
  const std::vector<int32_t> ids = tok->Encode("\xC3\xA9", false);
  ASSERT_THAT(ids, ElementsAre(0xC3, 0xA9));
  EXPECT_EQ(tok->TokenToPiece(ids[0]), "\xC3");
  EXPECT_EQ(tok->Decode(tok->Encode("x \xFF\xFE y\n\n", false)), "x \xFF\xFE y\n\n");
}

TEST(BpeTokenizerTest, AddedTokenStripsWhitespace) {
  ASSERT_OK_AND_ASSIGN(BpeOptions options, BpeOptionsForGgufPre("gpt2"));
  options.lstrip_ids = {259};
  options.rstrip_ids = {259};
  ASSERT_OK_AND_ASSIGN(auto tok, BpeTokenizer::Create(ByteLevelVocabulary(), options));
  // The spaces (and U+3000) on both sides of <|end|> go with it.
  EXPECT_THAT(tok->Encode("aa \xE3\x80\x80 <|end|>\t\n aa", false, true), ElementsAre(256, 259, 256));
  // Without parse_special there is no match, so nothing is stripped.
  EXPECT_EQ(tok->Decode(tok->Encode("aa  <|end|>  aa", false)), "aa  <|end|>  aa");
}

TEST(BpeTokenizerTest, LongRunsAreNotQuadratic) {
  ASSERT_OK_AND_ASSIGN(BpeOptions options, BpeOptionsForGgufPre("llama-bpe"));
  options.ignore_merges = false;
  ASSERT_OK_AND_ASSIGN(auto tok, BpeTokenizer::Create(ByteLevelVocabulary(), options));
  // 100 KB of one letter is one pre-token: 25,000 "aaaa".
  const std::vector<int32_t> ids = tok->Encode(std::string(100000, 'a'), false);
  EXPECT_EQ(ids.size(), 25000u);
  EXPECT_EQ(ids.front(), 257);
  // 100 KB of spaces and of punctuation.
  EXPECT_EQ(tok->Decode(tok->Encode(std::string(100000, ' '), false)), std::string(100000, ' '));
  EXPECT_EQ(tok->Encode(std::string(100000, '!'), false).size(), 100000u);
}

TEST(BpeTokenizerTest, GgufGpt2FromVocabulary) {
  Vocabulary v = ByteLevelVocabulary();
  v.pre = "qwen2";
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::FromVocabulary(v));
  EXPECT_THAT(tok->Encode("aaaa", false), ElementsAre(257));
  v.pre = "made-up";
  EXPECT_THAT(Tokenizer::FromVocabulary(v), StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("made-up")));
}

TEST(BpeTokenizerTest, Errors) {
  Vocabulary v = ByteLevelVocabulary();
  v.merges.push_back("aaaa zz");
  EXPECT_THAT(BpeTokenizer::Create(v, {}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("zz")));
  BpeOptions bad_regex;
  bad_regex.pre_tokenizer = {{.pattern = "(unclosed"}};
  EXPECT_THAT(BpeTokenizer::Create(ByteLevelVocabulary(), bad_regex),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("(unclosed")));
  Json unigram = Llama2StyleJson();
  unigram["model"]["type"] = "Unigram";
  EXPECT_THAT(FromJson(unigram), StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("Unigram")));
  Json wordpiece_pre = Llama2StyleJson();
  wordpiece_pre["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_THAT(FromJson(wordpiece_pre),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("BertPreTokenizer")));
  EXPECT_THAT(TokenizerFromHfFiles({.tokenizer_json = "{"}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LoadHfTokenizer("/nonexistent-dir"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace tandem::model
