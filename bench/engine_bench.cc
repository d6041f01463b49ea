// Engine throughput: decode tokens/s at batch 1..64, and TTFT with a 90%
// cached prefix against none, on the CPU backend.
//
//   build/bin/engine_bench --models synthetic:tiny,../shared/models/stories260K.gguf
//
// Decode: `batch` sequences with 32-token prompts are prefilled, then the
// decode steps that follow are timed (every sequence decodes every step).
// TTFT: the time from Add to the first token of a 480-token prompt on a fresh
// engine, against the same prompt after a request sharing its first 90%
// (432 tokens) has completed and left its blocks in the prefix cache.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "engine/engine.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using tandem::engine::Engine;
using tandem::engine::EngineOptions;
using tandem::engine::EngineRequest;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<int32_t> Prompt(int32_t len, int32_t vocab, int32_t salt) {
  std::vector<int32_t> p(len);
  for (int32_t i = 0; i < len; ++i) p[i] = i == 0 ? 1 : 3 + (i * 7919 + salt * 104729) % (vocab - 3);
  return p;
}

bool Check(const absl::Status& s) {
  if (!s.ok()) std::cerr << s << "\n";
  return s.ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Engine decode throughput by batch size and TTFT with a cached prefix"};
  std::string models = "synthetic:tiny," TANDEM_DEFAULT_SHARED "/models/stories260K.gguf";
  int threads = 0;
  int decode_steps = 64;
  int repeats = 3;
  std::string batches = "1,2,4,8,16,32,64";
  int ttft_prompt = 480;
  std::string kv_dtype = "f32";
  app.add_option("--models", models, "Comma-separated model specs")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = all)")->capture_default_str();
  app.add_option("--decode-steps", decode_steps, "Timed decode steps per batch size")->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per point; the best is reported")->capture_default_str();
  app.add_option("--batches", batches, "Comma-separated batch sizes")->capture_default_str();
  app.add_option("--ttft-prompt-tokens", ttft_prompt, "Prompt length for the TTFT runs (90% shared)")
      ->capture_default_str();
  app.add_option("--kv-dtype", kv_dtype,
                 "KV cache element type: f32 (the engine's CPU default), f16 (llama.cpp's) or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  CLI11_PARSE(app, argc, argv);
  const tandem::DType kv_type = kv_dtype == "f16"    ? tandem::DType::kF16
                                : kv_dtype == "bf16" ? tandem::DType::kBF16
                                                     : tandem::DType::kF32;

  nlohmann::json out;
  out["results"] = nlohmann::json::array();
  for (const std::string& spec : std::vector<std::string>(absl::StrSplit(models, ',', absl::SkipEmpty()))) {
    auto m = tandem::model::LoadModel(spec);
    if (!m.ok()) {
      std::cerr << "skipping " << spec << ": " << m.status() << "\n";
      continue;
    }
    auto backend = tandem::kernels::CreateCpuBackend({.num_threads = threads});
    auto llama = tandem::model::LlamaModel::Create((*m)->config, (*m)->weights, backend.get());
    if (!llama.ok()) return 1;
    const int32_t vocab = (*m)->config.vocab_size;
    nlohmann::json result = {{"model", spec}, {"kv_dtype", kv_dtype}};
    nlohmann::json decode = nlohmann::json::array();
    double batch1_tps = 0;
    for (const std::string& b : std::vector<std::string>(absl::StrSplit(batches, ',', absl::SkipEmpty()))) {
      const int batch = std::stoi(b);
      double best = 0;
      // One engine per batch size; round 0 is an untimed warm-up (as
      // llama-bench's): the first pass pays first-touch page faults of the
      // weights, the activations and the KV pool, which the timed rounds
      // then reuse.
      auto engine = *Engine::Create({.kv_dtype = kv_type, .max_running = 64, .max_step_tokens = 4096},
                                    llama->get(), backend.get(), (*m)->tokenizer.get());
      for (int rep = 0; rep <= repeats; ++rep) {
        for (int i = 0; i < batch; ++i) {
          if (!Check(engine->Add({.id = rep * 1000 + i,
                                  .prompt_tokens = Prompt(32, vocab, i),
                                  .max_tokens = decode_steps + 2,
                                  .stop_at_eos = false}))) {
            return 1;
          }
        }
        if (!Check(engine->Step().status())) return 1;  // every prompt in one step
        const auto t0 = Clock::now();
        for (int s = 0; s < decode_steps; ++s) {
          if (!Check(engine->Step().status())) return 1;
        }
        if (rep > 0) best = std::max(best, batch * decode_steps / Seconds(Clock::now() - t0));
        while (engine->HasWork()) {  // finish the round: its blocks return to the pool
          if (!Check(engine->Step().status())) return 1;
        }
      }
      if (batch == 1) batch1_tps = best;
      decode.push_back({{"batch", batch},
                        {"decode_tokens_per_s", best},
                        {"speedup_vs_batch1", batch1_tps > 0 ? best / batch1_tps : 0.0}});
    }
    result["decode"] = decode;

    // TTFT, best of 3, without and with a 90% cached prefix.
    const int32_t len = ttft_prompt, shared = ttft_prompt * 9 / 10;
    auto ttft = [&](bool warm) -> double {
      double best = 1e30;
      for (int rep = 0; rep < repeats; ++rep) {
        auto engine =
            *Engine::Create({.kv_dtype = kv_type}, llama->get(), backend.get(), (*m)->tokenizer.get());
        std::vector<int32_t> target = Prompt(len, vocab, 1);
        if (warm) {
          std::vector<int32_t> earlier(target.begin(), target.begin() + shared);
          std::vector<int32_t> tail = Prompt(len - shared + 1, vocab, 2);
          earlier.insert(earlier.end(), tail.begin() + 1, tail.end());
          (void)engine->Add({.id = 100, .prompt_tokens = earlier, .max_tokens = 1});
          while (engine->HasWork()) (void)engine->Step();
        }
        const auto t0 = Clock::now();
        (void)engine->Add({.id = 1, .prompt_tokens = target, .max_tokens = 1});
        while (engine->HasWork()) (void)engine->Step();
        best = std::min(best, Seconds(Clock::now() - t0));
      }
      return best;
    };
    const double cold = ttft(false), warm = ttft(true);
    result["ttft"] = {{"prompt_tokens", len},
                      {"cached_prefix_tokens", shared},
                      {"ttft_no_cache_s", cold},
                      {"ttft_90pct_cached_s", warm},
                      {"speedup", cold / warm}};
    out["results"].push_back(result);
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
