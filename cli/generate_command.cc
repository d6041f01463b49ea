#include "cli/generate_command.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <type_traits>

#include "absl/strings/str_format.h"
#include "cli/engine_flags.h"
#include "cli/remote_generate.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"

namespace tandem::cli {

void RegisterGenerate(CLI::App* cmd, GenerateFlags* f) {
  cmd->add_option("--model", f->model, "Path to a GGUF file, or synthetic:NAME (tiny, llama-1b, llama-8b)")
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
  cmd->add_option("--prompts-file", f->prompts_file,
                  "JSONL file of prompts ({\"prompt\": ..., optional max_tokens, temperature, "
                  "top_k, top_p, seed}) run concurrently; prints one JSON line per prompt")
      ->check(CLI::ExistingFile);
  AddEngineFlags(cmd, &f->block_size, &f->kv_cache_mb, &f->max_running, &f->max_step_tokens);
  AddDeviceFlags(cmd, &f->device);
  AddKvTierFlags(cmd, &f->kv_tiers);
  cmd->add_option("--remote", f->remote,
                  "Send the request to a cluster's router at HOST:PORT instead of running the model "
                  "here (local-only flags are ignored; --prompts-file is not supported)");
  cmd->add_option("--timeout-s", f->timeout_s, "With --remote: give up after this many seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tls-ca", f->tls_ca,
                  "With --remote: connect with TLS, verifying the router against this PEM CA");
  cmd->add_option("--tls-cert", f->tls_cert,
                  "With --remote: PEM client certificate for a router that requires mutual TLS");
  cmd->add_option("--tls-key", f->tls_key, "With --remote: PEM private key of --tls-cert");
  cmd->callback([cmd, f] {
    f->model_given = cmd->count("--model") > 0;
    const int code = RunGenerate(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

namespace {

// Reads the prompts file into engine requests; per-line fields override the
// command-line sampling flags. Errors name the line.
absl::StatusOr<std::vector<engine::EngineRequest>> ReadPromptsFile(const GenerateFlags& f,
                                                                   const model::Tokenizer& tok) {
  std::ifstream in(f.prompts_file);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open %s", f.prompts_file));
  std::vector<engine::EngineRequest> requests;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto fail = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrFormat("%s:%d: %s", f.prompts_file, line_no, why));
    };
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return fail("not a JSON object");
    if (!j.contains("prompt") || !j["prompt"].is_string()) return fail("\"prompt\" must be a string");
    engine::EngineRequest r;
    r.id = static_cast<int64_t>(requests.size());
    r.prompt_tokens = tok.Encode(j["prompt"].get<std::string>(), /*add_bos=*/true);
    r.max_tokens = f.max_tokens;
    r.sampling = {.temperature = f.temperature, .top_k = f.top_k, .top_p = f.top_p, .seed = f.seed};
    auto number = [&](const char* key, auto* dst) -> absl::Status {
      if (!j.contains(key)) return absl::OkStatus();
      if (!j[key].is_number()) return fail(absl::StrFormat("\"%s\" must be a number", key));
      *dst = j[key].get<std::remove_pointer_t<decltype(dst)>>();
      return absl::OkStatus();
    };
    uint64_t seed = 0;
    TANDEM_RETURN_IF_ERROR(number("max_tokens", &r.max_tokens));
    TANDEM_RETURN_IF_ERROR(number("temperature", &r.sampling.temperature));
    TANDEM_RETURN_IF_ERROR(number("top_k", &r.sampling.top_k));
    TANDEM_RETURN_IF_ERROR(number("top_p", &r.sampling.top_p));
    if (j.contains("seed")) {
      TANDEM_RETURN_IF_ERROR(number("seed", &seed));
      r.sampling.seed = seed;
    }
    requests.push_back(std::move(r));
  }
  if (requests.empty())
    return absl::InvalidArgumentError(absl::StrFormat("%s holds no prompts", f.prompts_file));
  return requests;
}

int RunPromptsFile(const GenerateFlags& f, model::LoadedModel& m, kernels::Backend& backend,
                   model::LlamaModel& llama) {
  auto requests = ReadPromptsFile(f, *m.tokenizer);
  if (!requests.ok()) {
    std::cerr << "tandem generate: " << requests.status().message() << "\n";
    return 1;
  }
  engine::EngineOptions options;
  options.block_size = f.block_size;
  options.kv_cache_bytes = static_cast<size_t>(f.kv_cache_mb) << 20;
  options.max_running = f.max_running;
  options.max_step_tokens = f.max_step_tokens > 0 ? f.max_step_tokens : engine::DefaultMaxStepTokens(backend);
  auto kv_dtype = kernels::ResolveKvDType(f.device.kv_dtype, backend);
  if (!kv_dtype.ok()) {
    std::cerr << "tandem generate: " << kv_dtype.status().message() << "\n";
    return 1;
  }
  options.kv_dtype = *kv_dtype;
  auto tiers = MakeKvTiers(f.kv_tiers, llama.config(), f.block_size, *kv_dtype);
  if (!tiers.ok()) {
    std::cerr << "tandem generate: KV tiers: " << tiers.status().message() << "\n";
    return 1;
  }
  options.tiers = tiers->get();  // declared before the engine, so it outlives it
  auto eng = engine::Engine::Create(options, &llama, &backend, m.tokenizer.get());
  if (!eng.ok()) {
    std::cerr << "tandem generate: " << eng.status().message() << "\n";
    return 1;
  }
  struct Output {
    std::vector<int32_t> prompt, generated;
    engine::SequenceEnd end = engine::SequenceEnd::kNone;
    int32_t cached_tokens = 0;
  };
  std::vector<Output> outputs(requests->size());
  for (engine::EngineRequest& r : *requests) {
    outputs[r.id].prompt = r.prompt_tokens;
    const int64_t id = r.id;
    if (absl::Status s = (*eng)->Add(std::move(r)); !s.ok()) {
      std::cerr << "tandem generate: " << f.prompts_file << ": prompt " << id + 1 << ": " << s.message()
                << "\n";
      return 1;
    }
  }
  while ((*eng)->HasWork()) {
    auto updates = (*eng)->Step();
    if (!updates.ok()) {
      std::cerr << "tandem generate: " << updates.status().message() << "\n";
      return 1;
    }
    for (const engine::SequenceUpdate& u : *updates) {
      Output& o = outputs[u.id];
      o.generated.insert(o.generated.end(), u.new_tokens.begin(), u.new_tokens.end());
      o.cached_tokens = u.cached_tokens;
      if (u.end != engine::SequenceEnd::kNone) o.end = u.end;
    }
  }
  for (const Output& o : outputs) {
    nlohmann::ordered_json j;
    j["prompt_token_ids"] = o.prompt;
    j["generated_token_ids"] = o.generated;
    j["text"] = m.tokenizer->Decode(o.generated);
    j["finish_reason"] = engine::SequenceEndName(o.end);
    j["cached_tokens"] = o.cached_tokens;
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  }
  return 0;
}

}  // namespace

int RunGenerate(const GenerateFlags& f) {
  if (!f.remote.empty()) return RunRemoteGenerate(f);
  auto loaded = model::LoadModel(f.model);
  if (!loaded.ok()) {
    std::cerr << "tandem generate: cannot load model '" << f.model << "': " << loaded.status().message()
              << "\n";
    return 1;
  }
  model::LoadedModel& m = **loaded;
  if (m.synthetic) {
    std::cerr << "note: " << f.model
              << " has synthetic random weights, so its text is gibberish. For a real model pass "
                 "--model PATH.gguf (e.g. --model ../shared/models/stories260K.gguf).\n";
  }
  auto created = MakeBackend(f.device, f.threads);
  if (!created.ok()) {
    std::cerr << "tandem generate: " << created.status().message() << "\n";
    return 1;
  }
  std::unique_ptr<kernels::Backend> backend = std::move(*created);
  auto llama = model::LlamaModel::Create(m.config, m.weights, backend.get());
  if (!llama.ok()) {
    std::cerr << "tandem generate: " << llama.status().message() << "\n";
    return 1;
  }
  if (!f.prompts_file.empty()) return RunPromptsFile(f, m, *backend, **llama);
  engine::GenerateRequest request;
  request.prompt = f.prompt;
  request.max_tokens = f.max_tokens;
  request.sampling.temperature = f.temperature;
  request.sampling.top_k = f.top_k;
  request.sampling.top_p = f.top_p;
  request.sampling.seed = f.seed;
  auto kv_dtype = kernels::ResolveKvDType(f.device.kv_dtype, *backend);
  if (!kv_dtype.ok()) {
    std::cerr << "tandem generate: " << kv_dtype.status().message() << "\n";
    return 1;
  }
  request.kv_dtype = *kv_dtype;
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
