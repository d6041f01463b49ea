#include "cli/generate_command.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "engine/generate.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"

namespace tandem::cli {

void RegisterGenerate(CLI::App* cmd, GenerateFlags* f) {
  cmd->add_option("--model", f->model,
                  "Path to a GGUF file, or synthetic:NAME (tiny, llama-1b, llama-8b)")
      ->capture_default_str();
  cmd->add_option("--prompt", f->prompt, "Prompt text")->capture_default_str();
  cmd->add_option("--max-tokens", f->max_tokens, "New tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", f->temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", f->top_k, "Sample from the K most likely tokens; 0 is off")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", f->top_p, "Nucleus sampling threshold in (0, 1]; 1 is off")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", f->seed, "Seed for reproducible sampling (random when unset)");
  cmd->add_flag("--json", f->json,
                "Print one JSON line: prompt_token_ids, generated_token_ids, text, finish_reason");
  cmd->add_option("--threads", f->threads, "CPU threads; 0 = one per core")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([f] {
    const int code = RunGenerate(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

int RunGenerate(const GenerateFlags& f) {
  auto loaded = model::LoadModel(f.model);
  if (!loaded.ok()) {
    std::cerr << "tandem generate: cannot load model '" << f.model << "': " << loaded.status().message() << "\n";
    return 1;
  }
  model::LoadedModel& m = **loaded;
  if (m.synthetic) {
    std::cerr << "note: " << f.model
              << " has synthetic random weights, so its text is gibberish. For a real model pass "
                 "--model PATH.gguf (e.g. --model ../shared/models/stories260K.gguf).\n";
  }
  std::unique_ptr<kernels::Backend> backend =
      kernels::CreateCpuBackend({.num_threads = f.threads});
  auto llama = model::LlamaModel::Create(m.config, m.weights, backend.get());
  if (!llama.ok()) {
    std::cerr << "tandem generate: " << llama.status().message() << "\n";
    return 1;
  }
  engine::GenerateRequest request;
  request.prompt = f.prompt;
  request.max_tokens = f.max_tokens;
  request.sampling.temperature = f.temperature;
  request.sampling.top_k = f.top_k;
  request.sampling.top_p = f.top_p;
  request.sampling.seed = f.seed;
  auto result = engine::GenerateOne(**llama, *backend, *m.tokenizer, request);
  if (!result.ok()) {
    std::cerr << "tandem generate: " << result.status().message() << "\n";
    return 1;
  }
  if (f.json) {
    nlohmann::ordered_json j;  // keys in the documented order
    j["prompt_token_ids"] = result->prompt_token_ids;
    j["generated_token_ids"] = result->generated_token_ids;
    j["text"] = result->text;
    j["finish_reason"] = engine::FinishReasonName(result->finish_reason);
    // A byte-fallback token can end mid-character: replace, never throw.
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    std::cout << f.prompt << result->text << "\n";
  }
  return 0;
}

}  // namespace tandem::cli
