// The CPU backend: the reference every other backend is checked against, and
// a usable backend in its own right (multi-threaded, vectorisable loops).
//
// Every reduction uses a fixed order that depends only on the reduced vector's
// length (8 interleaved partial sums combined pairwise, then the tail), so a
// row's result never depends on batch composition or thread count.
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"

namespace tandem::kernels {
namespace {

// Dequantises row `r` of `w` into out[0, w.cols) (common/dtype.h).
void DequantizeRow(const Weight& w, int64_t r, float* out) {
  ::tandem::DequantizeRow(w.dtype, static_cast<const uint8_t*>(w.data) + DTypeBytes(w.dtype, w.cols) * r,
                          w.cols, out);
}

// KV pool elements (kv_layout.h): stored as F32, BF16 or F16, computed in F32.
// A row of F32 is copied (a loop did not vectorise).
void CopyFloats(cpu::GemmPath, const float* x, int64_t n, float* out) {
  std::memcpy(out, x, n * sizeof(float));
}

// Writes rows of K and V into their slots, converting F32 to the pool's type
// a row at a time (elementwise.h: FloatToHalf's / FloatToBF16's bits, with
// F16C or integer vectors instead of a branchy scalar loop per element).
template <typename Stored>
void WriteKvAs(cpu::GemmPath path, void (*convert)(cpu::GemmPath, const float*, int64_t, Stored*),
               const KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) {
  const KvLayout& l = kv.layout;
  const int64_t stride = l.TokenStride();
  for (size_t r = 0; r < slots.size(); ++r) {
    Stored* block = reinterpret_cast<Stored*>(kv.Block(slots[r] / l.block_size));
    const int32_t t = slots[r] % l.block_size;
    convert(path, k + r * stride, stride, block + l.Offset(layer, 0, t));
    convert(path, v + r * stride, stride, block + l.Offset(layer, 1, t));
  }
}

// Large allocations (weights, the KV pool: fresh zero mappings from calloc,
// not yet touched) ask for transparent huge pages where the kernel offers
// them on request (THP "madvise" mode). With 4 KiB pages a batch-16 decode
// of the 110m model spent 5% of its samples in page faults and 6% in the
// memcpy of WriteKv that took them (each token's K and V row of a layer
// lands in its own page of the pool), and attention walks one page per key.
// Advice only: where it is refused nothing changes. TANDEM_CPU_HUGE_PAGES=0
// leaves the kernel's default, for before/after measurements in one build.
void AskForHugePages(void* p, size_t bytes) {
  constexpr size_t kMin = size_t{4} << 20, kPage = 4096;
  static const bool off = [] {
    const char* env = std::getenv("TANDEM_CPU_HUGE_PAGES");
    return env != nullptr && std::strcmp(env, "0") == 0;
  }();
  if (bytes < kMin || off) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kPage - 1);
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// Backend memory is host memory: a copy is a memcpy, done when queued.
class HostCopyStream final : public CopyStream {
 public:
  void ToHost(const void* src, size_t bytes, void* host_dst) override { std::memcpy(host_dst, src, bytes); }
  void FromHost(const void* host_src, size_t bytes, void* dst) override { std::memcpy(dst, host_src, bytes); }
  absl::Status Synchronize(absl::Time) override { return absl::OkStatus(); }
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options)
      : pool_(ThreadPool::Options{.num_threads = options.num_threads}) {}

  std::string_view name() const override { return "cpu"; }
  bool SupportsWeightType(DType) const override { return true; }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* p = std::calloc(1, std::max<size_t>(bytes, 1));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrFormat("cpu backend: cannot allocate %d bytes", bytes));
    }
    AskForHugePages(p, bytes);
    return p;
  }
  void Free(void* ptr) override { std::free(ptr); }
  void CopyToHost(const void* src, size_t bytes, void* dst) override { std::memcpy(dst, src, bytes); }
  void CopyFromHost(const void* src, size_t bytes, void* dst) override { std::memcpy(dst, src, bytes); }

  void Copy(const void* src, size_t bytes, void* dst) override { std::memcpy(dst, src, bytes); }

  bool host_accessible() const override { return true; }
  absl::StatusOr<std::unique_ptr<CopyStream>> CreateCopyStream() override {
    return std::unique_ptr<CopyStream>(std::make_unique<HostCopyStream>());
  }
  absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) override {
    // calloc: large blocks come from fresh mappings, zero without a memset,
    // so a big staging area costs memory only as it is used.
    void* p = std::calloc(std::max<size_t>(bytes, 1), 1);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cpu backend: cannot allocate %d host bytes", bytes));
    }
    return p;
  }
  void FreePinnedHost(void* ptr) override { std::free(ptr); }

  absl::StatusOr<Weight> PrepareWeight(const Weight& host) override {
    if (host.cols % BlockElements(host.dtype) != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cpu backend: %s weight row of %d elements is not a multiple of %d",
                          std::string(DTypeName(host.dtype)), host.cols, BlockElements(host.dtype)));
    }
    // Host memory is this backend's memory: the result is `host` itself.
    // Where the path has a packed layout for it (gemm.h PackedWeight), the
    // packed copy is kept beside it, found by MatMul from the data pointer;
    // Embed still reads `host`'s own rows.
    std::unique_ptr<cpu::PackedWeight> packed = cpu::PackWeight(gemm_path_, &pool_, host);
    if (packed != nullptr) packed_[host.data] = std::move(packed);
    return host;
  }

  void Embed(const Weight& table, absl::Span<const int32_t> ids, float* out) override {
    for (size_t r = 0; r < ids.size(); ++r) DequantizeRow(table, ids[r], out + r * table.cols);
  }

  void RmsNorm(const float* x, int64_t rows, const Weight& weight, float eps, float* out) override {
    const int64_t n = weight.cols;
    std::vector<float> w(n);
    DequantizeRow(weight, 0, w.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * n;
      float* yr = out + r * n;
      // Double accumulation, as llama.cpp's ggml_compute_forward_rms_norm.
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(xr[i] * xr[i]);
      const float mean = static_cast<float>(sum / n);
      const float scale = 1.0f / std::sqrt(mean + eps);
      for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
    }
  }

  // cpu/gemm.h: register-blocked AVX-512/AVX2 kernels (scalar loops on
  // older CPUs), output rows split over the pool.
  void MatMul(const float* x, int64_t rows, const Weight& w, float* out) override {
    const cpu::PackedWeight* packed = nullptr;
    if (!packed_.empty()) {
      auto it = packed_.find(w.data);
      // The same data seen as another shape (a view of part of it) runs unpacked.
      if (it != packed_.end() && it->second->source.rows == w.rows && it->second->source.cols == w.cols &&
          it->second->source.dtype == w.dtype) {
        packed = it->second.get();
      }
    }
    cpu::MatMul(gemm_path_, &pool_, x, rows, w, out, packed);
  }

  void Rope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
            absl::Span<const int32_t> positions, float freq_base, RopeStyle style) override {
    RopeImpl(x, rows, num_heads, head_dim, rope_dims, positions, freq_base, nullptr, style);
  }

  bool RopeWithFreqFactors(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                           absl::Span<const int32_t> positions, float freq_base,
                           absl::Span<const float> freq_factors, RopeStyle style) override {
    RopeImpl(x, rows, num_heads, head_dim, rope_dims, positions, freq_base, freq_factors.data(), style);
    return true;
  }

  void WriteKv(const KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) override {
    switch (kv.layout.dtype) {
      case DType::kBF16:
        return WriteKvAs<uint16_t>(gemm_path_, cpu::FloatsToBf16, kv, layer, k, v, slots);
      case DType::kF16:
        return WriteKvAs<uint16_t>(gemm_path_, cpu::FloatsToHalf, kv, layer, k, v, slots);
      default:
        return WriteKvAs<float>(gemm_path_, CopyFloats, kv, layer, k, v, slots);
    }
  }

  void PagedAttention(const float* q, const KvCacheView& kv, int32_t layer, int32_t num_heads,
                      absl::Span<const AttentionSequence> seqs, float scale, float* out) override {
    cpu::PagedAttention(gemm_path_, &pool_, q, kv, layer, num_heads, seqs, scale, out);
  }

  void SwiGlu(const float* gate, const float* up, int64_t n, float* out) override {
    cpu::SwiGlu(gemm_path_, gate, up, n, out);
  }

  void Add(float* x, const float* y, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
  }

 private:
  // Rope with optional per-pair divisors (nullptr: none, i.e. all 1).
  // theta_i computed as llama.cpp's ggml_rope_cache_init does: an iterated
  // float product divided by the pair's factor, so angles agree with the
  // reference to the last bit (x / 1.0f is exact: no factors, same bits).
  void RopeImpl(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                absl::Span<const int32_t> positions, float freq_base, const float* freq_factors,
                RopeStyle style) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* cos_sin = RopeAngles(positions[r], rope_dims, freq_base, freq_factors);
      for (int32_t h = 0; h < num_heads; ++h) {
        float* v = x + (r * num_heads + h) * head_dim;
        for (int32_t i = 0; i < rope_dims; i += 2) {
          const float c = cos_sin[i];
          const float s = cos_sin[i + 1];
          const int32_t a = style == RopeStyle::kNormal ? i : i / 2;
          const int32_t b = style == RopeStyle::kNormal ? i + 1 : i / 2 + rope_dims / 2;
          const float x0 = v[a];
          const float x1 = v[b];
          v[a] = x0 * c - x1 * s;
          v[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  // cos, sin of each pair's angle at `pos`: rope_dims floats, computed once
  // per position and kept while the parameters stay the same, since every
  // layer's q and k rotate the same positions (2 x layers calls per step,
  // each of rope_dims trig calls per row otherwise). Computed by the same
  // expressions whenever asked, so caching changes no bits.
  const float* RopeAngles(int32_t pos, int32_t rope_dims, float freq_base, const float* freq_factors) {
    RopeCache& c = rope_cache_;
    const bool same =
        c.rope_dims == rope_dims && c.freq_base == freq_base &&
        (freq_factors == nullptr ? c.factors.empty()
                                 : c.factors.size() == static_cast<size_t>(rope_dims / 2) &&
                                       std::equal(c.factors.begin(), c.factors.end(), freq_factors));
    if (!same) {
      c = RopeCache{rope_dims, freq_base, {}, {}, {}};
      if (freq_factors != nullptr) c.factors.assign(freq_factors, freq_factors + rope_dims / 2);
    }
    if (static_cast<size_t>(pos) >= c.have.size()) {
      c.have.resize(pos + 1, 0);
      c.cos_sin.resize(c.have.size() * rope_dims);
    }
    float* cos_sin = c.cos_sin.data() + static_cast<size_t>(pos) * rope_dims;
    if (c.have[pos]) return cos_sin;
    const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(rope_dims));
    float theta = static_cast<float>(pos);
    for (int32_t i = 0; i < rope_dims; i += 2) {
      const float t = freq_factors == nullptr ? theta : theta / freq_factors[i / 2];
      cos_sin[i] = std::cos(t);
      cos_sin[i + 1] = std::sin(t);
      theta *= theta_scale;
    }
    c.have[pos] = 1;
    return cos_sin;
  }

  struct RopeCache {
    int32_t rope_dims = 0;
    float freq_base = 0;
    std::vector<float> factors;  // empty: none
    std::vector<float> cos_sin;  // [position][rope_dims]
    std::vector<uint8_t> have;   // [position]: cos_sin filled
  };

  ThreadPool pool_;
  // PrepareWeight's packed copies by the source's data pointer.
  absl::flat_hash_map<const void*, std::unique_ptr<cpu::PackedWeight>> packed_;
  RopeCache rope_cache_;  // only the engine thread calls ops
  const cpu::GemmPath gemm_path_ = cpu::DefaultGemmPath();
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace tandem::kernels
