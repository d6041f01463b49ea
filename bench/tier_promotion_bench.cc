// Decode steps of running sequences while other requests' prefixes are
// promoted from the KV tiers (DRAM, SSD) into the pool: tier copies inside
// the admitting Step (EngineOptions::async_tier_loads = false) against the
// loader thread (true), in the same run, on the CPU backend.
//
//   build-async/bin/tier_promotion_bench --model ../shared/models/stories260K.gguf \
//       --ssd-dir /tmp/tier_promotion_bench
//
// Setup per tier: `promotions` distinct prompts of prefix_tokens + 1 tokens
// are computed once (an engine without tiers, blocks held) and their full
// blocks Put into a TieredStore: a large DRAM tier ("dram"), or a DRAM tier of
// two blocks in front of SSD so that every Get reads SSD ("ssd"; RocksDB
// through the page cache, CRC32C verified). Run: a fresh engine with that
// store and a pool that never evicts; `background` sequences (32-token
// prompts) are prefilled, then `steps` Steps are timed one by one while a
// promotion request (one of the stored prompts, max_tokens 1) is added every
// `interval` steps. Reported per mode: background decode tokens/s over the
// window, Step latency p50/p99/max, the promoted requests' time to first
// token, and the engine's load counters. Modes alternate within a repeat; the
// best repeat (highest tokens/s) is kept. Ratios are async / sync.
//
// --copy-delay-us N models a slower tier (a bigger model's blocks read from
// NVMe or a remote store): the engine's tier-load hook sleeps N us before each
// block's copy, on the engine thread when synchronous, on the loader thread
// when asynchronous. The copy itself is still the real TieredStore::Get.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/block_hash.h"
#include "engine/engine.h"
#include "kernels/backend.h"
#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using tandem::engine::Engine;
using tandem::engine::EngineOptions;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::vector<int32_t> Prompt(int32_t len, int32_t vocab, int32_t salt) {
  std::vector<int32_t> p(len);
  for (int32_t i = 0; i < len; ++i) p[i] = i == 0 ? 1 : 3 + (i * 7919 + salt * 104729) % (vocab - 3);
  return p;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

bool Check(const absl::Status& s) {
  if (!s.ok()) std::cerr << s << "\n";
  return s.ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode steps while prefixes are promoted from the KV tiers: sync vs async copies"};
  std::string model_spec = TANDEM_DEFAULT_SHARED "/models/stories260K.gguf";
  std::string ssd_dir = "/tmp/tier_promotion_bench";
  std::string tiers = "dram,ssd";
  int threads = 1;
  int block = 16;
  int prefix_tokens = 480;
  int background = 8;
  int steps = 240;
  int interval = 4;
  int repeats = 3;
  int delay_us = 0;
  app.add_option("--model", model_spec, "Model spec")->capture_default_str();
  app.add_option("--ssd-dir", ssd_dir, "Scratch directory for the SSD tier (removed first)")
      ->capture_default_str();
  app.add_option("--tiers", tiers, "Comma-separated: dram, ssd")->capture_default_str();
  app.add_option("--threads", threads, "CPU backend threads")->capture_default_str();
  app.add_option("--block-size", block, "Tokens per KV block")->capture_default_str();
  app.add_option("--prefix-tokens", prefix_tokens, "Promoted prefix per request (multiple of the block)")
      ->capture_default_str();
  app.add_option("--background", background, "Running (decoding) sequences")->capture_default_str();
  app.add_option("--steps", steps, "Timed Steps per run")->capture_default_str();
  app.add_option("--interval", interval, "A promotion request every this many Steps")->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per mode; the best is reported")->capture_default_str();
  app.add_option("--copy-delay-us", delay_us,
                 "Simulated slower tier: sleep this long before each block's copy, on the thread doing it "
                 "(the engine thread when synchronous)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (prefix_tokens % block != 0 || interval < 1 || steps < 1) {
    std::cerr << "--prefix-tokens must be a multiple of --block-size; --interval, --steps >= 1\n";
    return 2;
  }

  auto m = tandem::model::LoadModel(model_spec);
  if (!m.ok()) {
    std::cerr << m.status() << "\n";
    return 1;
  }
  const tandem::model::ModelConfig& config = (*m)->config;
  auto backend = tandem::kernels::CreateCpuBackend({.num_threads = threads});
  auto llama = tandem::model::LlamaModel::Create(config, (*m)->weights, backend.get());
  if (!llama.ok()) return 1;
  const int32_t vocab = config.vocab_size;
  const tandem::kernels::KvLayout layout = config.KvLayoutFor(block);
  const int promotions = (steps + interval - 1) / interval;
  const int32_t blocks_per_prefix = prefix_tokens / block;
  if (prefix_tokens + 1 > config.context_length || 32 + steps + 2 > config.context_length) {
    std::cerr << "prompts exceed the model's context length " << config.context_length << "\n";
    return 2;
  }

  // The promoted prompts and their KV, computed once.
  std::vector<std::vector<int32_t>> prompts;
  std::map<tandem::BlockHash, std::pair<std::vector<int32_t>, std::vector<uint8_t>>> blocks;
  {
    auto eng = Engine::Create({.block_size = block, .num_blocks = (blocks_per_prefix + 1) * 4}, llama->get(),
                              backend.get(), (*m)->tokenizer.get());
    if (!eng.ok()) return Check(eng.status()) ? 0 : 1;
    for (int p = 0; p < promotions; ++p) {
      prompts.push_back(Prompt(prefix_tokens + 1, vocab, 100 + p));  // salts apart from the background's
      if (!Check((*eng)->Add({.id = p,
                              .prompt_tokens = prompts.back(),
                              .max_tokens = 1,
                              .stop_at_eos = false,
                              .hold_blocks_on_finish = true}))) {
        return 1;
      }
      std::vector<int32_t> held;
      while ((*eng)->HasWork()) {
        auto updates = (*eng)->Step();
        if (!Check(updates.status())) return 1;
        for (const auto& u : *updates) {
          if (!u.held_blocks.empty()) held = u.held_blocks;
        }
      }
      const std::vector<tandem::BlockHash> hashes =
          tandem::HashFullBlocks(config.model_id, prompts.back(), block);
      for (int32_t b = 0; b < blocks_per_prefix; ++b) {
        const auto* bytes = reinterpret_cast<const uint8_t*>((*eng)->kv_view().Block(held[b]));
        blocks[hashes[b]] = {std::vector<int32_t>(prompts.back().begin() + b * block,
                                                  prompts.back().begin() + (b + 1) * block),
                             std::vector<uint8_t>(bytes, bytes + layout.BlockBytes())};
      }
      if (!Check((*eng)->ReleaseReserved(p))) return 1;
    }
  }

  nlohmann::json out;
  out["model"] = model_spec;
  out["config"] = {{"threads", threads},
                   {"block_size", block},
                   {"prefix_tokens", prefix_tokens},
                   {"prefix_blocks", blocks_per_prefix},
                   {"block_bytes", layout.BlockBytes()},
                   {"background", background},
                   {"steps", steps},
                   {"interval", interval},
                   {"promotions", promotions},
                   {"repeats", repeats},
                   {"copy_delay_us", delay_us}};
  out["results"] = nlohmann::json::array();
  for (const std::string tier : {"dram", "ssd"}) {
    if (tiers.find(tier) == std::string::npos) continue;
    const bool ssd = tier == "ssd";
    std::error_code ec;
    std::filesystem::remove_all(ssd_dir, ec);
    tandem::kvstore::TieredStore::Options so;
    so.model_id = config.model_id;
    so.block_tokens = block;
    so.payload_bytes = layout.BlockBytes();
    const size_t slot = tandem::kvstore::EncodedBlockBytes(block, layout.BlockBytes());
    so.dram_bytes = ssd ? 2 * slot : (blocks.size() + 16) * slot;
    if (ssd) so.ssd_path = ssd_dir;
    so.ssd_bytes = (blocks.size() + 16) * slot * 2;
    so.put_timeout = absl::Seconds(60);
    auto store = tandem::kvstore::TieredStore::Create(so);
    if (!Check(store.status())) return 1;
    for (const auto& [hash, b] : blocks) {
      if (!Check((*store)->Put(hash, b.first, b.second))) return 1;
    }
    if (!Check((*store)->Flush(absl::Now() + absl::Seconds(120)))) return 1;

    // The copies alone: one prefix's blocks through TieredStore::Get on this
    // thread (what the synchronous mode adds to the admitting Step).
    double copy_ms = 1e30;
    {
      std::vector<uint8_t> buf(layout.BlockBytes());
      const std::vector<std::vector<int32_t>> probe(prompts.begin(),
                                                    prompts.begin() + std::min(promotions, 8));
      for (const std::vector<int32_t>& prompt : probe) {
        const std::vector<tandem::BlockHash> hashes = tandem::HashFullBlocks(config.model_id, prompt, block);
        const auto c0 = Clock::now();
        for (int32_t b = 0; b < blocks_per_prefix; ++b) {
          const std::vector<int32_t> toks(prompt.begin() + b * block, prompt.begin() + (b + 1) * block);
          if (!Check((*store)->Get(hashes[b], toks, absl::MakeSpan(buf)).status())) return 1;
        }
        copy_ms = std::min(copy_ms, Ms(Clock::now() - c0));
      }
    }
    std::map<bool, nlohmann::json> best;
    std::atomic<int64_t> slept_ns{0}, sleeps{0};
    for (int rep = 0; rep < repeats; ++rep) {
      for (const bool async : {false, true}) {
        EngineOptions options;
        options.block_size = block;
        options.num_blocks =
            background * ((32 + steps + 2) / block + 2) + promotions * (blocks_per_prefix + 2) + 8;
        options.max_running = background + promotions + 1;
        options.max_step_tokens = 4096;
        options.tiers = store->get();
        options.async_tier_loads = async;
        if (delay_us > 0) {
          options.tier_load_hook = [delay_us, &slept_ns, &sleeps](int64_t, int32_t, tandem::BlockHash) {
            const auto z0 = Clock::now();
            std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
            slept_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - z0).count();
            ++sleeps;
          };
        }
        auto eng = Engine::Create(options, llama->get(), backend.get(), (*m)->tokenizer.get());
        if (!Check(eng.status())) return 1;
        Engine& e = **eng;
        // Touch the whole pool first: the first write into a fresh page costs
        // a fault (about 20 us on this VM), which would otherwise land on the
        // first copy into each block and dwarf the copy itself.
        std::memset(e.kv_view().base, 0, static_cast<size_t>(e.kv_view().num_blocks) * layout.BlockBytes());
        for (int i = 0; i < background; ++i) {
          if (!Check(e.Add({.id = 1000000 + i,
                            .prompt_tokens = Prompt(32, vocab, i),
                            .max_tokens = steps + 2,
                            .stop_at_eos = false}))) {
            return 1;
          }
        }
        if (!Check(e.Step().status())) return 1;  // every background prompt
        const int64_t decoded0 = e.stats().decode_tokens_computed;
        const auto kv0 = e.kv_manager().stats();
        std::vector<double> step_ms, ttft_ms;
        std::map<int64_t, Clock::time_point> added;
        int next = 0;
        const auto t0 = Clock::now();
        for (int s = 0; s < steps; ++s) {
          if (s % interval == 0 && next < promotions) {
            if (!Check(e.Add(
                    {.id = next, .prompt_tokens = prompts[next], .max_tokens = 1, .stop_at_eos = false}))) {
              return 1;
            }
            added[next++] = Clock::now();
          }
          const auto s0 = Clock::now();
          auto updates = e.Step();
          const auto s1 = Clock::now();
          if (!Check(updates.status())) return 1;
          step_ms.push_back(Ms(s1 - s0));
          for (const auto& u : *updates) {
            if (u.id < 1000000 && !u.new_tokens.empty()) ttft_ms.push_back(Ms(s1 - added.at(u.id)));
          }
        }
        const double window_s = Ms(Clock::now() - t0) / 1000;
        const int64_t decoded = e.stats().decode_tokens_computed - decoded0;
        const int64_t steps_with_loads = e.stats().steps_with_tier_loads;
        // Untimed: let every promotion added in the window get its token.
        while (static_cast<int>(ttft_ms.size()) < next) {
          auto updates = e.Step();
          if (!Check(updates.status())) return 1;
          const auto s1 = Clock::now();
          for (const auto& u : *updates) {
            if (u.id < 1000000 && !u.new_tokens.empty()) ttft_ms.push_back(Ms(s1 - added.at(u.id)));
          }
        }
        const auto& kv = e.kv_manager().stats();
        double ttft_mean = 0;
        for (double t : ttft_ms) ttft_mean += t / static_cast<double>(ttft_ms.size());
        nlohmann::json r = {
            {"mode", async ? "async" : "sync"},
            {"decode_tokens_per_s", static_cast<double>(decoded) / window_s},
            {"step_ms_p50", Percentile(step_ms, 0.5)},
            {"step_ms_p99", Percentile(step_ms, 0.99)},
            {"step_ms_max", Percentile(step_ms, 1.0)},
            {"step_ms_mean", window_s * 1000 / static_cast<double>(steps)},
            {"promotions", ttft_ms.size()},
            {"promotion_ttft_ms_mean", ttft_mean},
            {"promotion_ttft_ms_p50", Percentile(ttft_ms, 0.5)},
            {"tier_hit_blocks",
             (kv.dram_hit_blocks - kv0.dram_hit_blocks) + (kv.ssd_hit_blocks - kv0.ssd_hit_blocks)},
            {"ssd_hit_blocks", kv.ssd_hit_blocks - kv0.ssd_hit_blocks},
            {"failed_load_blocks", kv.failed_load_blocks - kv0.failed_load_blocks},
            {"steps_with_tier_loads", steps_with_loads},
            {"tier_load_waits", e.stats().tier_load_waits},
        };
        std::cerr << tier << " rep " << rep << " " << r.dump() << "\n";
        if (!best.contains(async) || r["decode_tokens_per_s"] > best[async]["decode_tokens_per_s"])
          best[async] = r;
      }
    }
    const nlohmann::json& s = best[false];
    const nlohmann::json& a = best[true];
    out["results"].push_back(
        {{"tier", tier},
         {"prefix_copy_ms_best", copy_ms},
         {"copy_delay_us_measured",
          sleeps > 0 ? static_cast<double>(slept_ns) / 1000.0 / static_cast<double>(sleeps) : 0.0},
         {"sync", s},
         {"async", a},
         {"ratio_async_vs_sync",
          {{"decode_tokens_per_s",
            a["decode_tokens_per_s"].get<double>() / s["decode_tokens_per_s"].get<double>()},
           {"step_ms_p50", a["step_ms_p50"].get<double>() / s["step_ms_p50"].get<double>()},
           {"step_ms_p99", a["step_ms_p99"].get<double>() / s["step_ms_p99"].get<double>()},
           {"promotion_ttft_ms_mean",
            a["promotion_ttft_ms_mean"].get<double>() / s["promotion_ttft_ms_mean"].get<double>()}}}});
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
