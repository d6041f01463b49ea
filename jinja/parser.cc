#include "jinja/parser.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tandem::jinja {
namespace {

using Type = Token::Type;

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

  absl::StatusOr<NodeList> ParseTemplate() {
    NodeList nodes;
    std::string end;
    TANDEM_RETURN_IF_ERROR(ParseBody({}, &nodes, &end));
    return nodes;
  }

 private:
  const Token& Peek(size_t ahead = 0) const {
    const size_t i = std::min(pos_ + ahead, tokens_.size() - 1);
    return tokens_[i];
  }
  const Token& Next() {
    const Token& t = Peek();
    if (pos_ < tokens_.size() - 1) ++pos_;
    return t;
  }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == Type::kOperator && Peek(ahead).text == op;
  }
  bool IsName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == Type::kName && Peek(ahead).text == name;
  }

  absl::Status ErrorAt(const Token& t, std::string_view message) const {
    return absl::InvalidArgumentError(Cat("template ", Where(t.line, t.column), ": ", message));
  }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case Type::kEnd:
        return "end of template";
      case Type::kText:
        return "text";
      case Type::kExprOpen:
        return "'{{'";
      case Type::kExprClose:
        return "'}}'";
      case Type::kStmtOpen:
        return "'{%'";
      case Type::kStmtClose:
        return "'%}'";
      case Type::kString:
        return "string literal";
      default:
        return Cat("'", t.text, "'");
    }
  }

  absl::Status Expect(Type type, std::string_view what) {
    if (Peek().type != type) return ErrorAt(Peek(), Cat("expected ", what, ", got ", Describe(Peek())));
    Next();
    return absl::OkStatus();
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!IsOp(op)) return ErrorAt(Peek(), Cat("expected '", op, "', got ", Describe(Peek())));
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().type != Type::kName) return ErrorAt(Peek(), Cat("expected a name, got ", Describe(Peek())));
    return Next().text;
  }

  // Depth guard for recursion.
  class DepthGuard {
   public:
    explicit DepthGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~DepthGuard() { --*depth_; }

   private:
    int* depth_;
  };
  absl::Status CheckDepth() const {
    if (depth_ > kMaxParseDepth) {
      return ErrorAt(Peek(), Cat("nesting deeper than ", kMaxParseDepth, " levels"));
    }
    return absl::OkStatus();
  }

  // Parses nodes until a {% tag %} whose name is in `ends` (consumed up to and
  // including the tag name; *end gets it) or the end of input (only when
  // `ends` is empty).
  absl::Status ParseBody(const std::vector<std::string_view>& ends, NodeList* out, std::string* end) {
    DepthGuard guard(&depth_);
    TANDEM_RETURN_IF_ERROR(CheckDepth());
    while (true) {
      const Token& t = Peek();
      if (t.type == Type::kEnd) {
        if (ends.empty()) return absl::OkStatus();
        std::string names;
        for (std::string_view e : ends) names += Cat(names.empty() ? "" : " or ", "'", e, "'");
        return ErrorAt(t, Cat("unexpected end of template; expected ", names));
      }
      if (t.type == Type::kText) {
        auto node = MakeNode(Node::Kind::kText, t);
        node->text = t.text;
        out->push_back(std::move(node));
        Next();
        continue;
      }
      if (t.type == Type::kExprOpen) {
        Next();
        auto node = MakeNode(Node::Kind::kOutput, t);
        TANDEM_ASSIGN_OR_RETURN(node->expr, ParseExpression());
        TANDEM_RETURN_IF_ERROR(Expect(Type::kExprClose, "'}}'"));
        out->push_back(std::move(node));
        continue;
      }
      if (t.type != Type::kStmtOpen) return ErrorAt(t, Cat("unexpected ", Describe(t)));
      const Token& tag = Peek(1);
      if (tag.type != Type::kName) return ErrorAt(tag, Cat("expected a tag name, got ", Describe(tag)));
      for (std::string_view e : ends) {
        if (tag.text == e) {
          Next();
          Next();
          *end = tag.text;
          return absl::OkStatus();
        }
      }
      Next();
      TANDEM_ASSIGN_OR_RETURN(auto node, ParseStatement());
      out->push_back(std::move(node));
    }
  }

  std::unique_ptr<Node> MakeNode(Node::Kind kind, const Token& t) {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->line = t.line;
    node->column = t.column;
    return node;
  }

  // At the tag name, after {%.
  absl::StatusOr<std::unique_ptr<Node>> ParseStatement() {
    const Token& tag = Next();
    const std::string& name = tag.text;
    if (name == "if") {
      auto node = MakeNode(Node::Kind::kIf, tag);
      while (true) {
        TANDEM_ASSIGN_OR_RETURN(auto cond, ParseExpression());
        TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
        NodeList body;
        std::string end;
        TANDEM_RETURN_IF_ERROR(ParseBody({"elif", "else", "endif"}, &body, &end));
        node->conditions.push_back(std::move(cond));
        node->bodies.push_back(std::move(body));
        if (end == "elif") continue;
        if (end == "else") {
          TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
          TANDEM_RETURN_IF_ERROR(ParseBody({"endif"}, &node->else_body, &end));
        }
        break;
      }
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      return node;
    }
    if (name == "for") {
      auto node = MakeNode(Node::Kind::kFor, tag);
      while (true) {
        TANDEM_ASSIGN_OR_RETURN(std::string target, ExpectName());
        node->targets.push_back(std::move(target));
        if (!IsOp(",")) break;
        Next();
      }
      if (!IsName("in")) return ErrorAt(Peek(), Cat("expected 'in', got ", Describe(Peek())));
      Next();
      TANDEM_ASSIGN_OR_RETURN(node->expr, ParseOr());  // no bare ternary: `if` filters the loop
      if (IsName("if")) {
        Next();
        TANDEM_ASSIGN_OR_RETURN(node->cond, ParseOr());
      }
      if (IsName("recursive")) return ErrorAt(Peek(), "recursive loops are not supported");
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      std::string end;
      TANDEM_RETURN_IF_ERROR(ParseBody({"else", "endfor"}, &node->body, &end));
      if (end == "else") {
        TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
        TANDEM_RETURN_IF_ERROR(ParseBody({"endfor"}, &node->else_body, &end));
      }
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      return node;
    }
    if (name == "set") {
      auto node = MakeNode(Node::Kind::kSet, tag);
      TANDEM_ASSIGN_OR_RETURN(std::string first, ExpectName());
      if (IsOp(".")) {
        Next();
        node->attr_object = std::move(first);
        TANDEM_ASSIGN_OR_RETURN(first, ExpectName());
        node->targets.push_back(std::move(first));
      } else {
        node->targets.push_back(std::move(first));
        while (IsOp(",")) {
          Next();
          TANDEM_ASSIGN_OR_RETURN(std::string target, ExpectName());
          node->targets.push_back(std::move(target));
        }
      }
      if (IsOp("=")) {
        Next();
        TANDEM_ASSIGN_OR_RETURN(node->expr, ParseTuple());
        TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
        return node;
      }
      if (node->targets.size() != 1 || !node->attr_object.empty()) {
        return ErrorAt(Peek(), Cat("expected '=', got ", Describe(Peek())));
      }
      node->block_set = true;
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      std::string end;
      TANDEM_RETURN_IF_ERROR(ParseBody({"endset"}, &node->body, &end));
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      return node;
    }
    if (name == "macro") {
      auto node = MakeNode(Node::Kind::kMacro, tag);
      TANDEM_ASSIGN_OR_RETURN(node->name, ExpectName());
      TANDEM_RETURN_IF_ERROR(ExpectOp("("));
      while (!IsOp(")")) {
        MacroParam param;
        TANDEM_ASSIGN_OR_RETURN(param.name, ExpectName());
        if (IsOp("=")) {
          Next();
          TANDEM_ASSIGN_OR_RETURN(param.default_value, ParseExpression());
        }
        node->params.push_back(std::move(param));
        if (!IsOp(",")) break;
        Next();
      }
      TANDEM_RETURN_IF_ERROR(ExpectOp(")"));
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      std::string end;
      TANDEM_RETURN_IF_ERROR(ParseBody({"endmacro"}, &node->body, &end));
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      return node;
    }
    if (name == "break" || name == "continue") {
      auto node = MakeNode(name == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, tag);
      TANDEM_RETURN_IF_ERROR(Expect(Type::kStmtClose, "'%}'"));
      return node;
    }
    return ErrorAt(tag, Cat("unknown or unsupported tag '", name, "'"));
  }

  std::unique_ptr<Expr> MakeExpr(Expr::Kind kind, const Token& t) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = t.line;
    e->column = t.column;
    return e;
  }

  // A bare tuple `a, b` (as in `set x = a, b`).
  absl::StatusOr<ExprPtr> ParseTuple() {
    const Token& t = Peek();
    TANDEM_ASSIGN_OR_RETURN(ExprPtr first, ParseExpression());
    if (!IsOp(",")) return first;
    auto tuple = MakeExpr(Expr::Kind::kList, t);
    tuple->items.push_back(std::move(first));
    while (IsOp(",")) {
      Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
      tuple->items.push_back(std::move(item));
    }
    return Done(std::move(tuple));
  }

  // expression := or ['if' or ['else' expression]]
  absl::StatusOr<ExprPtr> ParseExpression() {
    DepthGuard guard(&depth_);
    TANDEM_RETURN_IF_ERROR(CheckDepth());
    TANDEM_ASSIGN_OR_RETURN(ExprPtr value, ParseOr());
    while (IsName("if")) {
      const Token& t = Next();
      auto cond = MakeExpr(Expr::Kind::kCondition, t);
      cond->left = std::move(value);
      TANDEM_ASSIGN_OR_RETURN(cond->cond, ParseOr());
      if (IsName("else")) {
        Next();
        TANDEM_ASSIGN_OR_RETURN(cond->right, ParseExpression());
      }
      TANDEM_ASSIGN_OR_RETURN(value, Done(std::move(cond)));
    }
    return value;
  }

  // Sets e's depth from its children; deeper than kMaxParseDepth is an
  // error (a long chain `a + a + ...` nests as deeply as parentheses do).
  absl::StatusOr<ExprPtr> Done(ExprPtr e) {
    int d = 0;
    for (const ExprPtr* c : {&e->object, &e->left, &e->right, &e->cond, &e->start, &e->stop, &e->step}) {
      if (*c) d = std::max(d, (*c)->depth);
    }
    for (const ExprPtr& c : e->items) d = std::max(d, c->depth);
    for (const auto& [k, c] : e->kwargs) d = std::max(d, c->depth);
    e->depth = d + 1;
    if (e->depth > kMaxParseDepth) {
      return absl::InvalidArgumentError(Cat("template ", Where(e->line, e->column),
                                            ": expression nested deeper than ", kMaxParseDepth, " levels"));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> MakeBinary(const Token& t, std::string op, ExprPtr l, ExprPtr r) {
    auto e = MakeExpr(Expr::Kind::kBinary, t);
    e->name = std::move(op);
    e->left = std::move(l);
    e->right = std::move(r);
    return Done(std::move(e));
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName("or")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, "or", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName("and")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, "and", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(&depth_);
      TANDEM_RETURN_IF_ERROR(CheckDepth());
      const Token& t = Next();
      auto e = MakeExpr(Expr::Kind::kUnary, t);
      e->name = "not";
      TANDEM_ASSIGN_OR_RETURN(e->object, ParseNot());
      return Done(std::move(e));
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (true) {
      const Token& t = Peek();
      std::string op;
      if (t.type == Type::kOperator && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                        t.text == "<=" || t.text == ">=")) {
        op = t.text;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && IsName("in", 1)) {
        op = "not in";
        Next();
        Next();
      } else {
        return left;
      }
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, op, std::move(left), std::move(right)));
    }
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseAdd());
    while (IsOp("~")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseAdd());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, "~", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAdd() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseMul());
    while (IsOp("+") || IsOp("-")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseMul());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, t.text, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseMul() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParsePow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, t.text, std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    TANDEM_ASSIGN_OR_RETURN(ExprPtr left, ParseUnary());
    while (IsOp("**")) {
      const Token& t = Next();
      TANDEM_ASSIGN_OR_RETURN(ExprPtr right, ParseUnary());
      TANDEM_ASSIGN_OR_RETURN(left, MakeBinary(t, "**", std::move(left), std::move(right)));
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary() {
    DepthGuard guard(&depth_);
    TANDEM_RETURN_IF_ERROR(CheckDepth());
    if (IsOp("-") || IsOp("+")) {
      const Token& t = Next();
      auto e = MakeExpr(Expr::Kind::kUnary, t);
      e->name = t.text;
      TANDEM_ASSIGN_OR_RETURN(e->object, ParseUnary());
      TANDEM_ASSIGN_OR_RETURN(e, Done(std::move(e)));
      return ParseFilters(std::move(e));
    }
    TANDEM_ASSIGN_OR_RETURN(ExprPtr primary, ParsePrimary());
    TANDEM_ASSIGN_OR_RETURN(ExprPtr postfix, ParsePostfix(std::move(primary)));
    return ParseFilters(std::move(postfix));
  }

  // Arguments of a call, filter or test: ( [expr | name=expr] , ... ).
  absl::Status ParseArgs(Expr* e) {
    TANDEM_RETURN_IF_ERROR(ExpectOp("("));
    while (!IsOp(")")) {
      if (Peek().type == Type::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        Next();
        TANDEM_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        e->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!e->kwargs.empty()) return ErrorAt(Peek(), "positional argument follows keyword argument");
        TANDEM_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
        e->items.push_back(std::move(value));
      }
      if (!IsOp(",")) break;
      Next();
    }
    return ExpectOp(")");
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr object) {
    while (true) {
      if (IsOp(".")) {
        const Token& t = Next();
        auto e = MakeExpr(Expr::Kind::kAttr, t);
        if (Peek().type == Type::kName) {
          e->name = Next().text;
        } else if (Peek().type == Type::kInt) {  // foo.0 is foo[0]
          e->kind = Expr::Kind::kItem;
          e->right = MakeExpr(Expr::Kind::kLiteral, Peek());
          e->right->value = Value(Next().int_value);
        } else {
          return ErrorAt(Peek(), Cat("expected an attribute name, got ", Describe(Peek())));
        }
        e->object = std::move(object);
        TANDEM_ASSIGN_OR_RETURN(object, Done(std::move(e)));
      } else if (IsOp("[")) {
        const Token& t = Next();
        ExprPtr parts[3];
        int colons = 0;
        while (!IsOp("]")) {
          if (IsOp(":")) {
            if (++colons > 2) return ErrorAt(Peek(), "too many ':' in subscript");
            Next();
            continue;
          }
          if (parts[colons]) return ErrorAt(Peek(), Cat("expected ']' or ':', got ", Describe(Peek())));
          TANDEM_ASSIGN_OR_RETURN(parts[colons], ParseExpression());
        }
        Next();
        if (colons == 0) {
          if (!parts[0]) return ErrorAt(t, "empty subscript");
          auto e = MakeExpr(Expr::Kind::kItem, t);
          e->object = std::move(object);
          e->right = std::move(parts[0]);
          TANDEM_ASSIGN_OR_RETURN(object, Done(std::move(e)));
        } else {
          auto e = MakeExpr(Expr::Kind::kSlice, t);
          e->object = std::move(object);
          e->start = std::move(parts[0]);
          e->stop = std::move(parts[1]);
          e->step = std::move(parts[2]);
          TANDEM_ASSIGN_OR_RETURN(object, Done(std::move(e)));
        }
      } else if (IsOp("(")) {
        auto e = MakeExpr(Expr::Kind::kCall, Peek());
        e->line = object->line;  // errors point at the callee, not the '('
        e->column = object->column;
        TANDEM_RETURN_IF_ERROR(ParseArgs(e.get()));
        e->object = std::move(object);
        TANDEM_ASSIGN_OR_RETURN(object, Done(std::move(e)));
      } else {
        return object;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilters(ExprPtr object) {
    while (true) {
      if (IsOp("|")) {
        Next();
        const Token& t = Peek();
        auto e = MakeExpr(Expr::Kind::kFilter, t);
        TANDEM_ASSIGN_OR_RETURN(e->name, ExpectName());
        if (IsOp("(")) TANDEM_RETURN_IF_ERROR(ParseArgs(e.get()));
        e->object = std::move(object);
        TANDEM_ASSIGN_OR_RETURN(e, Done(std::move(e)));
        TANDEM_ASSIGN_OR_RETURN(object, ParsePostfix(std::move(e)));
      } else if (IsName("is")) {
        const Token& t = Next();
        auto e = MakeExpr(Expr::Kind::kTest, t);
        if (IsName("not")) {
          Next();
          e->negated = true;
        }
        // Test names include keywords: `is none`, `is true`, `is in`.
        TANDEM_ASSIGN_OR_RETURN(e->name, ExpectName());
        if (IsOp("(")) {
          TANDEM_RETURN_IF_ERROR(ParseArgs(e.get()));
        } else if (Peek().type == Type::kString || Peek().type == Type::kInt || Peek().type == Type::kFloat ||
                   (Peek().type == Type::kName && !IsName("and") && !IsName("or") && !IsName("if") &&
                    !IsName("else") && !IsName("is") && !IsName("in") && !IsName("not"))) {
          // One argument without parentheses: `x is divisibleby 3`, `x is sameas none`.
          TANDEM_ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
          e->items.push_back(std::move(arg));
        }
        e->object = std::move(object);
        TANDEM_ASSIGN_OR_RETURN(object, Done(std::move(e)));
      } else {
        return object;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    DepthGuard guard(&depth_);
    TANDEM_RETURN_IF_ERROR(CheckDepth());
    const Token& t = Peek();
    switch (t.type) {
      case Type::kString: {
        auto e = MakeExpr(Expr::Kind::kLiteral, t);
        std::string s;
        while (Peek().type == Type::kString) s += Next().text;  // adjacent literals concatenate
        e->value = Value(std::move(s));
        return e;
      }
      case Type::kInt: {
        auto e = MakeExpr(Expr::Kind::kLiteral, t);
        e->value = Value(Next().int_value);
        return e;
      }
      case Type::kFloat: {
        auto e = MakeExpr(Expr::Kind::kLiteral, t);
        e->value = Value(Next().float_value);
        return e;
      }
      case Type::kName: {
        Next();
        auto e = MakeExpr(Expr::Kind::kLiteral, t);
        if (t.text == "true" || t.text == "True") {
          e->value = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          e->value = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          e->value = Value::None();
        } else {
          e->kind = Expr::Kind::kName;
          e->name = t.text;
        }
        return e;
      }
      case Type::kOperator:
        if (t.text == "(") {
          Next();
          if (IsOp(")")) {  // empty tuple
            Next();
            auto e = MakeExpr(Expr::Kind::kList, t);
            return e;
          }
          TANDEM_ASSIGN_OR_RETURN(ExprPtr inner, ParseExpression());
          if (IsOp(",")) {
            auto tuple = MakeExpr(Expr::Kind::kList, t);
            tuple->items.push_back(std::move(inner));
            while (IsOp(",")) {
              Next();
              if (IsOp(")")) break;
              TANDEM_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
              tuple->items.push_back(std::move(item));
            }
            TANDEM_ASSIGN_OR_RETURN(inner, Done(std::move(tuple)));
          }
          TANDEM_RETURN_IF_ERROR(ExpectOp(")"));
          return inner;
        }
        if (t.text == "[") {
          Next();
          auto e = MakeExpr(Expr::Kind::kList, t);
          while (!IsOp("]")) {
            TANDEM_ASSIGN_OR_RETURN(ExprPtr item, ParseExpression());
            e->items.push_back(std::move(item));
            if (!IsOp(",")) break;
            Next();
          }
          TANDEM_RETURN_IF_ERROR(ExpectOp("]"));
          return Done(std::move(e));
        }
        if (t.text == "{") {
          Next();
          auto e = MakeExpr(Expr::Kind::kDict, t);
          while (!IsOp("}")) {
            TANDEM_ASSIGN_OR_RETURN(ExprPtr key, ParseExpression());
            TANDEM_RETURN_IF_ERROR(ExpectOp(":"));
            TANDEM_ASSIGN_OR_RETURN(ExprPtr value, ParseExpression());
            e->items.push_back(std::move(key));
            e->items.push_back(std::move(value));
            if (!IsOp(",")) break;
            Next();
          }
          TANDEM_RETURN_IF_ERROR(ExpectOp("}"));
          return Done(std::move(e));
        }
        break;
      default:
        break;
    }
    return ErrorAt(t, Cat("unexpected ", Describe(t), " in expression"));
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<NodeList> Parse(const std::vector<Token>& tokens) { return Parser(tokens).ParseTemplate(); }

}  // namespace tandem::jinja
