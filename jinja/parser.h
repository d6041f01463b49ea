// Builds the syntax tree (ast.h) from tokens (lexer.h). Internal to
// tandem_jinja; see template.h for the public interface.
#ifndef TANDEM_JINJA_PARSER_H_
#define TANDEM_JINJA_PARSER_H_

#include <vector>

#include "absl/status/statusor.h"
#include "jinja/ast.h"
#include "jinja/lexer.h"

namespace tandem::jinja {

// Nesting of expressions and blocks deeper than this is an error (it bounds
// the stack the parser and the interpreter use).
inline constexpr int kMaxParseDepth = 128;

// Errors are InvalidArgument naming the line and column of the offending
// token, e.g. "template line 3, column 12: unknown tag 'foo'".
absl::StatusOr<NodeList> Parse(const std::vector<Token>& tokens);

}  // namespace tandem::jinja

#endif  // TANDEM_JINJA_PARSER_H_
