#include "jinja/lexer.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace tandem::jinja {

std::string Where(int line, int column) { return Cat("line ", line, ", column ", column); }

namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // lone surrogates cannot be UTF-8
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  Lexer(std::string_view src, const LexOptions& options) : src_(src), options_(options) {
    // keep_trailing_newline=False: one trailing newline is not part of the output.
    if (!src_.empty() && src_.back() == '\n') src_.remove_suffix(1);
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool strip_next_text = false;  // a -%} / -}} / -#} came before
    while (pos < src_.size()) {
      size_t start = FindTag(pos);
      size_t text_begin = pos, text_end = start;
      if (strip_next_text) {
        while (text_begin < text_end && IsSpace(src_[text_begin])) ++text_begin;
      }
      strip_next_text = false;
      if (start < src_.size()) {
        const char kind = src_[start + 1];
        const char modifier = start + 2 < src_.size() ? src_[start + 2] : '\0';
        if (modifier == '-') {
          while (text_end > text_begin && IsSpace(src_[text_end - 1])) --text_end;
        } else if (options_.lstrip_blocks && kind != '{' && modifier != '+') {
          size_t k = text_end;
          while (k > text_begin && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
          if (k == 0 || src_[k - 1] == '\n') text_end = k;
        }
      }
      if (text_end > text_begin) {
        Token t = Make(Token::Type::kText, text_begin);
        t.text = std::string(src_.substr(text_begin, text_end - text_begin));
        tokens_.push_back(std::move(t));
      }
      if (start >= src_.size()) break;
      const char kind = src_[start + 1];
      pos = start + 2;
      if (pos < src_.size() && (src_[pos] == '-' || src_[pos] == '+')) ++pos;
      bool strip_after = false;
      if (kind == '#') {
        size_t close = src_.find("#}", pos);
        if (close == std::string_view::npos) return Error(start, "unclosed comment: missing '#}'");
        strip_after = close > pos && src_[close - 1] == '-';
        pos = close + 2;
        if (!strip_after && options_.trim_blocks && pos < src_.size() && src_[pos] == '\n') ++pos;
      } else {
        const bool is_stmt = kind == '%';
        tokens_.push_back(Make(is_stmt ? Token::Type::kStmtOpen : Token::Type::kExprOpen, start));
        absl::Status close = LexInside(&pos, is_stmt, start, &strip_after);
        if (!close.ok()) return close;
        if (!strip_after && is_stmt && options_.trim_blocks && pos < src_.size() && src_[pos] == '\n') ++pos;
      }
      strip_next_text = strip_after;
    }
    tokens_.push_back(Make(Token::Type::kEnd, src_.size()));
    return std::move(tokens_);
  }

 private:
  // The position of the next {{, {% or {#, or src_.size().
  size_t FindTag(size_t pos) const {
    while (true) {
      size_t p = src_.find('{', pos);
      if (p == std::string_view::npos || p + 1 >= src_.size()) return src_.size();
      const char c = src_[p + 1];
      if (c == '{' || c == '%' || c == '#') return p;
      pos = p + 1;
    }
  }

  Token Make(Token::Type type, size_t offset) const {
    Token t;
    t.type = type;
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    t.line = static_cast<int>(it - line_starts_.begin());
    t.column = static_cast<int>(offset - *(it - 1)) + 1;
    return t;
  }

  absl::Status Error(size_t offset, std::string_view message) const {
    Token t = Make(Token::Type::kEnd, offset);
    return absl::InvalidArgumentError(Cat("template ", Where(t.line, t.column), ": ", message));
  }

  // Lexes expression tokens from *pos up to and including the closing
  // delimiter; sets *strip_after for a '-' before it.
  absl::Status LexInside(size_t* pos, bool is_stmt, size_t open, bool* strip_after) {
    const std::string_view close = is_stmt ? "%}" : "}}";
    int brace_depth = 0;
    size_t p = *pos;
    while (true) {
      while (p < src_.size() && IsSpace(src_[p])) ++p;
      if (p >= src_.size()) {
        return Error(open, Cat("unclosed '", is_stmt ? "{%" : "{{", "': missing '", close, "'"));
      }
      const std::string_view rest = src_.substr(p);
      if ((rest.starts_with("-") || rest.starts_with("+")) && rest.substr(1).starts_with(close) &&
          (is_stmt || brace_depth == 0)) {
        *strip_after = rest[0] == '-';
        tokens_.push_back(Make(is_stmt ? Token::Type::kStmtClose : Token::Type::kExprClose, p));
        *pos = p + 1 + close.size();
        return absl::OkStatus();
      }
      if (rest.starts_with(close) && (is_stmt || brace_depth == 0)) {
        tokens_.push_back(Make(is_stmt ? Token::Type::kStmtClose : Token::Type::kExprClose, p));
        *pos = p + close.size();
        return absl::OkStatus();
      }
      const char c = src_[p];
      if (c == '\'' || c == '"') {
        Token t = Make(Token::Type::kString, p);
        size_t q = p + 1;
        std::string value;
        while (true) {
          if (q >= src_.size()) return Error(p, "unterminated string literal");
          const char d = src_[q];
          if (d == c) break;
          if (d == '\\' && q + 1 < src_.size()) {
            const char e = src_[q + 1];
            q += 2;
            switch (e) {
              case 'n':
                value += '\n';
                break;
              case 't':
                value += '\t';
                break;
              case 'r':
                value += '\r';
                break;
              case 'b':
                value += '\b';
                break;
              case 'f':
                value += '\f';
                break;
              case 'v':
                value += '\v';
                break;
              case '0':
                value += '\0';
                break;
              case '\\':
                value += '\\';
                break;
              case '\'':
                value += '\'';
                break;
              case '"':
                value += '"';
                break;
              case '\n':
                break;  // line continuation
              case 'x':
              case 'u':
              case 'U': {
                const size_t len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                if (q + len > src_.size()) return Error(q - 2, "truncated escape sequence");
                uint32_t cp = 0;
                for (size_t i = 0; i < len; ++i) {
                  const char h = src_[q + i];
                  int dv = IsDigit(h)               ? h - '0'
                           : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                           : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                                    : -1;
                  if (dv < 0) return Error(q - 2, "invalid hexadecimal escape sequence");
                  cp = cp * 16 + dv;
                }
                if (cp > 0x10FFFF) return Error(q - 2, "escape sequence out of Unicode range");
                AppendUtf8(cp, &value);
                q += len;
                break;
              }
              default:  // Python keeps unknown escapes as written
                value += '\\';
                value += e;
            }
            continue;
          }
          value += d;
          ++q;
        }
        t.text = std::move(value);
        tokens_.push_back(std::move(t));
        p = q + 1;
        continue;
      }
      if (IsDigit(c)) {
        size_t q = p;
        while (q < src_.size() && (IsDigit(src_[q]) || src_[q] == '_')) ++q;
        bool is_float = false;
        const bool after_dot =
            !tokens_.empty() && tokens_.back().type == Token::Type::kOperator && tokens_.back().text == ".";
        if (!after_dot && q + 1 < src_.size() && src_[q] == '.' && IsDigit(src_[q + 1])) {
          is_float = true;
          ++q;
          while (q < src_.size() && (IsDigit(src_[q]) || src_[q] == '_')) ++q;
        }
        if (!after_dot && q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
          size_t r = q + 1;
          if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
          if (r < src_.size() && IsDigit(src_[r])) {
            is_float = true;
            q = r;
            while (q < src_.size() && IsDigit(src_[q])) ++q;
          }
        }
        std::string digits;
        for (size_t i = p; i < q; ++i) {
          if (src_[i] != '_') digits += src_[i];
        }
        Token t = Make(is_float ? Token::Type::kFloat : Token::Type::kInt, p);
        errno = 0;
        if (is_float) {
          t.float_value = std::strtod(digits.c_str(), nullptr);
        } else {
          t.int_value = std::strtoll(digits.c_str(), nullptr, 10);
          if (errno == ERANGE) return Error(p, "integer literal out of range");
        }
        t.text = std::move(digits);
        tokens_.push_back(std::move(t));
        p = q;
        continue;
      }
      if (IsNameStart(c)) {
        size_t q = p;
        while (q < src_.size() && IsNameChar(src_[q])) ++q;
        Token t = Make(Token::Type::kName, p);
        t.text = std::string(src_.substr(p, q - p));
        tokens_.push_back(std::move(t));
        p = q;
        continue;
      }
      static constexpr std::string_view kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[",
                                                  "]",  "{",  "}",  ",",  ".",  ":",  "|", "~", "+",
                                                  "-",  "*",  "/",  "%",  "=",  "<",  ">"};
      bool matched = false;
      for (std::string_view op : kOps) {
        if (rest.starts_with(op)) {
          Token t = Make(Token::Type::kOperator, p);
          t.text = std::string(op);
          tokens_.push_back(std::move(t));
          if (op == "{") ++brace_depth;
          if (op == "}") --brace_depth;
          p += op.size();
          matched = true;
          break;
        }
      }
      if (!matched) {
        return Error(p, Cat("unexpected character '", std::string(1, c), "'"));
      }
    }
  }

  std::string_view src_;
  LexOptions options_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source, const LexOptions& options) {
  return Lexer(source, options).Run();
}

}  // namespace tandem::jinja
