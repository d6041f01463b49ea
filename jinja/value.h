// The value type of the Jinja interpreter: none, bool, int, float, string,
// list, dict (insertion-ordered, string keys) and namespace, with Python's
// truthiness, equality and str()/repr() conversions (True/False/None print as
// Python prints them), plus the undefined value a missing variable or
// attribute evaluates to.
//
//   jinja::Value::Dict message{{"role", "user"}, {"content", "Hi"}};
//   jinja::Value messages = jinja::Value::List{jinja::Value(message)};
//   messages.ToString();  // "[{'role': 'user', 'content': 'Hi'}]"
//
// Lists, dicts and namespaces share their storage between copies (as Python
// objects do), so `{% set ns.x = 1 %}` is seen through every copy of `ns`.
// A Value is not thread-safe: one Render owns the values it creates; values
// passed into Render are only read.
#ifndef TANDEM_JINJA_VALUE_H_
#define TANDEM_JINJA_VALUE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::jinja {

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace };
  using List = std::vector<Value>;
  // Insertion-ordered, as Python dicts are; keys are unique.
  using Dict = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // undefined
  static Value None() { return Value(Kind::kNone); }
  static Value Undefined() { return Value(); }
  static Value Namespace(Dict attrs);
  Value(bool b) : kind_(Kind::kBool), int_(b) {}                      // NOLINT: implicit on purpose
  Value(int v) : kind_(Kind::kInt), int_(v) {}                        // NOLINT
  Value(int64_t v) : kind_(Kind::kInt), int_(v) {}                    // NOLINT
  Value(double v) : kind_(Kind::kFloat), float_(v) {}                 // NOLINT
  Value(std::string s) : kind_(Kind::kString), str_(std::move(s)) {}  // NOLINT
  Value(std::string_view s) : kind_(Kind::kString), str_(s) {}        // NOLINT
  Value(const char* s) : kind_(Kind::kString), str_(s) {}             // NOLINT
  Value(List list);                                                   // NOLINT
  Value(Dict dict);                                                   // NOLINT

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }

  // REQUIRES: the matching kind (bool and int share int()).
  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double float_value() const { return float_; }
  // Int, bool or float as a double. REQUIRES: is_number() or is_bool().
  double AsDouble() const { return is_float() ? float_ : static_cast<double>(int_); }
  const std::string& string_value() const { return str_; }
  const List& list() const { return *list_; }
  List& mutable_list() { return *list_; }
  // Dict or namespace entries.
  const Dict& dict() const { return *dict_; }
  Dict& mutable_dict() { return *dict_; }

  // Dict/namespace lookup; null when absent or not a dict/namespace.
  const Value* Find(std::string_view key) const;
  // Inserts or replaces. REQUIRES: is_dict() or is_namespace().
  void Set(std::string_view key, Value value);
  // Whether this list/dict/namespace shares storage with `other` or contains
  // a value that does (a depth-limited walk; true past the limit).
  bool Contains(const Value& other, int depth_limit = 64) const;

  // Nesting depth when this list/dict/namespace was built: 0 for scalars,
  // 1 + the deepest element otherwise (a namespace's later attribute
  // assignments do not update it; the interpreter bounds those separately).
  int depth() const { return depth_; }

  // Python bool(): empty strings, lists and dicts, 0, None and undefined are false.
  bool Truthy() const;
  // Python str(): strings as they are, True/False/None, floats as repr does,
  // lists and dicts as repr. Undefined is "". Nesting deeper than 64 levels
  // prints "..." (a namespace can refer to itself only through the limit).
  std::string ToString() const;
  // Python repr().
  std::string Repr() const;
  // Python ==: 1 == 1.0 == True, lists and dicts compare by content.
  friend bool operator==(const Value& a, const Value& b);

  // Python's name for the type, for error messages: 'str', 'int', ...
  std::string_view TypeName() const;

 private:
  explicit Value(Kind kind) : kind_(kind) {}
  void AppendRepr(std::string* out, bool top_level_str, int depth) const;

  Kind kind_ = Kind::kUndefined;
  int depth_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
};

// Python's repr() of a float: shortest round-trip digits, "1.0", "1e+16", "inf".
std::string FormatFloat(double v);

}  // namespace tandem::jinja

#endif  // TANDEM_JINJA_VALUE_H_
