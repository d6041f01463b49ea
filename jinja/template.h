// A Jinja2 template, parsed once and rendered many times: the subset of
// Jinja that chat templates use (see jinja/README.md for the exact list),
// with Python's semantics for values, and whitespace handling as Hugging
// Face's apply_chat_template configures Jinja (trim_blocks, lstrip_blocks).
//
//   TANDEM_ASSIGN_OR_RETURN(auto tmpl, jinja::Template::Create(
//       "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"));
//   jinja::Value::Dict context{{"messages", jinja::Value::List{...}}};
//   TANDEM_ASSIGN_OR_RETURN(std::string text, tmpl->Render(context));
//
// Errors are Status values, never exceptions: a template that does not parse
// gives InvalidArgument naming the line and column; a render error (a type
// error, an unknown filter, raise_exception("...") in the template) gives
// InvalidArgument naming the line and column of the expression; a render that
// passes a limit of RenderOptions gives ResourceExhausted.
//
// Thread safety: a Template is immutable after Create; Render may run on many
// threads at once. Values in the context are only read, except namespaces,
// which `{% set ns.attr = ... %}` writes (so do not share a namespace value
// between concurrent renders).
#ifndef TANDEM_JINJA_TEMPLATE_H_
#define TANDEM_JINJA_TEMPLATE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "jinja/value.h"

namespace tandem::jinja {

struct ParseOptions {
  // Remove the first newline after a block tag ({% %} or {# #}).
  // Default: true (as apply_chat_template).
  bool trim_blocks = true;
  // Strip spaces and tabs before a block tag that starts a line.
  // Default: true (as apply_chat_template).
  bool lstrip_blocks = true;
};

// Bounds on one Render, so a hostile template cannot hang or exhaust memory.
struct RenderOptions {
  // Most bytes of output, and the most bytes (or elements) of any one string
  // or list the template builds. Default: 8 MiB.
  size_t max_output_bytes = size_t{8} << 20;
  // Most evaluation steps (expressions evaluated, statements executed, loop
  // iterations, elements a filter walks). Default: 20 million.
  int64_t max_steps = 20'000'000;
  // Deepest nesting of macro calls. Default: 32.
  int max_call_depth = 32;
};

class Template {
 public:
  static absl::StatusOr<std::unique_ptr<Template>> Create(std::string_view source,
                                                          const ParseOptions& options = {});
  ~Template();
  Template(const Template&) = delete;
  Template& operator=(const Template&) = delete;

  // Renders with `context` as the template's global variables. The functions
  // raise_exception(msg), namespace(...), range(...) and strftime_now(fmt)
  // are always available.
  absl::StatusOr<std::string> Render(const Value::Dict& context, const RenderOptions& options = {}) const;

 private:
  struct Program;
  explicit Template(std::unique_ptr<Program> program);
  std::unique_ptr<Program> program_;
};

}  // namespace tandem::jinja

#endif  // TANDEM_JINJA_TEMPLATE_H_
