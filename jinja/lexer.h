// Splits Jinja template source into tokens: text runs, the delimiters of
// {{ }} and {% %} (comments are dropped), and the expression tokens between
// them. Applies whitespace control ({%- -%} {{- -}} {#- -#}), trim_blocks and
// lstrip_blocks as Jinja does, and drops one trailing newline of the source.
// Internal to tandem_jinja; see template.h for the public interface.
#ifndef TANDEM_JINJA_LEXER_H_
#define TANDEM_JINJA_LEXER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tandem::jinja {

struct Token {
  enum class Type {
    kText,       // literal template text (value in `text`)
    kExprOpen,   // {{
    kExprClose,  // }}
    kStmtOpen,   // {%
    kStmtClose,  // %}
    kName,       // identifier or keyword
    kInt,
    kFloat,
    kString,    // unescaped value in `text`
    kOperator,  // punctuation and operators: ( ) [ ] { } , . : | ~ + - * / // % ** = == != < > <= >=
    kEnd,
  };
  Type type = Type::kEnd;
  std::string text;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;    // 1-based position in the source
  int column = 1;  // 1-based, in bytes
};

struct LexOptions {
  // Remove the first newline after a block tag (%} or #}). Default: true, as
  // Hugging Face's apply_chat_template sets it.
  bool trim_blocks = true;
  // Strip spaces and tabs from the start of a line up to a block tag.
  // Default: true (as apply_chat_template).
  bool lstrip_blocks = true;
};

// Tokens end with one kEnd. Errors are InvalidArgument naming line and column.
absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source, const LexOptions& options);

// absl::StrCat that also takes std::string_view (Debian's Abseil has its own
// absl::string_view).
template <typename T>
decltype(auto) CatArg(const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view> &&
                !std::is_convertible_v<const T&, absl::string_view>) {
    const std::string_view s = v;
    return absl::string_view(s.data(), s.size());
  } else {
    return (v);
  }
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(CatArg(args)...);
}

// "line L, column C" for error messages.
std::string Where(int line, int column);

}  // namespace tandem::jinja

#endif  // TANDEM_JINJA_LEXER_H_
