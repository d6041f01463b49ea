// CPU prefill and decode throughput for one sequence, against the memory
// bound measured in the same run.
//
//   build/bin/cpu_generate_bench --models synthetic:tiny,../shared/models/stories260K.gguf
//
// Decode is memory-bound: each step reads every weight once, so the fastest a
// step can be is weight_bytes / read_bandwidth, where read_bandwidth is what
// --threads threads streaming disjoint parts of a buffer much larger than the
// caches read per second on this machine right now (the way decode reads
// weights). The result reports decode tokens/s and its ratio to that bound
// (1.0 would be perfect), and one-thread memcpy bandwidth for reference.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "engine/generate.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Best-of-N one-thread memcpy over 512 MiB (bytes of source per second):
// reported beside the read bandwidth, which is the bound's denominator.
double MeasureCopyBandwidth() {
  const size_t bytes = size_t{512} << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    const double s = Seconds(Clock::now() - t0);
    best = std::max(best, bytes / s);
    src[i] = dst[bytes - 1 - i];  // keep the copies observable
  }
  return best;
}

// Best-of-5 read bandwidth of `threads` threads each summing its own slice of
// a 1 GiB buffer (bytes read per second, all threads together).
double MeasureReadBandwidth(int threads) {
  const size_t words = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buf(words, 1);
  std::vector<uint64_t> sums(threads);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = words / threads * t, end = t + 1 == threads ? words : words / threads * (t + 1);
        uint64_t s = 0;
        for (size_t i = begin; i < end; ++i) s += buf[i];
        sums[t] = s;
      });
    }
    for (std::thread& th : pool) th.join();
    best = std::max(best, words * sizeof(uint64_t) / Seconds(Clock::now() - t0));
  }
  if (std::accumulate(sums.begin(), sums.end(), uint64_t{0}) != words) std::cerr << "read check failed\n";
  return best;
}

// Bytes one decode step reads: every weight except the embedding table, of
// which only one row is read (unless it doubles as the output matrix).
size_t DecodeWeightBytes(const tandem::model::LlamaWeights& w) {
  size_t total = tandem::model::WeightBytes(w);
  if (w.output.data != w.token_embd.data) {
    total -= tandem::DTypeBytes(w.token_embd.dtype, w.token_embd.rows * w.token_embd.cols);
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU prefill/decode throughput against the memory-bandwidth bound"};
  std::string models = "synthetic:tiny," TANDEM_DEFAULT_SHARED "/models/stories260K.gguf";
  int prompt_tokens = 128;
  int decode_tokens = 128;
  int threads = 0;
  int repeats = 3;
  std::string kv_dtype = "f32";
  app.add_option("--models", models, "Comma-separated model specs")->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens, "Prompt length for prefill")->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens, "Tokens to decode")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = all)")->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per model; the best is reported")->capture_default_str();
  app.add_option("--kv-dtype", kv_dtype,
                 "KV cache element type: f32, f16 or bf16 (llama-bench's default is f16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  CLI11_PARSE(app, argc, argv);
  const tandem::DType kv_type = kv_dtype == "f16"    ? tandem::DType::kF16
                                : kv_dtype == "bf16" ? tandem::DType::kBF16
                                                     : tandem::DType::kF32;

  nlohmann::json out;
  out["machine"] = {{"hardware_threads", std::thread::hardware_concurrency()}};
  out["copy_bandwidth_bytes_per_s"] = MeasureCopyBandwidth();
  const int read_threads = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  const double bandwidth = MeasureReadBandwidth(read_threads);
  out["read_bandwidth_bytes_per_s"] = bandwidth;
  out["read_bandwidth_threads"] = read_threads;
  out["results"] = nlohmann::json::array();
  for (const std::string& spec : std::vector<std::string>(absl::StrSplit(models, ',', absl::SkipEmpty()))) {
    auto m = tandem::model::LoadModel(spec);
    if (!m.ok()) {
      std::cerr << "skipping " << spec << ": " << m.status() << "\n";
      continue;
    }
    auto backend = tandem::kernels::CreateCpuBackend({.num_threads = threads});
    auto llama = tandem::model::LlamaModel::Create((*m)->config, (*m)->weights, backend.get());
    if (!llama.ok()) {
      std::cerr << "skipping " << spec << ": " << llama.status() << "\n";
      continue;
    }
    // A prompt of exactly prompt_tokens tokens: BOS then arbitrary ids.
    const int32_t vocab = (*m)->config.vocab_size;
    std::vector<int32_t> prompt(prompt_tokens);
    for (int i = 0; i < prompt_tokens; ++i) prompt[i] = i == 0 ? 1 : 3 + (i * 7919) % (vocab - 3);
    const int32_t total = prompt_tokens + decode_tokens;
    tandem::kernels::KvCacheView kv;
    kv.layout = (*m)->config.KvLayoutFor(16, kv_type);
    kv.num_blocks = (total + 15) / 16;
    void* mem = *backend->Allocate(kv.num_blocks * kv.layout.BlockBytes());
    kv.base = mem;
    std::vector<int32_t> table(kv.num_blocks);
    std::iota(table.begin(), table.end(), 0);
    std::vector<float> logits(vocab);
    double best_prefill = 1e30, best_decode = 1e30;
    // Run 0 is a warm-up, untimed, as llama-bench's default warm-up run:
    // the first forward pass faults in the weights' pages, the activation
    // buffers and the KV blocks, which a server pays once, not per request.
    for (int rep = 0; rep <= repeats; ++rep) {
      const bool timed = rep > 0;
      std::vector<int32_t> positions(prompt_tokens);
      std::iota(positions.begin(), positions.end(), 0);
      tandem::kernels::AttentionSequence seq{0, prompt_tokens, prompt_tokens, table};
      int32_t last = prompt_tokens - 1;
      tandem::model::ForwardBatch batch{prompt, positions, positions, {&seq, 1}, {&last, 1}};
      auto t0 = Clock::now();
      if (auto s = (*llama)->Forward(batch, kv, logits.data()); !s.ok()) {
        std::cerr << s << "\n";
        return 1;
      }
      if (timed) best_prefill = std::min(best_prefill, Seconds(Clock::now() - t0));
      int32_t token = tandem::engine::Argmax(logits);
      t0 = Clock::now();
      for (int32_t pos = prompt_tokens; pos < total; ++pos) {
        tandem::kernels::AttentionSequence d{0, 1, pos + 1, table};
        int32_t zero = 0;
        tandem::model::ForwardBatch step{{&token, 1}, {&pos, 1}, {&pos, 1}, {&d, 1}, {&zero, 1}};
        if (auto s = (*llama)->Forward(step, kv, logits.data()); !s.ok()) {
          std::cerr << s << "\n";
          return 1;
        }
        token = tandem::engine::Argmax(logits);
      }
      if (timed) best_decode = std::min(best_decode, Seconds(Clock::now() - t0));
    }
    backend->Free(mem);
    const size_t weight_bytes = DecodeWeightBytes((*m)->weights);
    const double decode_tps = decode_tokens / best_decode;
    const double bound_tps = bandwidth / static_cast<double>(weight_bytes);
    out["results"].push_back({
        {"model", spec},
        {"prompt_tokens", prompt_tokens},
        {"kv_dtype", kv_dtype},
        {"decode_tokens", decode_tokens},
        {"prefill_tokens_per_s", prompt_tokens / best_prefill},
        {"decode_tokens_per_s", decode_tps},
        {"decode_weight_bytes_per_token", weight_bytes},
        {"decode_bound_tokens_per_s", bound_tps},
        {"decode_ratio_to_bound", decode_tps / bound_tps},
        {"decode_weight_bytes_per_s", decode_tps * static_cast<double>(weight_bytes)},
    });
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}
