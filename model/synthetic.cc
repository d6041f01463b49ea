#include "model/synthetic.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"

namespace tandem::model {
namespace {

// SplitMix64: a stateless hash of (tensor seed, element index) into weights,
// so generation is parallel and identical for any thread count.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModel(std::string_view name) {
  TANDEM_ASSIGN_OR_RETURN(SyntheticShape shape, SyntheticModelShape(name));
  return CreateSyntheticModelFromConfig(shape.config, shape.dtype);
}

absl::StatusOr<std::unique_ptr<SyntheticModel>> CreateSyntheticModelFromConfig(const ModelConfig& config,
                                                                               DType dtype) {
  TANDEM_ASSIGN_OR_RETURN(SyntheticShape shape, SyntheticShapeFromConfig(config, dtype));
  auto m = std::make_unique<SyntheticModel>();
  m->config = std::move(shape.config);
  m->vocabulary = std::move(shape.vocabulary);
  const ModelConfig& c = m->config;
  const bool tied = c.tied_embeddings;
  {
    // A shape read from a config file may not fit this machine: say so
    // before allocating anything, rather than abort in the allocator.
    const double q = static_cast<double>(c.num_heads) * c.head_dim;
    const double kv = static_cast<double>(c.num_kv_heads) * c.head_dim;
    const double dim = c.dim;
    const double params =
        static_cast<double>(c.vocab_size) * dim * (tied ? 1 : 2) +
        static_cast<double>(c.num_layers) * (dim * (2 * q + 2 * kv) + 3.0 * dim * c.ffn_dim);
    const double physical =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (params * static_cast<double>(DTypeBytes(dtype, 1)) > physical) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "synthetic: %s has %.0f parameters, more than fit this machine's %.0f bytes of memory", c.model_id,
          params, physical));
    }
  }

  // Lay out every tensor in one buffer, then fill it in parallel.
  struct Spec {
    kernels::Weight* dst;
    int64_t rows, cols;
    bool norm;
    bool bias = false;  // F32 whatever `dtype` is
  };
  std::vector<Spec> specs;
  LlamaWeights& w = m->weights;
  w.layers.resize(c.num_layers);
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  specs.push_back({&w.token_embd, c.vocab_size, c.dim, false});
  specs.push_back({&w.output_norm, 1, c.dim, true});
  if (!tied) specs.push_back({&w.output, c.vocab_size, c.dim, false});
  for (LayerWeights& l : w.layers) {
    specs.push_back({&l.attn_norm, 1, c.dim, true});
    specs.push_back({&l.wq, q_dim, c.dim, false});
    specs.push_back({&l.wk, kv_dim, c.dim, false});
    specs.push_back({&l.wv, kv_dim, c.dim, false});
    specs.push_back({&l.wo, c.dim, q_dim, false});
    specs.push_back({&l.ffn_norm, 1, c.dim, true});
    specs.push_back({&l.w_gate, c.ffn_dim, c.dim, false});
    specs.push_back({&l.w_up, c.ffn_dim, c.dim, false});
    specs.push_back({&l.w_down, c.dim, c.ffn_dim, false});
  }
  // Biases last, so models without them keep the weights they always had.
  if (c.attention_bias) {
    for (LayerWeights& l : w.layers) {
      specs.push_back({&l.bq, 1, q_dim, false, true});
      specs.push_back({&l.bk, 1, kv_dim, false, true});
      specs.push_back({&l.bv, 1, kv_dim, false, true});
    }
  }
  std::vector<size_t> offsets;
  size_t total = 0;
  for (const Spec& s : specs) {
    offsets.push_back(total);
    if (s.rows * s.cols > (int64_t{1} << 40)) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("synthetic: a %d x %d weight of %s is too large", s.rows, s.cols, c.model_id));
    }
    total += (DTypeBytes(s.bias ? DType::kF32 : dtype, s.rows * s.cols) + 63) / 64 * 64;
  }
  const uint64_t physical =
      static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (total > physical) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "synthetic: %s needs %d bytes of weights, more than this machine's %d bytes of memory", c.model_id,
        total, physical));
  }
  m->storage.resize(total);
  ThreadPool pool(ThreadPool::Options{});
  for (size_t t = 0; t < specs.size(); ++t) {
    const Spec& s = specs[t];
    uint8_t* base = m->storage.data() + offsets[t];
    const DType type = s.bias ? DType::kF32 : dtype;
    *s.dst = kernels::Weight{base, type, s.rows, s.cols};
    // Uniform in [-a, a] with a = sqrt(3 / cols): unit-variance inputs give
    // unit-variance outputs, so activations neither vanish nor explode.
    // Biases: uniform in [-0.1, 0.1].
    const float a = s.norm ? 0.0f : s.bias ? 0.1f : std::sqrt(3.0f / static_cast<float>(s.cols));
    const uint64_t seed = SplitMix64(0x7a6e64656d00ull + t);
    const int64_t n = s.rows * s.cols;
    constexpr int64_t kChunk = 1 << 16;
    pool.ParallelFor((n + kChunk - 1) / kChunk, [&](int64_t chunk) {
      const int64_t end = std::min(n, (chunk + 1) * kChunk);
      for (int64_t i = chunk * kChunk; i < end; ++i) {
        float value = 1.0f;  // norm weights
        if (!s.norm) {
          const double u = static_cast<double>(SplitMix64(seed ^ static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
          value = static_cast<float>((2.0 * u - 1.0) * a);
        }
        if (type == DType::kF32) {
          reinterpret_cast<float*>(base)[i] = value;
        } else if (type == DType::kF16) {
          reinterpret_cast<uint16_t*>(base)[i] = FloatToHalf(value);
        } else {
          reinterpret_cast<uint16_t*>(base)[i] = FloatToBF16(value);
        }
      }
    });
  }
  if (tied) w.output = w.token_embd;
  return m;
}

}  // namespace tandem::model
