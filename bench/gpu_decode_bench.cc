// CUDA decode TPOT and prefill throughput on synthetic Llama shapes, each
// against its bound measured in the same run.
//
//   gpu_decode_bench --presets llama-1b,llama-8b --batches 1,8,32,64 --contexts 512,4096 --json out.json
//
// Decode is memory-bound: a step reads every weight matrix once plus each
// sequence's KV cache, so its floor is
//   (decode weight bytes + batch * context * kv bytes per token) / device copy bandwidth,
// the bandwidth being what cudaMemcpy device-to-device achieves here (bytes
// read + written per second). Prefill is GEMM-bound: its ceiling is the
// cuBLAS BF16 GEMM rate for the model's largest projection at the same number
// of rows, divided by 2 * (matmul parameters) FLOPs per token (attention FLOPs
// not counted, so long prompts read low). Results are JSON.
//
// Each decode step is one LlamaModel::Forward (B rows, one per sequence, with
// logits for every row copied back, as the engine does); the KV cache is
// zero-filled, which costs the same to read as real values. Configurations
// whose KV cache does not fit in device memory are reported as skipped.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/llama.h"
#include "model/synthetic.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using tandem::kernels::AttentionSequence;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty()))
    out.push_back(std::stoi(std::string(p)));
  return out;
}

// Bytes of weights one decode step reads (BF16 on the device): every matrix
// and norm, but of the embedding table only a few rows (unless tied).
double DecodeWeightBytes(const tandem::model::LlamaWeights& w) {
  auto bytes = [](const tandem::kernels::Weight& x) {
    return x.data == nullptr ? 0.0 : static_cast<double>(x.rows * x.cols) * (x.rows == 1 ? 4 : 2);
  };
  double total = bytes(w.output) + bytes(w.output_norm);
  for (const tandem::model::LayerWeights& l : w.layers) {
    for (const tandem::kernels::Weight* x :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      total += bytes(*x);
    }
  }
  return total;
}

// Parameters in the matrices a token's forward pass multiplies by.
double MatMulParams(const tandem::model::ModelConfig& c) {
  const double q = static_cast<double>(c.num_heads) * c.head_dim;
  const double kv = static_cast<double>(c.num_kv_heads) * c.head_dim;
  const double per_layer = c.dim * (q + 2 * kv) + q * c.dim + 3.0 * c.dim * c.ffn_dim;
  return per_layer * c.num_layers + static_cast<double>(c.vocab_size) * c.dim;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CUDA decode TPOT and prefill tokens/s against measured bounds"};
  std::string presets = "llama-1b,llama-8b";
  std::string batches = "1,8,32,64";
  std::string contexts = "512,4096";
  std::string prefills = "512,2048";
  int steps = 20;
  int block_size = 16;
  bool fp32 = false;
  std::string json_path;
  app.add_option("--presets", presets, "Synthetic presets (model/synthetic.h)")->capture_default_str();
  app.add_option("--batches", batches, "Decode batch sizes")->capture_default_str();
  app.add_option("--contexts", contexts, "Decode context lengths")->capture_default_str();
  app.add_option("--prefill-tokens", prefills, "Prompt lengths for prefill")->capture_default_str();
  app.add_option("--steps", steps, "Timed decode steps per configuration")->capture_default_str();
  app.add_option("--block-size", block_size, "KV block size")->capture_default_str();
  app.add_flag("--fp32", fp32, "F32 weights and FP32 GEMMs instead of BF16");
  app.add_option("--json", json_path, "Write the JSON here as well as to stdout");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json out;
  absl::StatusOr<std::unique_ptr<tandem::kernels::CudaBackend>> probe =
      tandem::kernels::CreateCudaBackend({});
  if (!probe.ok()) {
    std::cerr << "gpu_decode_bench: " << probe.status().message() << "\n";
    return 1;
  }
  out["device"] = (*probe)->device_name();
  probe->reset();
  absl::StatusOr<double> bandwidth = tandem::kernels::MeasureCopyBandwidth(0, size_t{1} << 30, 10);
  if (!bandwidth.ok()) {
    std::cerr << "gpu_decode_bench: " << bandwidth.status().message() << "\n";
    return 1;
  }
  out["copy_bandwidth_bytes_per_s"] = *bandwidth;
  out["precision"] = fp32 ? "fp32" : "bf16";
  out["results"] = nlohmann::json::array();

  for (absl::string_view preset_view : absl::StrSplit(presets, ',', absl::SkipEmpty())) {
    const std::string preset(preset_view);
    std::cerr << "gpu_decode_bench: building " << preset << "\n";
    auto synthetic = tandem::model::CreateSyntheticModel(preset);
    if (!synthetic.ok()) {
      std::cerr << "gpu_decode_bench: " << synthetic.status().message() << "\n";
      return 1;
    }
    tandem::model::ModelConfig config = (*synthetic)->config;
    int max_context = 0;
    for (int c : ParseInts(contexts)) max_context = std::max(max_context, c);
    for (int p : ParseInts(prefills)) max_context = std::max(max_context, p);
    config.context_length = std::max(config.context_length, max_context + steps + 8);
    auto backend = tandem::kernels::CreateCudaBackend({.fp32_weights = fp32});
    if (!backend.ok()) {
      std::cerr << "gpu_decode_bench: " << backend.status().message() << "\n";
      return 1;
    }
    tandem::kernels::CudaBackend& be = **backend;
    auto llama = tandem::model::LlamaModel::Create(config, (*synthetic)->weights, &be);
    if (!llama.ok()) {
      std::cerr << "gpu_decode_bench: " << llama.status().message() << "\n";
      return 1;
    }
    const double weight_bytes = DecodeWeightBytes((*synthetic)->weights) * (fp32 ? 2 : 1);
    (*synthetic)->storage.clear();  // the device holds the weights now
    (*synthetic)->storage.shrink_to_fit();
    const tandem::kernels::KvLayout layout = config.KvLayoutFor(block_size);
    const double kv_bytes_per_token = 2.0 * config.num_layers * layout.TokenStride() * sizeof(float);
    std::vector<float> logits;

    for (int context : ParseInts(contexts)) {
      for (int batch : ParseInts(batches)) {
        nlohmann::json r = {{"preset", preset}, {"phase", "decode"}, {"batch", batch}, {"context", context}};
        const int blocks_per_seq = (context + steps + 2 + block_size - 1) / block_size;
        const int num_blocks = blocks_per_seq * batch;
        absl::StatusOr<void*> kv_mem = be.Allocate(static_cast<size_t>(num_blocks) * layout.BlockBytes());
        if (!kv_mem.ok()) {
          r["skipped"] = std::string(kv_mem.status().message());
          out["results"].push_back(r);
          continue;
        }
        const tandem::kernels::KvCacheView kv{static_cast<float*>(*kv_mem), layout, num_blocks};
        std::vector<std::vector<int32_t>> tables(batch);
        for (int s = 0; s < batch; ++s) {
          for (int b = 0; b < blocks_per_seq; ++b) tables[s].push_back(s * blocks_per_seq + b);
        }
        logits.resize(static_cast<size_t>(batch) * config.vocab_size);
        double timed = 0;
        bool ok = true;
        for (int step = 0; step < steps + 2 && ok; ++step) {  // 2 warm-up steps
          const int pos = context + step;
          std::vector<int32_t> tokens(batch), positions(batch, pos), slots(batch), logit_rows(batch);
          std::vector<AttentionSequence> seqs(batch);
          for (int s = 0; s < batch; ++s) {
            tokens[s] = (s * 7 + step) % config.vocab_size;
            slots[s] = tables[s][pos / block_size] * block_size + pos % block_size;
            logit_rows[s] = s;
            seqs[s] = AttentionSequence{
                .query_start = s, .num_queries = 1, .context_len = pos + 1, .block_table = tables[s]};
          }
          const tandem::model::ForwardBatch fb{tokens, positions, slots, seqs, logit_rows};
          const auto t0 = Clock::now();
          const absl::Status st = (*llama)->Forward(fb, kv, logits.data());
          const double s = Seconds(Clock::now() - t0);
          if (!st.ok() || !be.status().ok()) {
            r["error"] = std::string((st.ok() ? be.status() : st).message());
            ok = false;
          }
          if (step >= 2) timed += s;
        }
        be.Free(*kv_mem);
        if (!ok) {
          out["results"].push_back(r);
          continue;
        }
        const double tpot = timed / steps;
        const double bytes =
            weight_bytes + static_cast<double>(batch) * (context + steps / 2.0) * kv_bytes_per_token;
        const double floor = bytes / *bandwidth;
        r["tpot_ms"] = tpot * 1e3;
        r["tokens_per_s"] = batch / tpot;
        r["bytes_per_step"] = bytes;
        r["roofline_tpot_ms"] = floor * 1e3;
        r["fraction_of_roofline"] = floor / tpot;
        std::cerr << preset << " decode b=" << batch << " ctx=" << context << ": " << tpot * 1e3
                  << " ms/step (" << floor / tpot << " of roofline)\n";
        out["results"].push_back(r);
      }
    }

    for (int prompt : ParseInts(prefills)) {
      nlohmann::json r = {{"preset", preset}, {"phase", "prefill"}, {"tokens", prompt}};
      const int num_blocks = (prompt + block_size - 1) / block_size;
      absl::StatusOr<void*> kv_mem = be.Allocate(static_cast<size_t>(num_blocks) * layout.BlockBytes());
      if (!kv_mem.ok()) {
        r["skipped"] = std::string(kv_mem.status().message());
        out["results"].push_back(r);
        continue;
      }
      const tandem::kernels::KvCacheView kv{static_cast<float*>(*kv_mem), layout, num_blocks};
      std::vector<int32_t> table(num_blocks), tokens(prompt), positions(prompt), slots(prompt);
      for (int b = 0; b < num_blocks; ++b) table[b] = b;
      for (int i = 0; i < prompt; ++i) {
        tokens[i] = (i * 13) % config.vocab_size;
        positions[i] = i;
        slots[i] = i;
      }
      const std::vector<AttentionSequence> seqs = {
          {.query_start = 0, .num_queries = prompt, .context_len = prompt, .block_table = table}};
      const std::vector<int32_t> logit_rows = {prompt - 1};
      logits.resize(config.vocab_size);
      const tandem::model::ForwardBatch fb{tokens, positions, slots, seqs, logit_rows};
      double best = 1e30;
      for (int rep = 0; rep < 4; ++rep) {  // the first is a warm-up
        const auto t0 = Clock::now();
        const absl::Status st = (*llama)->Forward(fb, kv, logits.data());
        const double s = Seconds(Clock::now() - t0);
        if (!st.ok() || !be.status().ok()) {
          r["error"] = std::string((st.ok() ? be.status() : st).message());
          break;
        }
        if (rep > 0) best = std::min(best, s);
      }
      be.Free(*kv_mem);
      if (r.contains("error")) {
        out["results"].push_back(r);
        continue;
      }
      absl::StatusOr<double> gemm =
          tandem::kernels::MeasureGemmRate(0, prompt, config.ffn_dim, config.dim, 5);
      r["tokens_per_s"] = prompt / best;
      r["seconds"] = best;
      if (gemm.ok()) {
        const double bound = *gemm / (2.0 * MatMulParams(config));
        r["gemm_flops_per_s"] = *gemm;
        r["gemm_bound_tokens_per_s"] = bound;
        r["fraction_of_gemm_bound"] = (prompt / best) / bound;
      } else {
        r["gemm_error"] = std::string(gemm.status().message());
      }
      std::cerr << preset << " prefill " << prompt << " tokens: " << prompt / best << " tokens/s\n";
      out["results"].push_back(r);
    }
  }
  const std::string text = out.dump(2);
  std::cout << text << "\n";
  if (!json_path.empty()) std::ofstream(json_path) << text << "\n";
  return 0;
}
