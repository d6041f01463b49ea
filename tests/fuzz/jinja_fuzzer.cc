// libFuzzer target for the Jinja interpreter (jinja/): any byte string is a
// template source that must parse or give an error Status; one that parses is
// rendered against a small chat context under tight RenderOptions limits, and
// must render or give an error Status, never crash, hang, read out of bounds
// (ASan/UBSan watch) or exceed the output limit.
//
// Build (clang, see tests/fuzz/CMakeLists.txt) and run with real templates as seeds:
//   ninja -C build-fuzz jinja_fuzzer
//   build-fuzz/fuzz/jinja_fuzzer CORPUS SEEDS -max_len=4096 -timeout=10 -max_total_time=300
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "jinja/template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tandem::jinja::Value;
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  auto tmpl = tandem::jinja::Template::Create(source);
  if (!tmpl.ok()) return 0;
  static const Value::Dict* context = new Value::Dict{
      {"messages", Value(Value::List{
                       Value(Value::Dict{{"role", "system"}, {"content", " sys\n"}}),
                       Value(Value::Dict{{"role", "user"}, {"content", "h\xC3\xA9llo </think> x"}}),
                       Value(Value::Dict{{"role", "assistant"}, {"content", ""}}),
                   })},
      {"bos_token", Value("<s>")},
      {"eos_token", Value("</s>")},
      {"add_generation_prompt", Value(true)},
  };
  tandem::jinja::RenderOptions options;
  options.max_output_bytes = 1 << 16;
  options.max_steps = 100'000;
  auto out = (*tmpl)->Render(*context, options);
  if (out.ok() && out->size() > options.max_output_bytes) __builtin_trap();
  return 0;
}
