#include "cli/pull_command.h"

#include <iostream>

#include "hub/hub.h"

namespace tandem::cli {

void RegisterPull(CLI::App* cmd, PullFlags* f) {
  cmd->add_option("model", f->spec,
                  "hf://ORG/REPO[@REVISION] (or hf://ORG/REPO/FILE[@REVISION] for one file, e.g. a .gguf)")
      ->required();
  cmd->add_option("--cache-dir", f->cache_dir,
                  "Cache root (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)");
  cmd->add_option("--include", f->include,
                  "Fetch the repo files matching this glob instead of the default set (config, tokenizer, "
                  "safetensors weights or the one .gguf); repeatable")
      ->take_all();
  cmd->footer(
      "Environment: HF_TOKEN (gated/private repos), HF_ENDPOINT (default https://huggingface.co), "
      "HF_HUB_OFFLINE=1 (cache only). Prints the snapshot directory; `--model hf://...` works in every "
      "command.");
  cmd->callback([f] {
    const int code = RunPull(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

int RunPull(const PullFlags& f) {
  auto spec = hub::ParseHfSpec(f.spec);
  if (!spec.ok()) {
    std::cerr << "tandem pull: " << spec.status().message() << "\n";
    return 1;
  }
  hub::PullOptions options;
  options.cache_dir = f.cache_dir;
  options.include = f.include;
  auto result = hub::Pull(*spec, options);
  if (!result.ok()) {
    std::cerr << "tandem pull: " << result.status().message() << "\n";
    return 1;
  }
  std::cout << result->snapshot_dir << "\n";
  return 0;
}

}  // namespace tandem::cli
