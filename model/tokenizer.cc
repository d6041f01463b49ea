// The Tokenizer factories, and the SentencePiece-style (GGUF "llama")
// tokenizer, matching llama.cpp's llm_tokenizer_spm and llama_token_to_piece.
// See tokenizer.h.
#include "model/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "model/bpe_tokenizer.h"

namespace tandem::model {
namespace {

// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's stand-in for a space.
constexpr std::string_view kSpaceMark = "\xE2\x96\x81";

constexpr char kModelKey[] = "tokenizer.ggml.model";
constexpr char kTokensKey[] = "tokenizer.ggml.tokens";
constexpr char kScoresKey[] = "tokenizer.ggml.scores";
constexpr char kTokenTypeKey[] = "tokenizer.ggml.token_type";
constexpr char kUnkKey[] = "tokenizer.ggml.unknown_token_id";
constexpr char kBosKey[] = "tokenizer.ggml.bos_token_id";
constexpr char kEosKey[] = "tokenizer.ggml.eos_token_id";
constexpr char kAddBosKey[] = "tokenizer.ggml.add_bos_token";
constexpr char kAddSpacePrefixKey[] = "tokenizer.ggml.add_space_prefix";
constexpr char kMergesKey[] = "tokenizer.ggml.merges";
constexpr char kPreKey[] = "tokenizer.ggml.pre";

// Byte length of the UTF-8 sequence a lead byte announces, exactly as
// llama.cpp's unicode_len_utf8: looked up from the high nibble, without
// checking continuation bytes (a stray continuation byte counts as 1).
size_t Utf8SequenceLength(uint8_t lead) {
  static constexpr uint8_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[lead >> 4];
}

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// `text` with every ' ' replaced by "▁" (llama_escape_whitespace).
void AppendEscaped(std::string_view text, std::string* out) {
  for (char c : text) {
    if (c == ' ') {
      out->append(kSpaceMark);
    } else {
      out->push_back(c);
    }
  }
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string ByteTokenText(uint8_t byte) { return absl::StrFormat("<0x%02X>", byte); }

// Reads an optional special-token id. Absent, or stored as the "unset"
// sentinel (-1 / 4294967295), leaves `*id` at its default; any other value
// must name a token.
absl::Status ReadTokenId(const GgufFile& gguf, const char* key, int64_t vocab_size, int32_t* id) {
  if (gguf.Find(key) == nullptr) return absl::OkStatus();
  TANDEM_ASSIGN_OR_RETURN(int64_t value, gguf.GetInt(key));
  if (value == -1 || value == int64_t{std::numeric_limits<uint32_t>::max()}) {
    return absl::OkStatus();
  }
  if (value < 0 || value >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " = ", value, " is outside the vocabulary of ", vocab_size, " tokens"));
  }
  *id = static_cast<int32_t>(value);
  return absl::OkStatus();
}

absl::Status CheckId(const char* what, int32_t id, size_t vocab_size) {
  if (id < 0 || static_cast<size_t>(id) >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary ", what, " ", id, " is outside the vocabulary of ", vocab_size, " tokens"));
  }
  return absl::OkStatus();
}

// One step of the SentencePiece merge: a symbol of the working text. Symbols
// form a doubly linked list through prev/next (-1 ends it); a symbol merged
// into its left neighbour keeps its slot with n == 0.
struct Symbol {
  int prev;
  int next;
  size_t offset;  // into the escaped text
  size_t n;       // bytes
};

// A candidate merge of two adjacent symbols into a vocabulary piece.
struct Bigram {
  int left;
  int right;
  float score;
  size_t size;  // bytes of the merged piece, to detect stale entries
};

// Max-heap order of llm_bigram_spm::comparator: the best score first, and
// among equal scores the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& l, const Bigram& r) const {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  }
};

// The GGUF "llama" tokenizer.
class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(Vocabulary vocab);

 protected:
  std::vector<int32_t> EncodeImpl(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string PieceImpl(int32_t id, bool special) const override;

 private:
  // Id of `piece`, or -1.
  int32_t PieceId(std::string_view piece) const;
  // The token byte fallback emits for `byte`: <0xXX>, else the one-byte
  // piece, else unk_id.
  int32_t ByteToToken(uint8_t byte) const;
  // SentencePiece merge of one run of raw text (no user-defined tokens in it),
  // appending ids to `out`.
  void EncodeSpm(std::string_view raw, bool space_prefix, std::vector<int32_t>* out) const;

  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  int32_t byte_token_[256];  // id of <0xXX>, or -1
  // User-defined, control and unknown tokens, longest text first: matched in
  // the input before the merge, as llama.cpp's special-token cache (control
  // and unknown ones only with parse_special).
  std::vector<int32_t> special_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  Vocabulary vocab;
  TANDEM_ASSIGN_OR_RETURN(vocab.model, gguf.GetString(kModelKey));
  if (vocab.model != "llama" && vocab.model != "gpt2") {
    return absl::UnimplementedError(
        absl::StrCat("unsupported tokenizer model '", vocab.model, "' (supported: llama, gpt2)"));
  }
  TANDEM_ASSIGN_OR_RETURN(vocab.tokens, gguf.GetStringArray(kTokensKey));
  const size_t n = vocab.tokens.size();

  if (gguf.Find(kScoresKey) != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(vocab.scores, gguf.GetFloatArray(kScoresKey));
    if (vocab.scores.size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(kScoresKey, " has ", vocab.scores.size(), " entries but ", kTokensKey, " has ", n));
    }
  } else {
    vocab.scores.assign(n, 0.0f);
  }

  if (gguf.Find(kTokenTypeKey) != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> types, gguf.GetIntArray(kTokenTypeKey));
    if (types.size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(kTokenTypeKey, " has ", types.size(), " entries but ", kTokensKey, " has ", n));
    }
    vocab.types.reserve(n);
    for (int64_t t : types) {
      // llama.cpp maps any unknown type to "undefined".
      vocab.types.push_back(t >= static_cast<int64_t>(TokenType::kUndefined) &&
                                    t <= static_cast<int64_t>(TokenType::kByte)
                                ? static_cast<TokenType>(t)
                                : TokenType::kUndefined);
    }
  } else {
    vocab.types.assign(n, TokenType::kNormal);
  }

  const int64_t vocab_size = static_cast<int64_t>(n);
  TANDEM_RETURN_IF_ERROR(ReadTokenId(gguf, kUnkKey, vocab_size, &vocab.unk_id));
  TANDEM_RETURN_IF_ERROR(ReadTokenId(gguf, kBosKey, vocab_size, &vocab.bos_id));
  TANDEM_RETURN_IF_ERROR(ReadTokenId(gguf, kEosKey, vocab_size, &vocab.eos_id));
  if (vocab.model == "gpt2") {
    TANDEM_ASSIGN_OR_RETURN(vocab.merges, gguf.GetStringArray(kMergesKey));
    if (gguf.Find(kPreKey) != nullptr) {
      TANDEM_ASSIGN_OR_RETURN(vocab.pre, gguf.GetString(kPreKey));
    }
    // llama.cpp: BPE vocabularies add no BOS unless the key says so, except
    // Llama 3's.
    vocab.add_bos = vocab.pre == "llama3" || vocab.pre == "llama-v3" || vocab.pre == "llama-bpe";
  }
  if (gguf.Find(kAddBosKey) != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(vocab.add_bos, gguf.GetBool(kAddBosKey));
  }
  if (gguf.Find(kAddSpacePrefixKey) != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(vocab.add_space_prefix, gguf.GetBool(kAddSpacePrefixKey));
  }
  return FromVocabulary(std::move(vocab));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabulary(Vocabulary vocab) {
  if (vocab.model == "gpt2") {
    TANDEM_ASSIGN_OR_RETURN(BpeOptions options, BpeOptionsForGgufPre(vocab.pre));
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> bpe,
                            BpeTokenizer::Create(std::move(vocab), std::move(options)));
    return std::unique_ptr<Tokenizer>(std::move(bpe));
  }
  if (vocab.model != "llama") {
    return absl::UnimplementedError(
        absl::StrCat("unsupported tokenizer model '", vocab.model, "' (supported: llama, gpt2)"));
  }
  const size_t n = vocab.tokens.size();
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("vocabulary of ", n, " tokens is too large"));
  }
  if (vocab.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", n, " tokens but ", vocab.scores.size(), " scores"));
  }
  if (vocab.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", n, " tokens but ", vocab.types.size(), " token types"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(vocab.scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("vocabulary score of token ", i, " is NaN"));
    }
  }
  TANDEM_RETURN_IF_ERROR(CheckId("unk_id", vocab.unk_id, n));
  TANDEM_RETURN_IF_ERROR(CheckId("bos_id", vocab.bos_id, n));
  TANDEM_RETURN_IF_ERROR(CheckId("eos_id", vocab.eos_id, n));
  for (int32_t id : vocab.eog_ids) TANDEM_RETURN_IF_ERROR(CheckId("end-of-generation id", id, n));
  AddKnownEndOfGenerationTokens(&vocab);
  return std::unique_ptr<Tokenizer>(new SpmTokenizer(std::move(vocab)));
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return id == vocab_.eos_id ||
         std::find(vocab_.eog_ids.begin(), vocab_.eog_ids.end(), id) != vocab_.eog_ids.end();
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool special) const {
  std::string text;
  for (int32_t id : ids) text += TokenToPiece(id, special);
  return text;
}

void AddKnownEndOfGenerationTokens(Vocabulary* vocab) {
  // As llama.cpp's end-of-generation list: end-of-turn tokens by their text.
  static constexpr std::string_view kEndTexts[] = {
      "<|eot_id|>", "<|eom_id|>",    "<|end_of_text|>", "<|im_end|>", "<|endoftext|>",
      "<|end|>",    "<end_of_turn>", "<|return|>",      "<EOT>",      "_<EOT>"};
  for (size_t id = 0; id < vocab->tokens.size(); ++id) {
    if (vocab->types[id] != TokenType::kControl && vocab->types[id] != TokenType::kUserDefined) continue;
    if (std::find(std::begin(kEndTexts), std::end(kEndTexts), vocab->tokens[id]) == std::end(kEndTexts))
      continue;
    const int32_t i = static_cast<int32_t>(id);
    if (i != vocab->eos_id &&
        std::find(vocab->eog_ids.begin(), vocab->eog_ids.end(), i) == vocab->eog_ids.end()) {
      vocab->eog_ids.push_back(i);
    }
  }
}

SpmTokenizer::SpmTokenizer(Vocabulary vocab) : Tokenizer(std::move(vocab)) {
  const int32_t n = vocab_size();
  piece_to_id_.reserve(vocab_.tokens.size());
  for (int32_t id = 0; id < n; ++id) {
    std::string& text = vocab_.tokens[id];
    // llama.cpp renames empty pieces so that every token has text.
    if (text.empty()) text = absl::StrCat("[EMPTY_", id, "]");
    // As llama.cpp's token_to_id: a later duplicate wins.
    piece_to_id_[text] = id;
    const TokenType type = vocab_.types[id];
    if (type == TokenType::kUserDefined || type == TokenType::kControl || type == TokenType::kUnknown) {
      special_.push_back(id);
    }
  }
  for (int b = 0; b < 256; ++b) {
    auto it = piece_to_id_.find(ByteTokenText(static_cast<uint8_t>(b)));
    byte_token_[b] = it == piece_to_id_.end() ? -1 : it->second;
  }
  // Longest first, as llama.cpp's special-token cache (ties by id, where
  // llama.cpp's unstable sort leaves the order unspecified).
  std::stable_sort(special_.begin(), special_.end(), [this](int32_t a, int32_t b) {
    return vocab_.tokens[a].size() > vocab_.tokens[b].size();
  });
}

int32_t SpmTokenizer::ByteToToken(uint8_t byte) const {
  if (byte_token_[byte] >= 0) return byte_token_[byte];
  // llama.cpp's byte_to_token falls back to the raw byte as a piece (and
  // throws where that is missing too; we use <unk>).
  const char raw = static_cast<char>(byte);
  auto it = piece_to_id_.find(absl::string_view(&raw, 1));
  return it == piece_to_id_.end() ? vocab_.unk_id : it->second;
}

int32_t SpmTokenizer::PieceId(std::string_view piece) const {
  auto it = piece_to_id_.find(AsAbsl(piece));
  return it == piece_to_id_.end() ? -1 : it->second;
}

void SpmTokenizer::EncodeSpm(std::string_view raw, bool space_prefix, std::vector<int32_t>* out) const {
  std::string text;
  text.reserve(raw.size() + raw.size() / 2 + kSpaceMark.size());
  if (space_prefix) text.append(kSpaceMark);
  AppendEscaped(raw, &text);

  // Split into UTF-8 characters.
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    const size_t len = std::min(Utf8SequenceLength(static_cast<uint8_t>(text[offset])), text.size() - offset);
    const int index = static_cast<int>(symbols.size());
    offset += len;
    symbols.push_back(Symbol{index - 1, offset == text.size() ? -1 : index + 1, offset - len, len});
  }

  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  auto try_add_bigram = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const size_t size = symbols[left].n + symbols[right].n;
    const int32_t id = PieceId(std::string_view(text).substr(symbols[left].offset, size));
    if (id < 0) return;
    queue.push(Bigram{left, right, vocab_.scores[id], size});
  };

  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add_bigram(i - 1, i);

  // Merge the best-scoring pair until no adjacent pair forms a piece.
  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    // Stale: one side was merged away or has grown since this was queued.
    if (left.n == 0 || right.n == 0 || left.n + right.n != bigram.size) continue;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    try_add_bigram(left.prev, bigram.left);
    try_add_bigram(bigram.left, left.next);
  }

  // Every merge produced a vocabulary piece, so a final symbol is either a
  // piece or a single (possibly malformed) UTF-8 character no piece covers.
  // llama.cpp's resegment() also consults a reverse-merge map, but that map
  // only holds pieces that are in the vocabulary, so for a symbol that is not
  // it never matches: such a symbol always goes out as byte tokens.
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const Symbol& symbol = symbols[i];
    const std::string_view piece = std::string_view(text).substr(symbol.offset, symbol.n);
    const int32_t id = PieceId(piece);
    if (id >= 0) {
      out->push_back(id);
      continue;
    }
    for (char c : piece) out->push_back(ByteToToken(static_cast<uint8_t>(c)));
  }
}

std::vector<int32_t> SpmTokenizer::EncodeImpl(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 2);
  if (add_bos && vocab_.add_bos) ids.push_back(vocab_.bos_id);
  if (text.empty()) return ids;

  // Split out special tokens first (llama.cpp's tokenizer_st_partition:
  // without parse_special control and unknown tokens are left as text,
  // user-defined ones are still matched, longest first).
  struct Fragment {
    int32_t token;  // -1 for raw text
    size_t offset;
    size_t length;
  };
  std::vector<Fragment> fragments = {{-1, 0, text.size()}};
  for (int32_t id : special_) {
    if (!parse_special && vocab_.types[id] != TokenType::kUserDefined) continue;
    const std::string& piece = vocab_.tokens[id];
    std::vector<Fragment> next;
    next.reserve(fragments.size());
    for (const Fragment& fragment : fragments) {
      if (fragment.token >= 0) {
        next.push_back(fragment);
        continue;
      }
      const size_t end = fragment.offset + fragment.length;
      const std::string_view bounded = text.substr(0, end);
      size_t pos = fragment.offset;
      for (size_t match = bounded.find(piece, pos); match != std::string_view::npos;
           match = bounded.find(piece, pos)) {
        if (match > pos) next.push_back({-1, pos, match - pos});
        next.push_back({id, 0, 0});
        pos = match + piece.size();
      }
      if (pos < end) next.push_back({-1, pos, end - pos});
    }
    fragments = std::move(next);
  }

  // The dummy-prefix space goes in front of the text and after every
  // special token, as llama.cpp's is_prev_special.
  bool prev_special = true;
  for (const Fragment& fragment : fragments) {
    if (fragment.token >= 0) {
      ids.push_back(fragment.token);
      prev_special = true;
      continue;
    }
    EncodeSpm(text.substr(fragment.offset, fragment.length), vocab_.add_space_prefix && prev_special, &ids);
    prev_special = false;
  }
  return ids;
}

std::string SpmTokenizer::PieceImpl(int32_t id, bool special) const {
  if (id < 0 || id >= vocab_size()) return "";
  const std::string& text = vocab_.tokens[id];
  switch (vocab_.types[id]) {
    case TokenType::kNormal: {
      std::string piece;
      piece.reserve(text.size());
      for (size_t i = 0; i < text.size();) {
        if (std::string_view(text).substr(i, kSpaceMark.size()) == kSpaceMark) {
          piece.push_back(' ');
          i += kSpaceMark.size();
        } else {
          piece.push_back(text[i++]);
        }
      }
      return piece;
    }
    case TokenType::kUserDefined:
      return text;
    case TokenType::kByte: {
      // "<0xAB>": llama.cpp parses the two characters after "<0x" as hex
      // (strtol, so it stops at the first non-hex character).
      if (text.size() < 3) return "";
      int value = 0;
      for (size_t i = 3; i < std::min<size_t>(text.size(), 5); ++i) {
        const int digit = HexDigit(text[i]);
        if (digit < 0) break;
        value = value * 16 + digit;
      }
      return std::string(1, static_cast<char>(value));
    }
    case TokenType::kUnknown:
    case TokenType::kControl:
      return special ? text : "";
    case TokenType::kUndefined:
    case TokenType::kUnused:
      return "";
  }
  return "";
}

}  // namespace tandem::model
