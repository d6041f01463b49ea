#include "jinja/template.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::jinja {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<std::string> Render(std::string_view source, const Value::Dict& context = {},
                                   const RenderOptions& options = {}) {
  auto tmpl = Template::Create(source);
  if (!tmpl.ok()) return tmpl.status();
  return (*tmpl)->Render(context, options);
}

std::string R(std::string_view source, const Value::Dict& context = {}) {
  auto out = Render(source, context);
  EXPECT_TRUE(out.ok()) << source << ": " << out.status();
  return out.ok() ? *out : "<error: " + std::string(out.status().message()) + ">";
}

Value Messages() {
  return Value(Value::List{Value(Value::Dict{{"role", "system"}, {"content", "S"}}),
                           Value(Value::Dict{{"role", "user"}, {"content", " hi "}}),
                           Value(Value::Dict{{"role", "assistant"}, {"content", "yo"}})});
}

TEST(ValueTest, PythonConversions) {
  EXPECT_EQ(Value(true).ToString(), "True");
  EXPECT_EQ(Value(false).ToString(), "False");
  EXPECT_EQ(Value::None().ToString(), "None");
  EXPECT_EQ(Value().ToString(), "");
  EXPECT_EQ(Value(1.0).ToString(), "1.0");
  EXPECT_EQ(Value(0.1).ToString(), "0.1");
  EXPECT_EQ(Value(1e16).ToString(), "1e+16");
  EXPECT_EQ(Value(1.5e-5).ToString(), "1.5e-05");
  EXPECT_EQ(Value(Value::List{Value("a'b"), Value(1), Value::None()}).ToString(), "[\"a'b\", 1, None]");
  EXPECT_EQ(Value(Value::Dict{{"k", "v"}}).ToString(), "{'k': 'v'}");
  EXPECT_FALSE(Value(Value::List{}).Truthy());
  EXPECT_FALSE(Value("").Truthy());
  EXPECT_FALSE(Value(0.0).Truthy());
  EXPECT_TRUE(Value(Value::Dict{{"a", 1}}).Truthy());
  EXPECT_TRUE(Value(1) == Value(1.0));
  EXPECT_TRUE(Value(true) == Value(1));
  EXPECT_FALSE(Value("1") == Value(1));
}

TEST(TemplateTest, OutputAndLiterals) {
  EXPECT_EQ(R("a{{ 1 }}b{{ 'x' }}{{ \"y\" }}{{ none }}{{ true }}"), "a1bxyNoneTrue");
  EXPECT_EQ(R("{{ [1, 'a', [2]] }}{{ {'k': 1} }}{{ (1, 2) }}"), "[1, 'a', [2]]{'k': 1}[1, 2]");
  EXPECT_EQ(R("{{ 'a\\nb\\t\\u00e9\\x41' }}"),
            "a\nb\t\xC3\xA9"
            "A");
  EXPECT_EQ(R("{{ undefined_name }}|"), "|");
  EXPECT_EQ(R("{# comment #}x"), "x");
  EXPECT_EQ(R("x\n"), "x");  // one trailing newline dropped, as Jinja does
}

TEST(TemplateTest, Operators) {
  EXPECT_EQ(R("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** "
              "10 }}"),
            "7 9 3 -4 2 3.5 1024");
  EXPECT_EQ(R("{{ 'a' + 'b' }} {{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }}"),
            "ab a1None abab [1, 2]");
  EXPECT_EQ(
      R("{{ 1 < 2 and 'x' or 'y' }} {{ 0 or 'z' }} {{ not 1 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }}"),
      "x z False True True");
  EXPECT_EQ(R("{{ 'y' if 1 > 2 else 'n' }}{{ 'only' if false }}"), "n");
  EXPECT_EQ(R("{{ 'k' in {'k': 1} }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ 'a' < 'b' }}"),
            "True True True True");
}

TEST(TemplateTest, AttributesSubscriptsSlices) {
  const Value::Dict ctx = {{"messages", Messages()}};
  EXPECT_EQ(R("{{ messages[0].role }} {{ messages[1]['content'] }} {{ messages[-1].content }}", ctx),
            "system  hi  yo");
  EXPECT_EQ(R("{% for m in messages[1:] %}{{ m.role }},{% endfor %}", ctx), "user,assistant,");
  EXPECT_EQ(R("{% for m in messages[::-1] %}{{ m.role[0] }}{% endfor %}", ctx), "aus");
  EXPECT_EQ(R("{{ 'h\xC3\xA9llo'[1] }} {{ 'hello'[1:3] }} {{ 'hello'[-2:] }} {{ [1, 2, 3][:-1] }}"),
            "\xC3\xA9 el lo [1, 2]");
  EXPECT_EQ(R("{{ messages[7] is defined }} {{ messages[0].missing is defined }}", ctx), "False False");
}

TEST(TemplateTest, IfForSetNamespace) {
  const Value::Dict ctx = {{"messages", Messages()}};
  EXPECT_EQ(R("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
  EXPECT_EQ(R("{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}"
              "{{ loop.length }};{% endfor %}",
              ctx),
            "01TrueFalse3;12FalseFalse3;23FalseTrue3;");
  EXPECT_EQ(R("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in [1, 2, 3, 4] if x % 2 == 0 %}{{ x }}{{ loop.length }}{% endfor %}"), "2242");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }} {% endfor %}"), "a=1 b=2 ");
  EXPECT_EQ(R("{% for x in [1, 2, 3] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% "
              "endif %}"
              "{{ x }}{% endfor %}"),
            "1");
  // set inside a loop does not leak out; a namespace carries state out.
  EXPECT_EQ(R("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(R("{% set ns = namespace(n=0, seen=false) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% "
              "endfor %}"
              "{{ ns.n }}{{ ns.seen }}"),
            "6False");
  EXPECT_EQ(R("{% set a, b = 1, 2 %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(R("{% set block %}in{{ 1 }}side{% endset %}[{{ block }}]"), "[in1side]");
}

TEST(TemplateTest, Macros) {
  EXPECT_EQ(R("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('a') }} {{ greet('b', punct='?') }}"),
            "Hi a! Hi b?");
}

TEST(TemplateTest, TestsAndFilters) {
  const Value::Dict ctx = {{"messages", Messages()}};
  EXPECT_EQ(
      R("{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ 1 is number }}{{ x is not defined }}"
        "{{ 3 is odd }}{{ 4 is divisibleby 2 }}{{ true is true }}"),
      "TrueTrueTrueTrueTrueTrueTrueTrue");
  EXPECT_EQ(
      R("[{{ '  a b \\n' | trim }}] {{ messages | length }} {{ 'abc' | upper }} {{ 'ABC' | lower }}", ctx),
      "[a b] 3 ABC abc");
  EXPECT_EQ(
      R("{{ x | default('d') }} {{ '' | default('e', true) }} {{ [1, 2] | last }} {{ [1, 2] | join('-') }}"),
      "d e 2 1-2");
  EXPECT_EQ(
      R("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}", ctx),
      "[' hi ']");
  EXPECT_EQ(
      R("{{ messages | rejectattr('role', 'in', ['system', 'user']) | map(attribute='role') | join }}", ctx),
      "assistant");
  EXPECT_EQ(R("{{ {'a': [1, 'x\"y'], 'b': none, 'c': true, 'd': 1.5} | tojson }}"),
            "{\"a\": [1, \"x\\\"y\"], \"b\": null, \"c\": true, \"d\": 1.5}");
  EXPECT_EQ(R("{{ {'a': [1]} | tojson(indent=2) }}"), "{\n  \"a\": [\n    1\n  ]\n}");
  EXPECT_EQ(R("{{ 'aXbX' | replace('X', '-') }} {{ 1 | string }} {{ {'a': 1} | items | list }}"),
            "a-b- 1 [['a', 1]]");
}

TEST(TemplateTest, StringMethods) {
  EXPECT_EQ(R("[{{ '  a  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '\\n\\n a'.lstrip('\\n') }}][{{ 'a  "
              "'.rstrip() }}]"),
            "[a][a][ a][a]");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}"), "TrueTrue");
  EXPECT_EQ(
      R("{{ 'a</think>b</think>c'.split('</think>') }} {{ ' a  b '.split() }} {{ 'a,b,c'.split(',', 1) }}"),
      "['a', 'b', 'c'] ['a', 'b'] ['a', 'b,c']");
  EXPECT_EQ(
      R("{{ 'hello wORLD'.title() }} {{ 'aB'.upper() }}{{ 'aB'.lower() }} {{ 'aaa'.replace('a', 'b', 2) }}"),
      "Hello World ABab bba");
  EXPECT_EQ(R("{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 2) }}{{ {'a': 1}.get('c') }}"), "12None");
}

TEST(TemplateTest, WhitespaceControl) {
  EXPECT_EQ(R("a  {{- 'b' -}}  c"), "abc");
  EXPECT_EQ(R("a\n  {%- if true -%}\n  b\n{%- endif %}"), "ab");
  // trim_blocks and lstrip_blocks as apply_chat_template sets them.
  EXPECT_EQ(R("{% if true %}\n    x\n    {% endif %}\ny"), "    x\ny");
  EXPECT_EQ(R("  {# c #}\nz"), "z");
  auto plain = Template::Create("{% if true %}\n  x\n  {% endif %}",
                                ParseOptions{.trim_blocks = false, .lstrip_blocks = false});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*(*plain)->Render({}), "\n  x\n  ");
}

TEST(TemplateTest, RaiseException) {
  EXPECT_THAT(Render("ok\n{{ raise_exception('bad roles') }}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 2, column 4: raise_exception: bad roles")));
}

TEST(TemplateTest, ParseErrorsNameLineAndColumn) {
  EXPECT_THAT(Render("a\n{% frobnicate %}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("line 2, column 4: unknown or unsupported tag 'frobnicate'")));
  EXPECT_THAT(Render("{% if x %}\nno end"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                     HasSubstr("expected 'elif' or 'else' or 'endif'")));
  EXPECT_THAT(Render("{{ 1 +\n }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2, column 2")));
  EXPECT_THAT(Render("{{ 'abc }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unterminated string")));
  EXPECT_THAT(Render("{{ a @ b }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected character '@'")));
  EXPECT_THAT(Render("{# open"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1, column 1")));
}

TEST(TemplateTest, RenderErrorsNameLine) {
  EXPECT_THAT(Render("\n\n  {{ 1 + 'a' }}"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                      HasSubstr("line 3, column 8: unsupported operand")));
  EXPECT_THAT(Render("{{ x | nosuchfilter }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown filter 'nosuchfilter'")));
  EXPECT_THAT(Render("{{ x is nosuchtest }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown test")));
  EXPECT_THAT(Render("{{ nope() }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown function 'nope'")));
  EXPECT_THAT(Render("{{ 1 // 0 }}"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("by zero")));
  EXPECT_THAT(Render("{{ 9223372036854775807 + 1 }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("integer overflow")));
  EXPECT_THAT(Render("{% set ns = namespace() %}{% set ns.me = ns %}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nest the namespace in itself")));
}

TEST(TemplateTest, Limits) {
  EXPECT_THAT(Render("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", {},
                     RenderOptions{.max_steps = 100000}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("evaluation steps")));
  EXPECT_THAT(
      Render(
          "{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
          {}, RenderOptions{.max_output_bytes = 1 << 20}),
      StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Render("{{ 'x' * 100000000000 }}"), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(
      Render("{% for i in range(200) %}xxxxxxxxxx{% endfor %}", {}, RenderOptions{.max_output_bytes = 1000}),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("output exceeds 1000 bytes")));
  EXPECT_THAT(Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("macro calls nested deeper")));
  EXPECT_THAT(Render("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nesting deeper")));
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_THAT(Render(chain + " }}"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nested deeper")));
}

}  // namespace
}  // namespace tandem::jinja
