#include "jinja/template.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "jinja/ast.h"
#include "jinja/lexer.h"
#include "jinja/parser.h"

namespace tandem::jinja {

struct Template::Program {
  NodeList nodes;
};

Template::Template(std::unique_ptr<Program> program) : program_(std::move(program)) {}
Template::~Template() = default;

absl::StatusOr<std::unique_ptr<Template>> Template::Create(std::string_view source,
                                                           const ParseOptions& options) {
  TANDEM_ASSIGN_OR_RETURN(std::vector<Token> tokens,
                          Tokenize(source, LexOptions{.trim_blocks = options.trim_blocks,
                                                      .lstrip_blocks = options.lstrip_blocks}));
  auto program = std::make_unique<Program>();
  TANDEM_ASSIGN_OR_RETURN(program->nodes, Parse(tokens));
  return std::unique_ptr<Template>(new Template(std::move(program)));
}

namespace {

// ---- UTF-8 helpers (strings are indexed, sliced and measured in code points, as Python does) ----

// Decodes one code point at s[*i]; invalid bytes decode as themselves (one byte).
uint32_t DecodeAt(std::string_view s, size_t* i) {
  const unsigned char c = s[*i];
  int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (*i + len > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k) {
    const unsigned char d = s[*i + k];
    if ((d & 0xC0) != 0x80) {
      len = 1;
      cp = c;
      break;
    }
    cp = (cp << 6) | (d & 0x3F);
  }
  *i += len;
  return cp;
}

// Byte offsets of each code point, plus s.size() at the end.
std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> offsets;
  size_t i = 0;
  while (i < s.size()) {
    offsets.push_back(i);
    DecodeAt(s, &i);
  }
  offsets.push_back(s.size());
  return offsets;
}

// Python's str.isspace() for one code point.
bool IsPySpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Python's str.strip/lstrip/rstrip: whitespace when `chars` is null, else
// any code point of *chars.
std::string Strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars != nullptr) {
    for (size_t i = 0; i < chars->size();) set.push_back(DecodeAt(*chars, &i));
  }
  auto strip_it = [&](uint32_t cp) {
    return chars == nullptr ? IsPySpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  const std::vector<size_t> off = CodePointOffsets(s);
  size_t b = 0, e = off.size() - 1;  // code point indices
  auto cp_at = [&](size_t k) {
    size_t i = off[k];
    return DecodeAt(s, &i);
  };
  if (left) {
    while (b < e && strip_it(cp_at(b))) ++b;
  }
  if (right) {
    while (e > b && strip_it(cp_at(e - 1))) --e;
  }
  return std::string(s.substr(off[b], off[e] - off[b]));
}

// Python slice indices for a sequence of length n.
std::vector<int64_t> SliceIndices(int64_t n, const Value& start, const Value& stop, int64_t step) {
  std::vector<int64_t> out;
  auto clamp = [&](const Value& v, int64_t dflt, int64_t lo, int64_t hi) {
    if (!v.is_int()) return dflt;
    int64_t x = v.int_value();
    if (x < 0) x += n;
    return std::clamp(x, lo, hi);
  };
  if (step > 0) {
    const int64_t b = clamp(start, 0, 0, n), e = clamp(stop, n, 0, n);
    for (int64_t i = b; i < e; i += step) out.push_back(i);
  } else {
    const int64_t b = clamp(start, n - 1, -1, n - 1), e = clamp(stop, -1, -1, n - 1);
    for (int64_t i = b; i > e; i += step) out.push_back(i);
  }
  return out;
}

void AppendJsonString(std::string_view s, std::string* out) {
  *out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          *out += static_cast<char>(c);
        }
    }
  }
  *out += '"';
}

// json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson.
void AppendJson(const Value& v, int indent, int depth, std::string* out) {
  const std::string pad =
      indent > 0 ? "\n" + std::string(static_cast<size_t>(indent) * (depth + 1), ' ') : "";
  const std::string end_pad = indent > 0 ? "\n" + std::string(static_cast<size_t>(indent) * depth, ' ') : "";
  const char* sep = indent > 0 ? "," : ", ";
  switch (v.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      *out += "null";
      return;
    case Value::Kind::kBool:
      *out += v.bool_value() ? "true" : "false";
      return;
    case Value::Kind::kInt:
      *out += std::to_string(v.int_value());
      return;
    case Value::Kind::kFloat: {
      const double f = v.float_value();
      *out += std::isnan(f) ? "NaN" : std::isinf(f) ? (f > 0 ? "Infinity" : "-Infinity") : FormatFloat(f);
      return;
    }
    case Value::Kind::kString:
      AppendJsonString(v.string_value(), out);
      return;
    case Value::Kind::kList: {
      if (v.list().empty()) {
        *out += "[]";
        return;
      }
      *out += '[';
      bool first = true;
      for (const Value& e : v.list()) {
        if (!first) *out += sep;
        first = false;
        *out += pad;
        AppendJson(e, indent, depth + 1, out);
      }
      *out += end_pad + "]";
      return;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      if (v.dict().empty()) {
        *out += "{}";
        return;
      }
      *out += '{';
      bool first = true;
      for (const auto& [k, e] : v.dict()) {
        if (!first) *out += sep;
        first = false;
        *out += pad;
        AppendJsonString(k, out);
        *out += ": ";
        AppendJson(e, indent, depth + 1, out);
      }
      *out += end_pad + "}";
      return;
    }
  }
}

enum class Flow { kNormal, kBreak, kContinue };

using Frame = absl::flat_hash_map<std::string, Value>;

class Interpreter {
 public:
  Interpreter(const RenderOptions& options, const Value::Dict& context) : options_(options) {
    frames_.emplace_back();
    for (const auto& [k, v] : context) frames_[0][k] = v;
  }

  absl::Status Run(const NodeList& nodes, std::string* out) {
    Flow flow = Flow::kNormal;
    return Exec(nodes, out, &flow);
  }

 private:
  // ---- errors and limits ----
  template <typename... Args>
  absl::Status Error(const Expr& e, const Args&... args) const {
    return absl::InvalidArgumentError(Cat("template ", Where(e.line, e.column), ": ", args...));
  }
  template <typename... Args>
  absl::Status NodeError(const Node& n, const Args&... args) const {
    return absl::InvalidArgumentError(Cat("template ", Where(n.line, n.column), ": ", args...));
  }
  absl::Status Step(int line, int column, int64_t n = 1) {
    steps_ += n;
    if (steps_ > options_.max_steps) {
      return absl::ResourceExhaustedError(
          Cat("template ", Where(line, column), ": more than ", options_.max_steps, " evaluation steps"));
    }
    return absl::OkStatus();
  }
  absl::Status CheckSize(const Expr& e, size_t size) const {
    if (size > options_.max_output_bytes) {
      return absl::ResourceExhaustedError(Cat("template ", Where(e.line, e.column), ": value of ", size,
                                              " bytes or items exceeds the limit of ",
                                              options_.max_output_bytes));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<Value> Container(const Expr& e, Value v) const {
    if (v.depth() > kMaxParseDepth) {
      return Error(e, "value nested deeper than ", kMaxParseDepth, " levels");
    }
    return v;
  }

  // ---- scopes ----
  const Value* Lookup(const std::string& name) const {
    for (size_t i = frames_.size(); i-- > floor_;) {
      auto it = frames_[i].find(name);
      if (it != frames_[i].end()) return &it->second;
    }
    if (floor_ > 0) {
      auto it = frames_[0].find(name);
      if (it != frames_[0].end()) return &it->second;
    }
    return nullptr;
  }

  // ---- statements ----
  absl::Status Emit(const Node& n, std::string_view s, std::string* out) {
    if (out->size() + s.size() > options_.max_output_bytes) {
      return absl::ResourceExhaustedError(Cat("template ", Where(n.line, n.column), ": output exceeds ",
                                              options_.max_output_bytes, " bytes"));
    }
    out->append(s);
    return absl::OkStatus();
  }

  absl::Status Exec(const NodeList& nodes, std::string* out, Flow* flow) {
    for (const auto& node : nodes) {
      const Node& n = *node;
      TANDEM_RETURN_IF_ERROR(Step(n.line, n.column));
      switch (n.kind) {
        case Node::Kind::kText:
          TANDEM_RETURN_IF_ERROR(Emit(n, n.text, out));
          break;
        case Node::Kind::kOutput: {
          TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
          TANDEM_RETURN_IF_ERROR(Emit(n, v.ToString(), out));
          break;
        }
        case Node::Kind::kIf: {
          bool done = false;
          for (size_t i = 0; i < n.conditions.size() && !done; ++i) {
            TANDEM_ASSIGN_OR_RETURN(Value c, Eval(*n.conditions[i]));
            if (c.Truthy()) {
              TANDEM_RETURN_IF_ERROR(Exec(n.bodies[i], out, flow));
              done = true;
            }
          }
          if (!done) TANDEM_RETURN_IF_ERROR(Exec(n.else_body, out, flow));
          break;
        }
        case Node::Kind::kFor:
          TANDEM_RETURN_IF_ERROR(ExecFor(n, out));
          break;
        case Node::Kind::kSet:
          TANDEM_RETURN_IF_ERROR(ExecSet(n));
          break;
        case Node::Kind::kMacro:
          macros_[n.name] = &n;
          break;
        case Node::Kind::kBreak:
        case Node::Kind::kContinue:
          if (loop_depth_ == 0) return NodeError(n, "'break' or 'continue' outside a loop");
          *flow = n.kind == Node::Kind::kBreak ? Flow::kBreak : Flow::kContinue;
          break;
      }
      if (*flow != Flow::kNormal) return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  absl::Status Bind(const Node& n, const std::vector<std::string>& targets, const Value& v, Frame* frame) {
    if (targets.size() == 1) {
      (*frame)[targets[0]] = v;
      return absl::OkStatus();
    }
    if (!v.is_list())
      return NodeError(n, "cannot unpack a ", v.TypeName(), " into ", targets.size(), " names");
    if (v.list().size() != targets.size()) {
      return NodeError(n, "expected ", targets.size(), " values to unpack, got ", v.list().size());
    }
    for (size_t i = 0; i < targets.size(); ++i) (*frame)[targets[i]] = v.list()[i];
    return absl::OkStatus();
  }

  absl::StatusOr<Value::List> Iterate(const Expr& e, const Value& v) {
    Value::List items;
    switch (v.kind()) {
      case Value::Kind::kUndefined:
        break;  // Jinja's Undefined iterates as empty
      case Value::Kind::kList:
        items = v.list();
        break;
      case Value::Kind::kDict:
        for (const auto& [k, x] : v.dict()) items.push_back(Value(k));
        break;
      case Value::Kind::kString: {
        const std::vector<size_t> off = CodePointOffsets(v.string_value());
        for (size_t i = 0; i + 1 < off.size(); ++i) {
          items.push_back(Value(v.string_value().substr(off[i], off[i + 1] - off[i])));
        }
        break;
      }
      default:
        return Error(e, "'", v.TypeName(), "' object is not iterable");
    }
    TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, static_cast<int64_t>(items.size())));
    return items;
  }

  absl::Status ExecFor(const Node& n, std::string* out) {
    TANDEM_ASSIGN_OR_RETURN(Value seq, Eval(*n.expr));
    TANDEM_ASSIGN_OR_RETURN(Value::List all, Iterate(*n.expr, seq));
    frames_.emplace_back();
    const size_t frame = frames_.size() - 1;
    Value::List items;
    if (n.cond) {
      for (const Value& item : all) {
        TANDEM_RETURN_IF_ERROR(Bind(n, n.targets, item, &frames_[frame]));
        TANDEM_ASSIGN_OR_RETURN(Value keep, Eval(*n.cond));
        if (keep.Truthy()) items.push_back(item);
      }
    } else {
      items = std::move(all);
    }
    ++loop_depth_;
    absl::Status status;
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len && status.ok(); ++i) {
      status = Step(n.line, n.column);
      if (!status.ok()) break;
      frames_[frame]["loop"] = Value(Value::Dict{
          {"index", Value(i + 1)},
          {"index0", Value(i)},
          {"revindex", Value(len - i)},
          {"revindex0", Value(len - i - 1)},
          {"first", Value(i == 0)},
          {"last", Value(i == len - 1)},
          {"length", Value(len)},
          {"previtem", i > 0 ? items[i - 1] : Value()},
          {"nextitem", i + 1 < len ? items[i + 1] : Value()},
      });
      status = Bind(n, n.targets, items[i], &frames_[frame]);
      if (!status.ok()) break;
      Flow flow = Flow::kNormal;
      status = Exec(n.body, out, &flow);
      if (flow == Flow::kBreak) break;
    }
    --loop_depth_;
    if (status.ok() && items.empty()) {
      Flow flow = Flow::kNormal;
      status = Exec(n.else_body, out, &flow);
    }
    frames_.pop_back();
    return status;
  }

  absl::Status ExecSet(const Node& n) {
    Value v;
    if (n.block_set) {
      std::string captured;
      Flow flow = Flow::kNormal;
      TANDEM_RETURN_IF_ERROR(Exec(n.body, &captured, &flow));
      v = Value(std::move(captured));
    } else {
      TANDEM_ASSIGN_OR_RETURN(v, Eval(*n.expr));
    }
    if (!n.attr_object.empty()) {
      const Value* target = Lookup(n.attr_object);
      if (target == nullptr || !target->is_namespace()) {
        return NodeError(n, "cannot assign attribute '", n.targets[0], "' of '", n.attr_object,
                         "': not a namespace");
      }
      if (v.Contains(*target, kMaxParseDepth)) {
        return NodeError(n, "assigning to '", n.attr_object, ".", n.targets[0],
                         "' would nest the namespace in itself or too deeply");
      }
      Value ns = *target;
      ns.Set(n.targets[0], std::move(v));
      return absl::OkStatus();
    }
    return Bind(n, n.targets, v, &frames_.back());
  }

  // ---- expressions ----
  absl::StatusOr<Value> Eval(const Expr& e) {
    TANDEM_RETURN_IF_ERROR(Step(e.line, e.column));
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kList: {
        Value::List items;
        for (const auto& item : e.items) {
          TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*item));
          items.push_back(std::move(v));
        }
        return Container(e, Value(std::move(items)));
      }
      case Expr::Kind::kDict: {
        Value result{Value::Dict{}};
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          TANDEM_ASSIGN_OR_RETURN(Value k, Eval(*e.items[i]));
          if (!k.is_string()) return Error(*e.items[i], "dict keys must be strings, got ", k.TypeName());
          TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*e.items[i + 1]));
          result.Set(k.string_value(), std::move(v));
        }
        return Container(e, Value(result.dict()));
      }
      case Expr::Kind::kName: {
        const Value* v = Lookup(e.name);
        return v == nullptr ? Value() : *v;
      }
      case Expr::Kind::kAttr: {
        TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*e.object));
        if (obj.is_undefined()) return Error(e, "cannot read attribute '", e.name, "' of an undefined value");
        if (obj.is_none()) return Error(e, "cannot read attribute '", e.name, "' of None");
        const Value* v = obj.Find(e.name);
        return v == nullptr ? Value() : *v;
      }
      case Expr::Kind::kItem: {
        TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*e.object));
        TANDEM_ASSIGN_OR_RETURN(Value key, Eval(*e.right));
        return Subscript(e, obj, key);
      }
      case Expr::Kind::kSlice:
        return EvalSlice(e);
      case Expr::Kind::kCall:
        return EvalCall(e);
      case Expr::Kind::kFilter: {
        TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*e.object));
        return ApplyFilter(e, std::move(obj));
      }
      case Expr::Kind::kTest: {
        TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*e.object));
        TANDEM_ASSIGN_OR_RETURN(bool r, ApplyTest(e, obj));
        return Value(r != e.negated);
      }
      case Expr::Kind::kUnary: {
        TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*e.object));
        if (e.name == "not") return Value(!v.Truthy());
        if (v.is_int() || v.is_bool()) {
          if (e.name == "+") return Value(v.int_value());
          if (v.int_value() == INT64_MIN) return Error(e, "integer overflow");
          return Value(-v.int_value());
        }
        if (v.is_float()) return Value(e.name == "-" ? -v.float_value() : v.float_value());
        return Error(e, "bad operand type for unary ", e.name, ": '", v.TypeName(), "'");
      }
      case Expr::Kind::kBinary:
        return EvalBinary(e);
      case Expr::Kind::kCondition: {
        TANDEM_ASSIGN_OR_RETURN(Value c, Eval(*e.cond));
        if (c.Truthy()) return Eval(*e.left);
        if (e.right) return Eval(*e.right);
        return Value();
      }
    }
    return Error(e, "unsupported expression");
  }

  absl::StatusOr<Value> Subscript(const Expr& e, const Value& obj, const Value& key) {
    if (obj.is_dict() || obj.is_namespace()) {
      if (!key.is_string()) return Value();
      const Value* v = obj.Find(key.string_value());
      return v == nullptr ? Value() : *v;
    }
    if (obj.is_list() || obj.is_string()) {
      if (!key.is_int()) return Error(e, obj.TypeName(), " indices must be integers, not ", key.TypeName());
      std::vector<size_t> off;
      if (obj.is_string()) off = CodePointOffsets(obj.string_value());
      const int64_t n =
          obj.is_list() ? static_cast<int64_t>(obj.list().size()) : static_cast<int64_t>(off.size()) - 1;
      int64_t i = key.int_value();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value();  // Jinja: undefined
      if (obj.is_list()) return obj.list()[i];
      return Value(obj.string_value().substr(off[i], off[i + 1] - off[i]));
    }
    if (obj.is_undefined()) return Error(e, "cannot subscript an undefined value");
    return Error(e, "'", obj.TypeName(), "' object is not subscriptable");
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*e.object));
    Value parts[3];
    const ExprPtr* exprs[3] = {&e.start, &e.stop, &e.step};
    for (int i = 0; i < 3; ++i) {
      if (*exprs[i]) {
        TANDEM_ASSIGN_OR_RETURN(parts[i], Eval(**exprs[i]));
        if (!parts[i].is_int() && !parts[i].is_none())
          return Error(e, "slice indices must be integers or None");
      }
    }
    const int64_t step = parts[2].is_int() ? parts[2].int_value() : 1;
    if (step == 0) return Error(e, "slice step cannot be zero");
    if (obj.is_list()) {
      const auto idx = SliceIndices(static_cast<int64_t>(obj.list().size()), parts[0], parts[1], step);
      Value::List out;
      for (int64_t i : idx) out.push_back(obj.list()[i]);
      return Value(std::move(out));
    }
    if (obj.is_string()) {
      const std::vector<size_t> off = CodePointOffsets(obj.string_value());
      const auto idx = SliceIndices(static_cast<int64_t>(off.size()) - 1, parts[0], parts[1], step);
      std::string out;
      for (int64_t i : idx) out += obj.string_value().substr(off[i], off[i + 1] - off[i]);
      return Value(std::move(out));
    }
    return Error(e, "'", obj.TypeName(), "' object cannot be sliced");
  }

  static bool IsNum(const Value& v) { return v.is_int() || v.is_float() || v.is_bool(); }

  absl::StatusOr<Value> EvalBinary(const Expr& e) {
    const std::string& op = e.name;
    TANDEM_ASSIGN_OR_RETURN(Value a, Eval(*e.left));
    if (op == "and") return a.Truthy() ? Eval(*e.right) : a;
    if (op == "or") return a.Truthy() ? a : Eval(*e.right);
    TANDEM_ASSIGN_OR_RETURN(Value b, Eval(*e.right));
    if (op == "==") return Value(a == b);
    if (op == "!=") return Value(!(a == b));
    if (op == "~") {
      std::string s = a.ToString() + b.ToString();
      TANDEM_RETURN_IF_ERROR(CheckSize(e, s.size()));
      return Value(std::move(s));
    }
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string()) {
        if (!a.is_string())
          return Error(e, "'in <string>' requires a string as left operand, not ", a.TypeName());
        found = b.string_value().find(a.string_value()) != std::string::npos;
      } else if (b.is_list()) {
        TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, static_cast<int64_t>(b.list().size())));
        found = std::find(b.list().begin(), b.list().end(), a) != b.list().end();
      } else if (b.is_dict() || b.is_namespace()) {
        found = a.is_string() && b.Find(a.string_value()) != nullptr;
      } else if (!b.is_undefined()) {
        return Error(e, "argument of type '", b.TypeName(), "' is not iterable");
      }
      return Value(found != (op == "not in"));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (IsNum(a) && IsNum(b)) {
        if ((a.is_float() || b.is_float())) {
          const double x = a.AsDouble(), y = b.AsDouble();
          if (std::isnan(x) || std::isnan(y)) return Value(false);
          cmp = x < y ? -1 : x > y ? 1 : 0;
        } else {
          cmp = a.int_value() < b.int_value() ? -1 : a.int_value() > b.int_value() ? 1 : 0;
        }
      } else if (a.is_string() && b.is_string()) {
        cmp = a.string_value().compare(b.string_value());
      } else {
        return Error(e, "'", op, "' not supported between instances of '", a.TypeName(), "' and '",
                     b.TypeName(), "'");
      }
      if (op == "<") return Value(cmp < 0);
      if (op == ">") return Value(cmp > 0);
      if (op == "<=") return Value(cmp <= 0);
      return Value(cmp >= 0);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) {
        TANDEM_RETURN_IF_ERROR(CheckSize(e, a.string_value().size() + b.string_value().size()));
        return Value(a.string_value() + b.string_value());
      }
      if (a.is_list() && b.is_list()) {
        TANDEM_RETURN_IF_ERROR(CheckSize(e, a.list().size() + b.list().size()));
        TANDEM_RETURN_IF_ERROR(
            Step(e.line, e.column, static_cast<int64_t>(a.list().size() + b.list().size())));
        Value::List out = a.list();
        out.insert(out.end(), b.list().begin(), b.list().end());
        return Value(std::move(out));
      }
    }
    if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
      const Value& seq = (a.is_string() || a.is_list()) ? a : b;
      const Value& count = (a.is_string() || a.is_list()) ? b : a;
      if (!count.is_int() && !count.is_bool()) {
        return Error(e, "can't multiply sequence by non-int of type '", count.TypeName(), "'");
      }
      const int64_t n = std::max<int64_t>(0, count.int_value());
      const size_t unit = seq.is_string() ? seq.string_value().size() : seq.list().size();
      if (unit > 0 && static_cast<uint64_t>(n) > options_.max_output_bytes / unit) {
        return CheckSize(e, options_.max_output_bytes + 1);
      }
      TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, n));
      if (seq.is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq.string_value();
        return Value(std::move(out));
      }
      Value::List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.list().begin(), seq.list().end());
      return Value(std::move(out));
    }
    if (!IsNum(a) || !IsNum(b)) {
      return Error(e, "unsupported operand type(s) for ", op, ": '", a.TypeName(), "' and '", b.TypeName(),
                   "'");
    }
    if (a.is_float() || b.is_float() || op == "/") {
      const double x = a.AsDouble(), y = b.AsDouble();
      if ((op == "/" || op == "//" || op == "%") && y == 0) return Error(e, "division by zero");
      if (op == "+") return Value(x + y);
      if (op == "-") return Value(x - y);
      if (op == "*") return Value(x * y);
      if (op == "/") return Value(x / y);
      if (op == "//") return Value(std::floor(x / y));
      if (op == "%") {
        double r = std::fmod(x, y);
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value(r);
      }
      if (op == "**") return Value(std::pow(x, y));
    } else {
      const int64_t x = a.int_value(), y = b.int_value();
      int64_t r = 0;
      if ((op == "//" || op == "%") && y == 0) return Error(e, "integer division or modulo by zero");
      if (op == "+" && !__builtin_add_overflow(x, y, &r)) return Value(r);
      if (op == "-" && !__builtin_sub_overflow(x, y, &r)) return Value(r);
      if (op == "*" && !__builtin_mul_overflow(x, y, &r)) return Value(r);
      if (op == "//" && !(x == INT64_MIN && y == -1)) {
        r = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --r;
        return Value(r);
      }
      if (op == "%" && !(x == INT64_MIN && y == -1)) {
        r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value(r);
      }
      if (op == "**") {
        if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
        int64_t result = 1;
        for (int64_t i = 0; i < y; ++i) {
          if (__builtin_mul_overflow(result, x, &result)) return Error(e, "integer overflow");
          if (result == 0 || result == 1) break;
        }
        return Value(result);
      }
      if (op == "+" || op == "-" || op == "*" || op == "//" || op == "%") return Error(e, "integer overflow");
    }
    return Error(e, "unsupported operator '", op, "'");
  }

  // Evaluated positional and keyword arguments of a call, filter or test.
  struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
    const Value* Get(size_t i, std::string_view name) const {
      if (i < pos.size()) return &pos[i];
      for (const auto& [k, v] : kw) {
        if (k == name) return &v;
      }
      return nullptr;
    }
  };
  absl::StatusOr<Args> EvalArgs(const Expr& e) {
    Args args;
    for (const auto& a : e.items) {
      TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*a));
      args.pos.push_back(std::move(v));
    }
    for (const auto& [k, a] : e.kwargs) {
      TANDEM_ASSIGN_OR_RETURN(Value v, Eval(*a));
      args.kw.emplace_back(k, std::move(v));
    }
    return args;
  }

  absl::StatusOr<std::string> StringArg(const Expr& e, const Args& args, size_t i, std::string_view name,
                                        std::string_view fn) {
    const Value* v = args.Get(i, name);
    if (v == nullptr || !v->is_string()) return Error(e, fn, "() argument '", name, "' must be a string");
    return v->string_value();
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    const Expr& callee = *e.object;
    if (callee.kind == Expr::Kind::kName) {
      TANDEM_ASSIGN_OR_RETURN(Args args, EvalArgs(e));
      return CallGlobal(e, callee.name, args);
    }
    if (callee.kind == Expr::Kind::kAttr) {
      TANDEM_ASSIGN_OR_RETURN(Value obj, Eval(*callee.object));
      TANDEM_ASSIGN_OR_RETURN(Args args, EvalArgs(e));
      return CallMethod(e, obj, callee.name, args);
    }
    return Error(e, "this expression is not callable");
  }

  absl::StatusOr<Value> CallGlobal(const Expr& e, const std::string& name, const Args& args) {
    if (auto it = macros_.find(name); it != macros_.end()) return CallMacro(e, *it->second, args);
    if (name == "raise_exception") {
      const Value* msg = args.Get(0, "message");
      return absl::InvalidArgumentError(
          Cat("template ", Where(e.line, e.column), ": raise_exception: ", msg ? msg->ToString() : ""));
    }
    if (name == "namespace") {
      if (++namespaces_ > kMaxNamespaces) return Error(e, "more than ", kMaxNamespaces, " namespaces");
      Value::Dict attrs;
      if (!args.pos.empty()) {
        if (args.pos.size() > 1 || !args.pos[0].is_dict())
          return Error(e, "namespace() takes one dict or keywords");
        attrs = args.pos[0].dict();
      }
      Value ns = Value::Namespace(std::move(attrs));
      for (const auto& [k, v] : args.kw) ns.Set(k, v);
      return Container(e, Value::Namespace(ns.dict()));
    }
    if (name == "range") {
      int64_t p[3] = {0, 0, 1};
      for (const Value& v : args.pos) {
        if (!v.is_int()) return Error(e, "range() arguments must be integers");
      }
      if (args.pos.size() == 1) {
        p[1] = args.pos[0].int_value();
      } else if (args.pos.size() == 2 || args.pos.size() == 3) {
        p[0] = args.pos[0].int_value();
        p[1] = args.pos[1].int_value();
        if (args.pos.size() == 3) p[2] = args.pos[2].int_value();
      } else {
        return Error(e, "range() takes 1 to 3 arguments");
      }
      if (p[2] == 0) return Error(e, "range() step must not be zero");
      Value::List out;
      for (int64_t i = p[0]; p[2] > 0 ? i < p[1] : i > p[1];) {
        TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size() + 1));
        TANDEM_RETURN_IF_ERROR(Step(e.line, e.column));
        out.push_back(Value(i));
        if (__builtin_add_overflow(i, p[2], &i)) break;
      }
      return Value(std::move(out));
    }
    if (name == "strftime_now") {
      TANDEM_ASSIGN_OR_RETURN(std::string fmt, StringArg(e, args, 0, "format", "strftime_now"));
      if (fmt.size() > 256) return Error(e, "strftime_now() format too long");
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[1024];
      const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
      return Value(std::string(buf, n));
    }
    return Error(e, "unknown function '", name, "'");
  }

  absl::StatusOr<Value> CallMacro(const Expr& e, const Node& macro, const Args& args) {
    if (call_depth_ >= options_.max_call_depth) {
      return absl::ResourceExhaustedError(Cat("template ", Where(e.line, e.column),
                                              ": macro calls nested deeper than ", options_.max_call_depth));
    }
    if (args.pos.size() > macro.params.size()) {
      return Error(e, "macro '", macro.name, "' takes ", macro.params.size(), " arguments, got ",
                   args.pos.size());
    }
    Frame frame;
    for (size_t i = 0; i < macro.params.size(); ++i) {
      const MacroParam& p = macro.params[i];
      if (const Value* v = args.Get(i, p.name)) {
        frame[p.name] = *v;
      } else if (p.default_value) {
        TANDEM_ASSIGN_OR_RETURN(frame[p.name], Eval(*p.default_value));
      } else {
        frame[p.name] = Value();
      }
    }
    const size_t saved_floor = floor_;
    const int saved_loops = loop_depth_;
    floor_ = frames_.size();
    frames_.push_back(std::move(frame));
    ++call_depth_;
    loop_depth_ = 0;
    std::string out;
    Flow flow = Flow::kNormal;
    absl::Status status = Exec(macro.body, &out, &flow);
    --call_depth_;
    loop_depth_ = saved_loops;
    frames_.pop_back();
    floor_ = saved_floor;
    TANDEM_RETURN_IF_ERROR(status);
    return Value(std::move(out));
  }

  absl::StatusOr<Value> CallMethod(const Expr& e, const Value& obj, const std::string& name,
                                   const Args& args) {
    if (obj.is_string()) {
      const std::string& s = obj.string_value();
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const Value* chars = args.Get(0, "chars");
        if (chars != nullptr && !chars->is_string() && !chars->is_none()) {
          return Error(e, name, "() argument must be a string or None");
        }
        const std::string* set = chars != nullptr && chars->is_string() ? &chars->string_value() : nullptr;
        return Value(Strip(s, set, name != "rstrip", name != "lstrip"));
      }
      if (name == "startswith" || name == "endswith") {
        const Value* arg = args.Get(0, "prefix");
        if (arg == nullptr) return Error(e, name, "() takes at least 1 argument");
        std::vector<std::string> options;
        if (arg->is_string()) {
          options.push_back(arg->string_value());
        } else if (arg->is_list()) {
          for (const Value& v : arg->list()) {
            if (!v.is_string()) return Error(e, name, "() tuple elements must be strings");
            options.push_back(v.string_value());
          }
        } else {
          return Error(e, name, "() argument must be a string or tuple of strings");
        }
        for (const std::string& o : options) {
          if (name == "startswith" ? s.starts_with(o) : s.ends_with(o)) return Value(true);
        }
        return Value(false);
      }
      if (name == "split") {
        const Value* sep = args.Get(0, "sep");
        const Value* maxv = args.Get(1, "maxsplit");
        int64_t maxsplit = maxv != nullptr && maxv->is_int() ? maxv->int_value() : -1;
        Value::List parts;
        if (sep == nullptr || sep->is_none()) {
          size_t i = 0;
          auto space_at = [&](size_t k) {
            size_t j = k;
            return IsPySpace(DecodeAt(s, &j));
          };
          auto advance = [&](size_t k) {
            DecodeAt(s, &k);
            return k;
          };
          while (i < s.size()) {
            while (i < s.size() && space_at(i)) i = advance(i);
            if (i >= s.size()) break;
            if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
              size_t end = s.size();
              while (end > i) {  // Python keeps the remainder, minus trailing space
                size_t k = i, last = i;
                while (k < end) {
                  last = k;
                  k = advance(k);
                }
                if (!space_at(last)) break;
                end = last;
              }
              parts.push_back(Value(s.substr(i, end - i)));
              break;
            }
            size_t j = i;
            while (j < s.size() && !space_at(j)) j = advance(j);
            parts.push_back(Value(s.substr(i, j - i)));
            i = j;
          }
        } else {
          if (!sep->is_string()) return Error(e, "split() separator must be a string or None");
          const std::string& d = sep->string_value();
          if (d.empty()) return Error(e, "split(): empty separator");
          size_t i = 0;
          while (true) {
            size_t j = s.find(d, i);
            if (j == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit)) {
              parts.push_back(Value(s.substr(i)));
              break;
            }
            parts.push_back(Value(s.substr(i, j - i)));
            i = j + d.size();
          }
        }
        TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, static_cast<int64_t>(parts.size())));
        return Value(std::move(parts));
      }
      if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        return Value(ChangeCase(s, name));
      }
      if (name == "replace") {
        TANDEM_ASSIGN_OR_RETURN(std::string from, StringArg(e, args, 0, "old", "replace"));
        TANDEM_ASSIGN_OR_RETURN(std::string to, StringArg(e, args, 1, "new", "replace"));
        const Value* count = args.Get(2, "count");
        return Replace(e, s, from, to, count != nullptr && count->is_int() ? count->int_value() : -1);
      }
      if (name == "join") {
        const Value* seq = args.Get(0, "iterable");
        if (seq == nullptr) return Error(e, "join() takes 1 argument");
        return Join(e, *seq, s);
      }
      if (name == "find") {
        TANDEM_ASSIGN_OR_RETURN(std::string sub, StringArg(e, args, 0, "sub", "find"));
        const size_t at = s.find(sub);
        if (at == std::string::npos) return Value(int64_t{-1});
        return Value(static_cast<int64_t>(CodePointOffsets(s.substr(0, at)).size() - 1));
      }
      return Error(e, "str has no method '", name, "'");
    }
    if (obj.is_dict()) {
      if (name == "items" || name == "keys" || name == "values") {
        Value::List out;
        for (const auto& [k, v] : obj.dict()) {
          if (name == "items") out.push_back(Value(Value::List{Value(k), v}));
          if (name == "keys") out.push_back(Value(k));
          if (name == "values") out.push_back(v);
        }
        TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, static_cast<int64_t>(out.size())));
        return Container(e, Value(std::move(out)));
      }
      if (name == "get") {
        const Value* key = args.Get(0, "key");
        const Value* dflt = args.Get(1, "default");
        const Value* v = key != nullptr && key->is_string() ? obj.Find(key->string_value()) : nullptr;
        if (v != nullptr) return *v;
        return dflt != nullptr ? *dflt : Value::None();
      }
      // A callable stored in a dict is not a thing this interpreter has.
      return Error(e, "dict has no method '", name, "'");
    }
    if (obj.is_undefined()) return Error(e, "cannot call method '", name, "' of an undefined value");
    return Error(e, "'", obj.TypeName(), "' object has no method '", name, "'");
  }

  static std::string ChangeCase(const std::string& s, std::string_view mode) {
    // ASCII letters only; other characters pass through unchanged.
    std::string out = s;
    bool word_start = true;
    for (size_t i = 0; i < out.size(); ++i) {
      const char c = out[i];
      const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (mode == "upper") {
        if (c >= 'a' && c <= 'z') out[i] = c - 32;
      } else if (mode == "lower") {
        if (c >= 'A' && c <= 'Z') out[i] = c + 32;
      } else if (mode == "title") {
        if (alpha) {
          out[i] = word_start ? (c >= 'a' ? c - 32 : c) : (c <= 'Z' ? c + 32 : c);
        }
        word_start = !alpha && !(static_cast<unsigned char>(c) >= 0x80);
      } else {  // capitalize
        if (alpha) out[i] = i == 0 ? (c >= 'a' ? c - 32 : c) : (c <= 'Z' ? c + 32 : c);
      }
    }
    return out;
  }

  absl::StatusOr<Value> Replace(const Expr& e, const std::string& s, const std::string& from,
                                const std::string& to, int64_t count) {
    std::string out;
    size_t i = 0;
    int64_t done = 0;
    if (from.empty()) {  // Python inserts `to` between every code point
      const std::vector<size_t> off = CodePointOffsets(s);
      for (size_t k = 0; k < off.size(); ++k) {
        if (count < 0 || done < count) {
          out += to;
          ++done;
        }
        if (k + 1 < off.size()) out += s.substr(off[k], off[k + 1] - off[k]);
        TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
      }
      return Value(std::move(out));
    }
    while (count < 0 || done < count) {
      const size_t j = s.find(from, i);
      if (j == std::string::npos) break;
      out.append(s, i, j - i);
      out += to;
      i = j + from.size();
      ++done;
      TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
    }
    out.append(s, i);
    TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
    return Value(std::move(out));
  }

  absl::StatusOr<Value> Join(const Expr& e, const Value& seq, const std::string& sep,
                             const Value* attribute = nullptr) {
    TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, seq));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += sep;
      if (attribute != nullptr) {
        TANDEM_ASSIGN_OR_RETURN(Value v, Attribute(e, items[i], *attribute));
        out += v.ToString();
      } else {
        out += items[i].ToString();
      }
      TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
    }
    return Value(std::move(out));
  }

  // Jinja's attribute lookup for filters: "a.b" walks dots, digits index lists.
  absl::StatusOr<Value> Attribute(const Expr& e, const Value& item, const Value& attribute) {
    if (attribute.is_int()) return Subscript(e, item, attribute);
    if (!attribute.is_string()) return Error(e, "attribute must be a string");
    Value v = item;
    std::string_view path = attribute.string_value();
    while (true) {
      const size_t dot = path.find('.');
      const std::string part(path.substr(0, dot));
      if (v.is_dict() || v.is_namespace()) {
        const Value* x = v.Find(part);
        v = x == nullptr ? Value() : *x;
      } else {
        v = Value();
      }
      if (dot == std::string_view::npos) return v;
      path.remove_prefix(dot + 1);
    }
  }

  absl::StatusOr<Value> ApplyFilter(const Expr& e, Value v) {
    TANDEM_ASSIGN_OR_RETURN(Args args, EvalArgs(e));
    const std::string& f = e.name;
    if (f == "trim") {
      const Value* chars = args.Get(0, "chars");
      const std::string* set = chars != nullptr && chars->is_string() ? &chars->string_value() : nullptr;
      return Value(Strip(v.ToString(), set, true, true));
    }
    if (f == "length" || f == "count") {
      if (v.is_string()) return Value(static_cast<int64_t>(CodePointOffsets(v.string_value()).size() - 1));
      if (v.is_list()) return Value(static_cast<int64_t>(v.list().size()));
      if (v.is_dict() || v.is_namespace()) return Value(static_cast<int64_t>(v.dict().size()));
      if (v.is_undefined()) return Value(int64_t{0});
      return Error(e, "object of type '", v.TypeName(), "' has no len()");
    }
    if (f == "tojson") {
      const Value* indent = args.Get(0, "indent");
      const int ind = indent != nullptr && indent->is_int()
                          ? static_cast<int>(std::clamp<int64_t>(indent->int_value(), 0, 16))
                          : 0;
      std::string out;
      AppendJson(v, ind, 0, &out);
      TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
      return Value(std::move(out));
    }
    if (f == "items") {
      if (v.is_undefined()) return Value(Value::List{});
      if (!v.is_dict()) return Error(e, "items filter expects a dict, got ", v.TypeName());
      return CallMethod(e, v, "items", Args{});
    }
    if (f == "first" || f == "last") {
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      if (items.empty()) return Value();
      return f == "first" ? items.front() : items.back();
    }
    if (f == "default" || f == "d") {
      const Value* dflt = args.Get(0, "default_value");
      const Value* boolean = args.Get(1, "boolean");
      const bool use_default = v.is_undefined() || (boolean != nullptr && boolean->Truthy() && !v.Truthy());
      if (use_default) return dflt != nullptr ? *dflt : Value("");
      return v;
    }
    if (f == "upper" || f == "lower" || f == "title" || f == "capitalize")
      return Value(ChangeCase(v.ToString(), f));
    if (f == "replace") {
      TANDEM_ASSIGN_OR_RETURN(std::string from, StringArg(e, args, 0, "old", "replace"));
      TANDEM_ASSIGN_OR_RETURN(std::string to, StringArg(e, args, 1, "new", "replace"));
      const Value* count = args.Get(2, "count");
      return Replace(e, v.ToString(), from, to,
                     count != nullptr && count->is_int() ? count->int_value() : -1);
    }
    if (f == "string") return Value(v.ToString());
    if (f == "safe" || f == "e" || f == "escape") {
      if (f == "safe") return v;
      return Error(e, "filter '", f, "' is not supported (chat templates render without autoescaping)");
    }
    if (f == "join") {
      const Value* sep = args.Get(0, "d");
      const Value* attribute = args.Get(1, "attribute");
      return Join(e, v, sep != nullptr ? sep->ToString() : "", attribute);
    }
    if (f == "list") {
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      return Value(std::move(items));
    }
    if (f == "reverse") {
      if (v.is_string()) {
        const std::vector<size_t> off = CodePointOffsets(v.string_value());
        std::string out;
        for (size_t k = off.size() - 1; k-- > 0;) out += v.string_value().substr(off[k], off[k + 1] - off[k]);
        return Value(std::move(out));
      }
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      std::reverse(items.begin(), items.end());
      return Value(std::move(items));
    }
    if (f == "int") {
      if (v.is_int() || v.is_bool()) return Value(v.int_value());
      if (v.is_float() && std::isfinite(v.float_value()) && std::fabs(v.float_value()) < 9.2e18) {
        return Value(static_cast<int64_t>(v.float_value()));
      }
      if (v.is_string()) {
        char* end = nullptr;
        const long long x = std::strtoll(v.string_value().c_str(), &end, 10);
        if (end != v.string_value().c_str() && *end == '\0') return Value(static_cast<int64_t>(x));
      }
      const Value* dflt = args.Get(0, "default");
      return dflt != nullptr ? *dflt : Value(int64_t{0});
    }
    if (f == "float") {
      if (IsNum(v)) return Value(v.AsDouble());
      if (v.is_string()) {
        char* end = nullptr;
        const double x = std::strtod(v.string_value().c_str(), &end);
        if (end != v.string_value().c_str() && *end == '\0') return Value(x);
      }
      return Value(0.0);
    }
    if (f == "abs") {
      if (v.is_float()) return Value(std::fabs(v.float_value()));
      if ((v.is_int() || v.is_bool()) && v.int_value() != INT64_MIN) return Value(std::abs(v.int_value()));
      return Error(e, "bad operand type for abs(): '", v.TypeName(), "'");
    }
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
      const bool by_attr = f == "selectattr" || f == "rejectattr";
      const bool keep_if = f == "selectattr" || f == "select";
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      size_t next = 0;
      Value attribute;
      if (by_attr) {
        if (args.pos.empty()) return Error(e, f, "() needs an attribute name");
        attribute = args.pos[next++];
      }
      std::string test;
      if (next < args.pos.size()) {
        if (!args.pos[next].is_string()) return Error(e, f, "() test name must be a string");
        test = args.pos[next++].string_value();
      }
      std::vector<Value> test_args(args.pos.begin() + next, args.pos.end());
      Value::List out;
      for (const Value& item : items) {
        Value subject = item;
        if (by_attr) {
          TANDEM_ASSIGN_OR_RETURN(subject, Attribute(e, item, attribute));
        }
        bool pass;
        if (test.empty()) {
          pass = subject.Truthy();
        } else {
          TANDEM_ASSIGN_OR_RETURN(pass, RunTest(e, test, subject, test_args));
        }
        if (pass == keep_if) out.push_back(item);
      }
      return Value(std::move(out));
    }
    if (f == "map") {
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      Value::List out;
      const Value* attribute = args.Get(99, "attribute");
      if (attribute != nullptr) {
        const Value* dflt = args.Get(99, "default");
        for (const Value& item : items) {
          TANDEM_ASSIGN_OR_RETURN(Value x, Attribute(e, item, *attribute));
          out.push_back(x.is_undefined() && dflt != nullptr ? *dflt : x);
        }
        return Value(std::move(out));
      }
      if (args.pos.empty() || !args.pos[0].is_string())
        return Error(e, "map() needs a filter name or attribute=");
      // map('filter', args...): apply a filter with literal arguments to each item.
      Expr inner;
      inner.kind = Expr::Kind::kFilter;
      inner.line = e.line;
      inner.column = e.column;
      inner.name = args.pos[0].string_value();
      if (inner.name == "map") return Error(e, "map('map') is not supported");
      for (size_t i = 1; i < args.pos.size(); ++i) {
        auto lit = std::make_unique<Expr>();
        lit->kind = Expr::Kind::kLiteral;
        lit->value = args.pos[i];
        inner.items.push_back(std::move(lit));
      }
      for (const Value& item : items) {
        TANDEM_ASSIGN_OR_RETURN(Value x, ApplyFilter(inner, item));
        out.push_back(std::move(x));
      }
      return Value(std::move(out));
    }
    if (f == "unique") {
      TANDEM_ASSIGN_OR_RETURN(Value::List items, Iterate(e, v));
      TANDEM_RETURN_IF_ERROR(Step(e.line, e.column, static_cast<int64_t>(items.size() * items.size() / 64)));
      Value::List out;
      for (const Value& item : items) {
        if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
      }
      return Value(std::move(out));
    }
    if (f == "indent") {
      const Value* width = args.Get(0, "width");
      const Value* first = args.Get(1, "first");
      const Value* blank = args.Get(2, "blank");
      const std::string pad =
          width != nullptr && width->is_string()
              ? width->string_value()
              : std::string(width != nullptr && width->is_int()
                                ? static_cast<size_t>(std::clamp<int64_t>(width->int_value(), 0, 64))
                                : 4,
                            ' ');
      const std::string s = v.ToString();
      std::string out;
      size_t i = 0;
      bool line_start = true, first_line = true;
      while (i <= s.size()) {
        const size_t nl = s.find('\n', i);
        const std::string_view line(s.data() + i, (nl == std::string::npos ? s.size() : nl) - i);
        if (line_start && (!first_line || (first != nullptr && first->Truthy())) &&
            (!line.empty() || (blank != nullptr && blank->Truthy()))) {
          out += pad;
        }
        out += line;
        first_line = false;
        if (nl == std::string::npos) break;
        out += '\n';
        i = nl + 1;
        TANDEM_RETURN_IF_ERROR(CheckSize(e, out.size()));
      }
      return Value(std::move(out));
    }
    return Error(e, "unknown filter '", f, "'");
  }

  absl::StatusOr<bool> ApplyTest(const Expr& e, const Value& v) {
    TANDEM_ASSIGN_OR_RETURN(Args args, EvalArgs(e));
    return RunTest(e, e.name, v, args.pos);
  }

  absl::StatusOr<bool> RunTest(const Expr& e, const std::string& t, const Value& v,
                               const std::vector<Value>& args) {
    auto arg = [&]() -> const Value* { return args.empty() ? nullptr : &args[0]; };
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_int() || v.is_float();
    if (t == "integer") return v.is_int();
    if (t == "float") return v.is_float();
    if (t == "boolean") return v.is_bool();
    if (t == "true") return v.is_bool() && v.bool_value();
    if (t == "false") return v.is_bool() && !v.bool_value();
    if (t == "mapping") return v.is_dict();
    if (t == "sequence") return v.is_list() || v.is_string() || v.is_dict();
    if (t == "iterable") return v.is_list() || v.is_string() || v.is_dict();
    if (t == "callable") return false;
    if (t == "lower" || t == "upper") {
      if (!v.is_string()) return false;
      return ChangeCase(v.string_value(), t) == v.string_value();
    }
    if (t == "odd" || t == "even" || t == "divisibleby") {
      if (!v.is_int()) return Error(e, "test '", t, "' needs an integer");
      if (t == "odd") return v.int_value() % 2 != 0;
      if (t == "even") return v.int_value() % 2 == 0;
      const Value* d = arg();
      if (d == nullptr || !d->is_int() || d->int_value() == 0)
        return Error(e, "divisibleby needs a non-zero integer");
      if (d->int_value() == -1) return true;
      return v.int_value() % d->int_value() == 0;
    }
    const Value* other = arg();
    if (t == "equalto" || t == "eq" || t == "==" || t == "sameas") return other != nullptr && v == *other;
    if (t == "ne" || t == "!=") return other == nullptr || !(v == *other);
    if (t == "in") {
      if (other == nullptr) return Error(e, "test 'in' needs an argument");
      if (other->is_string())
        return v.is_string() && other->string_value().find(v.string_value()) != std::string::npos;
      if (other->is_list())
        return std::find(other->list().begin(), other->list().end(), v) != other->list().end();
      if (other->is_dict()) return v.is_string() && other->Find(v.string_value()) != nullptr;
      return false;
    }
    if (t == "gt" || t == "lt" || t == "ge" || t == "le" || t == ">" || t == "<" || t == ">=" || t == "<=") {
      if (other == nullptr || !IsNum(v) || !IsNum(*other))
        return Error(e, "test '", t, "' needs two numbers");
      const double x = v.AsDouble(), y = other->AsDouble();
      if (t == "gt" || t == ">") return x > y;
      if (t == "lt" || t == "<") return x < y;
      if (t == "ge" || t == ">=") return x >= y;
      return x <= y;
    }
    return Error(e, "unknown test '", t, "'");
  }

  static constexpr int kMaxNamespaces = 256;

  const RenderOptions& options_;
  std::vector<Frame> frames_;
  size_t floor_ = 0;  // lookups see frames_[floor_..] and frames_[0] (macro scope)
  absl::flat_hash_map<std::string, const Node*> macros_;
  int64_t steps_ = 0;
  int call_depth_ = 0;
  int loop_depth_ = 0;
  int namespaces_ = 0;
};

}  // namespace

absl::StatusOr<std::string> Template::Render(const Value::Dict& context, const RenderOptions& options) const {
  Interpreter interpreter(options, context);
  std::string out;
  TANDEM_RETURN_IF_ERROR(interpreter.Run(program_->nodes, &out));
  return out;
}

}  // namespace tandem::jinja
