// Byte-pair-encoding tokenizer (GGUF gpt2, tokenizer.json BPE). See
// bpe_tokenizer.h.
#include "model/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

// Hugging Face's regexes for the GGUF pre-tokenizer names (llama.cpp's
// llama-vocab.cpp lists the same ones).
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// other 68 are shifted to U+0100 onwards in byte order.
struct ByteLevelMap {
  uint32_t byte_to_cp[256];
  absl::flat_hash_map<uint32_t, uint8_t> cp_to_byte;
  ByteLevelMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelMap& GetByteLevelMap() {
  static const ByteLevelMap* map = new ByteLevelMap();
  return *map;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Length of the valid UTF-8 character at text[i], or 0 where the bytes there
// are not one (overlong forms, surrogates and values past U+10FFFF included).
size_t ValidUtf8Length(std::string_view text, size_t i, uint32_t* cp) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len;
  uint32_t value;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, value = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, value = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, value = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + len > text.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    value = (value << 6) | (byte(i + k) & 0x3F);
  }
  if (value < min || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 0;
  *cp = value;
  return len;
}

// Unicode White_Space (what Rust's char::is_whitespace and tokenizers' strip
// use).
bool IsWhitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Bytes of whitespace at the start of `text`.
size_t LeadingWhitespace(std::string_view text) {
  size_t i = 0;
  for (uint32_t cp; i < text.size();) {
    const size_t len = ValidUtf8Length(text, i, &cp);
    if (len == 0 || !IsWhitespace(cp)) break;
    i += len;
  }
  return i;
}

// Bytes of whitespace at the end of `text`.
size_t TrailingWhitespace(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t len = 0;
    uint32_t cp = 0;
    for (size_t k = 1; k <= 4 && k <= end && len == 0; ++k) {
      if (ValidUtf8Length(text, end - k, &cp) == k) len = k;
    }
    if (len == 0 || !IsWhitespace(cp)) break;
    end -= len;
  }
  return text.size() - end;
}

// The raw bytes a byte-level spelling stands for (characters outside the map
// are kept as they are).
std::string ByteLevelDecode(std::string_view spelling) {
  const ByteLevelMap& map = GetByteLevelMap();
  std::string out;
  out.reserve(spelling.size());
  for (size_t i = 0; i < spelling.size();) {
    uint32_t cp = 0;
    size_t len = ValidUtf8Length(spelling, i, &cp);
    if (len == 0) {
      out.push_back(spelling[i++]);
      continue;
    }
    auto it = map.cp_to_byte.find(cp);
    if (it != map.cp_to_byte.end()) {
      out.push_back(static_cast<char>(it->second));
    } else {
      out.append(spelling.substr(i, len));
    }
    i += len;
  }
  return out;
}

// `pattern` with `\s` widened to Rust regex's White_Space (PCRE2's `\s` in
// UCP mode lacks U+0085) and `\S` narrowed to match.
std::string WidenWhitespace(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (e == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out.push_back('\\');
        out.push_back(e);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

// NFC of valid UTF-8 `text` (ICU).
std::string Nfc(std::string_view text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) return std::string(text);
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(text);
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) return std::string(text);
  return out;
}

// A symbol of the piece being merged; symbols form a linked list through
// prev/next (-1 ends it). A symbol merged into its left neighbour is dead.
struct Symbol {
  int32_t id;  // -1: a character no token covers
  int prev;
  int next;
  uint32_t offset;  // into the piece
  uint32_t length;
  bool dead;
};

struct Candidate {
  int32_t rank;
  int left;
  int right;
  int32_t left_id;
  int32_t right_id;
  int32_t merged_id;
};

// Lowest rank first, then leftmost.
struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

absl::StatusOr<BpeOptions> BpeOptionsForGgufPre(std::string_view pre) {
  BpeOptions options;
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    options.pre_tokenizer = {{.pattern = kLlama3Pattern}};
    options.ignore_merges = true;
  } else if (pre == "qwen2") {
    options.pre_tokenizer = {{.pattern = kQwen2Pattern}};
  } else if (pre == "default" || pre == "gpt2" || pre.empty()) {
    options.pre_tokenizer = {{.pattern = kGpt2Pattern}};
  } else {
    return absl::UnimplementedError(absl::StrCat("unsupported tokenizer.ggml.pre '", AsAbsl(pre),
                                                 "' (supported: llama-bpe, qwen2, default)"));
  }
  return options;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(Vocabulary vocab, BpeOptions options) {
  const size_t n = vocab.tokens.size();
  if (n == 0 || n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("BPE vocabulary of ", n, " tokens"));
  }
  if (vocab.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary has ", n, " tokens but ", vocab.types.size(), " token types"));
  }
  if (vocab.scores.size() != n) vocab.scores.assign(n, 0.0f);
  const auto check = [n](const char* what, int32_t id) -> absl::Status {
    if (id < 0 || static_cast<size_t>(id) >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary ", what, " ", id, " is outside the vocabulary of ", n, " tokens"));
    }
    return absl::OkStatus();
  };
  TANDEM_RETURN_IF_ERROR(check("bos_id", vocab.bos_id));
  TANDEM_RETURN_IF_ERROR(check("eos_id", vocab.eos_id));
  for (int32_t id : vocab.eog_ids) TANDEM_RETURN_IF_ERROR(check("end-of-generation id", id));
  for (int32_t id : options.prefix_ids) TANDEM_RETURN_IF_ERROR(check("template id", id));
  for (int32_t id : options.suffix_ids) TANDEM_RETURN_IF_ERROR(check("template id", id));
  for (int32_t id : options.lstrip_ids) TANDEM_RETURN_IF_ERROR(check("lstrip id", id));
  for (int32_t id : options.rstrip_ids) TANDEM_RETURN_IF_ERROR(check("rstrip id", id));
  if (options.unk_id >= 0) TANDEM_RETURN_IF_ERROR(check("unk_id", options.unk_id));
  if (vocab.unk_id < 0 || static_cast<size_t>(vocab.unk_id) >= n) vocab.unk_id = std::max(options.unk_id, 0);
  AddKnownEndOfGenerationTokens(&vocab);
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(std::move(vocab), std::move(options)));
  TANDEM_RETURN_IF_ERROR(tok->Init());
  return tok;
}

BpeTokenizer::BpeTokenizer(Vocabulary vocab, BpeOptions options)
    : Tokenizer(std::move(vocab)), options_(std::move(options)) {}

BpeTokenizer::~BpeTokenizer() = default;

absl::Status BpeTokenizer::Init() {
  const int32_t n = vocab_size();
  if (options_.prefix_ids.empty() && options_.suffix_ids.empty() && vocab_.add_bos) {
    options_.prefix_ids = {vocab_.bos_id};
  }
  vocab_.add_bos = !options_.prefix_ids.empty() || !options_.suffix_ids.empty();

  for (const PreTokenizerStep& step : options_.pre_tokenizer) {
    if (step.kind != PreTokenizerStep::Kind::kSplit) continue;
    const std::string pattern = WidenWhitespace(step.pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    auto regex = std::make_unique<Regex>();
    regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (regex->code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrFormat("pre-tokenizer regex '%s': %s at offset %d",
                                                        step.pattern, reinterpret_cast<char*>(message),
                                                        static_cast<int>(offset)));
    }
    pcre2_jit_compile(regex->code, PCRE2_JIT_COMPLETE);  // the interpreter runs where JIT is unavailable
    regexes_.push_back(std::move(regex));
  }

  // Spelling -> id of the tokens merges can produce (later duplicates win, as
  // llama.cpp's token_to_id).
  absl::flat_hash_map<std::string, int32_t> spelling_to_id;
  spelling_to_id.reserve(n);
  pieces_.resize(n);
  strip_.assign(n, 0);
  for (int32_t id : options_.lstrip_ids) strip_[id] |= 1;
  for (int32_t id : options_.rstrip_ids) strip_[id] |= 2;
  std::fill(std::begin(byte_fallback_id_), std::end(byte_fallback_id_), -1);
  for (int32_t id = 0; id < n; ++id) {
    const std::string& text = vocab_.tokens[id];
    const TokenType type = vocab_.types[id];
    if (type == TokenType::kControl || type == TokenType::kUserDefined) {
      pieces_[id] = text;
      if (text.empty()) continue;
      int32_t node = 0;
      if (trie_.empty()) trie_.emplace_back();
      for (char c : text) {
        auto it = trie_[node].next.find(c);
        if (it == trie_[node].next.end()) {
          trie_.emplace_back();
          it = trie_[node].next.emplace(c, static_cast<int32_t>(trie_.size() - 1)).first;
        }
        node = it->second;
      }
      trie_[node].id = id;
      continue;
    }
    if (type == TokenType::kUnused) continue;
    spelling_to_id[text] = id;
    const int hi = text.size() == 6 ? HexDigit(text[3]) : -1;
    const int lo = text.size() == 6 ? HexDigit(text[4]) : -1;
    if (type == TokenType::kByte && text.starts_with("<0x") && text.back() == '>' && hi >= 0 && lo >= 0) {
      const int value = hi * 16 + lo;
      byte_fallback_id_[value] = id;
      pieces_[id] = std::string(1, static_cast<char>(value));
      continue;
    }
    if (options_.byte_level) {
      pieces_[id] = ByteLevelDecode(text);
    } else {
      std::string piece;
      for (size_t i = 0; i < text.size();) {
        if (std::string_view(text).substr(i, kMetaspace.size()) == kMetaspace) {
          piece.push_back(' ');
          i += kMetaspace.size();
        } else {
          piece.push_back(text[i++]);
        }
      }
      pieces_[id] = std::move(piece);
    }
  }
  key_to_id_.reserve(spelling_to_id.size());
  for (const auto& [spelling, id] : spelling_to_id) {
    key_to_id_[options_.byte_level ? ByteLevelDecode(spelling) : spelling] = id;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = key_to_id_.find(std::string(1, static_cast<char>(b)));
    byte_id_[b] = it == key_to_id_.end() ? -1 : it->second;
  }

  std::vector<std::pair<std::string, std::string>> parsed;
  const std::vector<std::pair<std::string, std::string>>* merges = &options_.merges;
  if (merges->empty()) {
    parsed.reserve(vocab_.merges.size());
    for (const std::string& merge : vocab_.merges) {
      // As llama.cpp: split at the first space after the first character.
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("merge '", merge, "' is not 'left right'"));
      }
      parsed.emplace_back(merge.substr(0, space), merge.substr(space + 1));
    }
    merges = &parsed;
  }
  merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const auto& [left, right] = (*merges)[rank];
    auto l = spelling_to_id.find(left);
    auto r = spelling_to_id.find(right);
    auto m = spelling_to_id.find(left + right);
    if (l == spelling_to_id.end() || r == spelling_to_id.end() || m == spelling_to_id.end()) {
      return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " ('", left, "' '", right,
                                                     "') names a piece that is not in the vocabulary"));
    }
    // The first (lowest) rank of a pair wins.
    merges_.try_emplace(PairKey(l->second, r->second), Merge{static_cast<int32_t>(rank), m->second});
  }
  options_.merges.clear();
  options_.merges.shrink_to_fit();
  return absl::OkStatus();
}

std::vector<int32_t> BpeTokenizer::EncodeImpl(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos) ids.insert(ids.end(), options_.prefix_ids.begin(), options_.prefix_ids.end());
  size_t section_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    // The longest added token starting at `pos`.
    int32_t match = -1;
    size_t match_end = 0;
    if (!trie_.empty()) {
      int32_t node = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        auto it = trie_[node].next.find(text[i]);
        if (it == trie_[node].next.end()) break;
        node = it->second;
        const int32_t id = trie_[node].id;
        if (id >= 0 && (parse_special || vocab_.types[id] == TokenType::kUserDefined)) {
          match = id;
          match_end = i + 1;
        }
      }
    }
    if (match < 0) {
      ++pos;
      continue;
    }
    std::string_view before = text.substr(section_start, pos - section_start);
    if (strip_[match] & 1) before.remove_suffix(TrailingWhitespace(before));
    EncodeSection(before, section_start == 0, &ids);
    ids.push_back(match);
    if (strip_[match] & 2) match_end += LeadingWhitespace(text.substr(match_end));
    pos = section_start = match_end;
  }
  EncodeSection(text.substr(section_start), section_start == 0, &ids);
  if (add_bos) ids.insert(ids.end(), options_.suffix_ids.begin(), options_.suffix_ids.end());
  return ids;
}

void BpeTokenizer::EncodeSection(std::string_view section, bool at_start, std::vector<int32_t>* out) const {
  if (section.empty()) return;
  // Normalize. NFC applies to the valid UTF-8 runs; invalid bytes stay.
  std::string normalized;
  if (options_.nfc) {
    normalized.reserve(section.size());
    size_t run = 0;
    for (size_t i = 0; i <= section.size();) {
      uint32_t cp;
      const size_t len = i < section.size() ? ValidUtf8Length(section, i, &cp) : 0;
      if (len > 0) {
        i += len;
        continue;
      }
      normalized += Nfc(section.substr(run, i - run));
      if (i < section.size()) normalized.push_back(section[i]);
      run = ++i;
    }
  } else {
    normalized.assign(section.data(), section.size());
  }
  if (options_.spaces_to_metaspace) {
    std::string replaced;
    replaced.reserve(normalized.size() + normalized.size() / 4);
    for (char c : normalized) {
      if (c == ' ') {
        replaced.append(kMetaspace);
      } else {
        replaced.push_back(c);
      }
    }
    normalized = std::move(replaced);
  }
  const bool prepend = options_.prepend_metaspace == BpeOptions::Prepend::kAlways ||
                       (options_.prepend_metaspace == BpeOptions::Prepend::kFirst && at_start);
  if (prepend && !(options_.prepend_only_if_absent && std::string_view(normalized).starts_with(kMetaspace))) {
    normalized.insert(0, kMetaspace);
  }

  // Pre-tokenize: pieces are (offset, length) into `storage`; invalid UTF-8
  // bytes become pieces of their own that no regex sees.
  struct Piece {
    size_t offset;
    size_t length;
    bool valid;
  };
  std::string storage = std::move(normalized);
  std::vector<Piece> pieces;
  {
    size_t run = 0;
    for (size_t i = 0; i <= storage.size();) {
      uint32_t cp;
      const size_t len = i < storage.size() ? ValidUtf8Length(storage, i, &cp) : 0;
      if (len > 0) {
        i += len;
        continue;
      }
      if (i > run) pieces.push_back({run, i - run, true});
      if (i < storage.size()) pieces.push_back({i, 1, false});
      run = ++i;
    }
  }
  pcre2_match_data* match_data = nullptr;
  size_t regex_index = 0;
  for (const PreTokenizerStep& step : options_.pre_tokenizer) {
    std::vector<Piece> next;
    next.reserve(pieces.size() * 2);
    if (step.kind == PreTokenizerStep::Kind::kPrefixSpace) {
      // Rebuild the storage with a space in front of the pieces that lack one.
      std::string rebuilt;
      rebuilt.reserve(storage.size() + pieces.size());
      for (const Piece& p : pieces) {
        const size_t start = rebuilt.size();
        if (p.valid && storage[p.offset] != ' ') rebuilt.push_back(' ');
        rebuilt.append(storage, p.offset, p.length);
        next.push_back({start, rebuilt.size() - start, p.valid});
      }
      storage = std::move(rebuilt);
      pieces = std::move(next);
      continue;
    }
    const pcre2_code* code = regexes_[regex_index++]->code;
    if (match_data == nullptr) match_data = pcre2_match_data_create(4, nullptr);
    for (const Piece& p : pieces) {
      if (!p.valid) {
        next.push_back(p);
        continue;
      }
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(storage.data() + p.offset);
      size_t prev = 0;
      size_t start = 0;
      while (start <= p.length) {
        int rc = pcre2_match(code, subject, p.length, start, PCRE2_NO_UTF_CHECK, match_data, nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
          rc = pcre2_match(code, subject, p.length, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, match_data,
                           nullptr);
        }
        if (rc < 0) break;  // no match (or a resource limit): the rest is one piece
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_data);
        const size_t ms = ov[0];
        const size_t me = ov[1];
        if (me == ms) {  // empty match: step over one character
          if (ms >= p.length) break;
          uint32_t cp;
          start = ms + std::max<size_t>(1, ValidUtf8Length(storage, p.offset + ms, &cp));
          continue;
        }
        if (ms > prev) next.push_back({p.offset + prev, ms - prev, true});
        next.push_back({p.offset + ms, me - ms, true});
        prev = start = me;
      }
      if (prev < p.length) next.push_back({p.offset + prev, p.length - prev, true});
    }
    pieces = std::move(next);
  }
  if (match_data != nullptr) pcre2_match_data_free(match_data);

  for (const Piece& p : pieces) {
    const std::string_view piece = std::string_view(storage).substr(p.offset, p.length);
    if (!p.valid && !options_.byte_level) {
      EmitUncovered(piece, out);
      continue;
    }
    EncodePiece(piece, out);
  }
}

void BpeTokenizer::EmitUncovered(std::string_view bytes, std::vector<int32_t>* out) const {
  if (options_.byte_fallback) {
    bool all = true;
    for (char c : bytes) all = all && byte_fallback_id_[static_cast<uint8_t>(c)] >= 0;
    if (all) {
      for (char c : bytes) out->push_back(byte_fallback_id_[static_cast<uint8_t>(c)]);
      return;
    }
  }
  if (options_.unk_id >= 0) out->push_back(options_.unk_id);
}

void BpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (options_.ignore_merges) {
    auto it = key_to_id_.find(AsAbsl(piece));
    if (it != key_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(options_.byte_level ? piece.size() : piece.size() / 2 + 1);
  for (size_t i = 0; i < piece.size();) {
    size_t len = 1;
    int32_t id;
    if (options_.byte_level) {
      id = byte_id_[static_cast<uint8_t>(piece[i])];
    } else {
      uint32_t cp;
      len = std::max<size_t>(1, ValidUtf8Length(piece, i, &cp));
      auto it = key_to_id_.find(AsAbsl(piece.substr(i, len)));
      id = it == key_to_id_.end() ? -1 : it->second;
    }
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        Symbol{id, index - 1, index + 1, static_cast<uint32_t>(i), static_cast<uint32_t>(len), false});
    i += len;
  }
  symbols.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateOrder> queue;
  const auto consider = [&](int left) {
    if (left < 0) return;
    const int right = symbols[left].next;
    if (right < 0) return;
    const int32_t l = symbols[left].id;
    const int32_t r = symbols[right].id;
    if (l < 0 || r < 0) return;
    auto it = merges_.find(PairKey(l, r));
    if (it == merges_.end()) return;
    queue.push(Candidate{it->second.rank, left, right, l, r, it->second.id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    // Stale: a side was merged away or changed since this was queued.
    if (left.dead || right.dead || left.next != c.right || left.id != c.left_id || right.id != c.right_id) {
      continue;
    }
    left.id = c.merged_id;
    left.length += right.length;
    left.next = right.next;
    right.dead = true;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    consider(left.prev);
    consider(c.left);
  }
  for (int i = 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    if (s.id >= 0) {
      out->push_back(s.id);
    } else {
      EmitUncovered(piece.substr(s.offset, s.length), out);
    }
  }
}

std::string BpeTokenizer::PieceImpl(int32_t id, bool special) const {
  if (id < 0 || id >= vocab_size()) return "";
  switch (vocab_.types[id]) {
    case TokenType::kControl:
    case TokenType::kUnknown:
      return special ? vocab_.tokens[id] : "";
    case TokenType::kUnused:
      return "";
    default:
      return pieces_[id];
  }
}

}  // namespace tandem::model
