#include "jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace tandem::jinja {

Value::Value(List list) : kind_(Kind::kList), list_(std::make_shared<List>(std::move(list))) {
  int d = 0;
  for (const Value& v : *list_) d = std::max(d, v.depth_);
  depth_ = d + 1;
}

Value::Value(Dict dict) : kind_(Kind::kDict), dict_(std::make_shared<Dict>(std::move(dict))) {
  int d = 0;
  for (const auto& [k, v] : *dict_) d = std::max(d, v.depth_);
  depth_ = d + 1;
}

Value Value::Namespace(Dict attrs) {
  Value v(std::move(attrs));
  v.kind_ = Kind::kNamespace;
  return v;
}

const Value* Value::Find(std::string_view key) const {
  if (!dict_) return nullptr;
  for (const auto& [k, v] : *dict_) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Value::Set(std::string_view key, Value value) {
  for (auto& [k, v] : *dict_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  dict_->emplace_back(std::string(key), std::move(value));
}

bool Value::Contains(const Value& other, int depth_limit) const {
  if (depth_limit <= 0) return true;
  if ((list_ && list_ == other.list_) || (dict_ && dict_ == other.dict_)) return true;
  if (list_) {
    for (const Value& v : *list_) {
      if (v.Contains(other, depth_limit - 1)) return true;
    }
  }
  if (dict_) {
    for (const auto& [k, v] : *dict_) {
      if (v.Contains(other, depth_limit - 1)) return true;
    }
  }
  return false;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
    case Kind::kInt:
      return int_ != 0;
    case Kind::kFloat:
      return float_ != 0;
    case Kind::kString:
      return !str_.empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->empty();
    case Kind::kNamespace:
      return true;
  }
  return false;
}

std::string FormatFloat(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // [-]d[.ddd]e[+-]XX
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  const int exp = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(-exp - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return sign + out;
}

namespace {

constexpr int kMaxPrintDepth = 64;

void AppendStringRepr(const std::string& s, std::string* out) {
  const char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  *out += quote;
  for (unsigned char c : s) {
    if (c == quote || c == '\\') {
      *out += '\\';
      *out += static_cast<char>(c);
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c == '\r') {
      *out += "\\r";
    } else if (c == '\t') {
      *out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      *out += buf;
    } else {
      *out += static_cast<char>(c);
    }
  }
  *out += quote;
}

}  // namespace

void Value::AppendRepr(std::string* out, bool top_level_str, int depth) const {
  if (depth > kMaxPrintDepth) {
    *out += "...";
    return;
  }
  switch (kind_) {
    case Kind::kUndefined:
      break;
    case Kind::kNone:
      *out += "None";
      break;
    case Kind::kBool:
      *out += int_ ? "True" : "False";
      break;
    case Kind::kInt:
      *out += std::to_string(int_);
      break;
    case Kind::kFloat:
      *out += FormatFloat(float_);
      break;
    case Kind::kString:
      if (top_level_str) {
        *out += str_;
      } else {
        AppendStringRepr(str_, out);
      }
      break;
    case Kind::kList: {
      *out += '[';
      bool first = true;
      for (const Value& v : *list_) {
        if (!first) *out += ", ";
        first = false;
        v.AppendRepr(out, false, depth + 1);
      }
      *out += ']';
      break;
    }
    case Kind::kDict:
    case Kind::kNamespace: {
      *out += kind_ == Kind::kNamespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, v] : *dict_) {
        if (!first) *out += ", ";
        first = false;
        AppendStringRepr(k, out);
        *out += ": ";
        v.AppendRepr(out, false, depth + 1);
      }
      *out += kind_ == Kind::kNamespace ? "}>" : "}";
      break;
    }
  }
}

std::string Value::ToString() const {
  if (kind_ == Kind::kString) return str_;
  std::string out;
  AppendRepr(&out, true, 0);
  return out;
}

std::string Value::Repr() const {
  std::string out;
  AppendRepr(&out, false, 0);
  return out;
}

bool operator==(const Value& a, const Value& b) {
  const bool a_num = a.is_number() || a.is_bool();
  const bool b_num = b.is_number() || b.is_bool();
  if (a_num && b_num) {
    if (a.is_float() || b.is_float()) return a.AsDouble() == b.AsDouble();
    return a.int_ == b.int_;
  }
  if (a.kind_ != b.kind_) return false;
  switch (a.kind_) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.str_ == b.str_;
    case Value::Kind::kList:
      if (a.list_ == b.list_) return true;
      return *a.list_ == *b.list_;
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      if (a.dict_ == b.dict_) return true;
      if (a.kind_ == Value::Kind::kNamespace || a.dict_->size() != b.dict_->size()) return false;
      for (const auto& [k, v] : *a.dict_) {
        const Value* other = b.Find(k);
        if (other == nullptr || !(*other == v)) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

std::string_view Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
  }
  return "?";
}

}  // namespace tandem::jinja
