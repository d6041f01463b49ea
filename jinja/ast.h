// The syntax tree the parser builds and the interpreter walks. Internal to
// tandem_jinja. Every node keeps its source line and column for errors.
#ifndef TANDEM_JINJA_AST_H_
#define TANDEM_JINJA_AST_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jinja/value.h"

namespace tandem::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kList,       // items (also tuples)
    kDict,       // items as key, value pairs: items[2i], items[2i+1]
    kName,       // name
    kAttr,       // object.name
    kItem,       // object[index]
    kSlice,      // object[start:stop:step]; absent parts are null
    kCall,       // callee(args, kwargs)
    kFilter,     // object | name(args, kwargs)
    kTest,       // object is [not] name(args)
    kUnary,      // op object: "not", "-", "+"
    kBinary,     // left op right
    kCondition,  // then_expr if cond else else_expr (else_expr may be null)
  };
  Kind kind;
  int line = 0, column = 0;
  int depth = 1;  // 1 + the deepest child (bounded by the parser)
  Value value;
  std::string name;  // name, attribute, filter, test or operator
  bool negated = false;
  ExprPtr object, left, right, cond, start, stop, step;
  std::vector<ExprPtr> items;  // list/dict items, call/filter/test positional args
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodeList = std::vector<std::unique_ptr<Node>>;

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null when required
};

struct Node {
  enum class Kind {
    kText,    // text
    kOutput,  // {{ expr }}
    kIf,      // conditions[i] -> bodies[i]; else_body
    kFor,     // for targets in expr [if cond]: body, else_body
    kSet,     // targets (or attr_object.name) = expr; or a block set: body
    kMacro,   // name(params): body
    kBreak,
    kContinue,
  };
  Kind kind;
  int line = 0, column = 0;
  std::string text;
  ExprPtr expr, cond;
  std::vector<ExprPtr> conditions;
  std::vector<NodeList> bodies;
  NodeList body, else_body;
  std::vector<std::string> targets;  // for/set names
  std::string attr_object;           // set ns.attr: "ns" (targets[0] is "attr")
  std::string name;                  // macro name
  std::vector<MacroParam> params;
  bool block_set = false;
};

}  // namespace tandem::jinja

#endif  // TANDEM_JINJA_AST_H_
