// Every op of every built non-CPU backend against the CPU reference
// (kernels/cpu/), on fresh random inputs, with outputs poisoned (NaN) before
// each run so an element a kernel forgets to write fails the comparison.
// Sizes are deliberately not multiples of any tile or warp. Skips with "no
// CUDA device" where the CUDA backend is built but no GPU is usable.
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Owns buffers in one backend's memory.
class Buffers {
 public:
  explicit Buffers(Backend* b) : b_(b) {}
  ~Buffers() {
    for (void* p : allocs_) b_->Free(p);
  }
  template <typename T>
  T* Upload(const std::vector<T>& host) {
    void* p = Alloc(host.size() * sizeof(T));
    b_->CopyFromHost(host.data(), host.size() * sizeof(T), p);
    return static_cast<T*>(p);
  }
  float* Poisoned(size_t n) { return Upload(std::vector<float>(n, kNaN)); }
  std::vector<float> Download(const float* p, size_t n) {
    std::vector<float> out(n);
    b_->CopyToHost(p, n * sizeof(float), out.data());
    return out;
  }

 private:
  void* Alloc(size_t bytes) {
    absl::StatusOr<void*> p = b_->Allocate(std::max<size_t>(bytes, 1));
    EXPECT_OK(p.status());
    allocs_.push_back(*p);
    return *p;
  }
  Backend* b_;
  std::vector<void*> allocs_;
};

// |got - want| <= abs_tol + rel_tol * scale[i] for every element (scale
// defaults to |want|); NaN anywhere fails.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double abs_tol,
                 double rel_tol, const std::vector<float>* scale = nullptr) {
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  size_t bad = 0;
  size_t first_bad = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    const double s = scale != nullptr ? (*scale)[i] : std::abs(want[i]);
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double tol = abs_tol + rel_tol * s;
    if (!(err <= tol)) {  // NaN compares false
      ++bad;
      if (first_bad == got.size()) first_bad = i;
    }
    if (err > worst) worst = err;
  }
  EXPECT_EQ(bad, 0u) << bad << " of " << got.size() << " elements off; first at " << first_bad << ": got "
                     << (first_bad < got.size() ? got[first_bad] : 0) << " want "
                     << (first_bad < got.size() ? want[first_bad] : 0) << "; max |err| " << worst;
}

std::vector<float> Random(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A host weight of `dtype` holding (approximately) `values`, rows x cols.
struct HostWeight {
  std::vector<uint8_t> bytes;
  Weight view;
};
HostWeight MakeWeight(const std::vector<float>& values, int64_t rows, int64_t cols, DType dtype) {
  HostWeight w;
  w.bytes.resize(DTypeBytes(dtype, rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.bytes.data() + DTypeBytes(dtype, cols) * r;
    const float* v = values.data() + r * cols;
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t h;
      switch (dtype) {
        case DType::kF32:
          std::memcpy(row + 4 * i, &v[i], 4);
          break;
        case DType::kF16:
          h = FloatToHalf(v[i]);
          std::memcpy(row + 2 * i, &h, 2);
          break;
        case DType::kBF16:
          h = FloatToBF16(v[i]);
          std::memcpy(row + 2 * i, &h, 2);
          break;
        case DType::kQ8_0:
          if (i % kQ8_0BlockElements == 0) {
            float amax = 0;
            for (int j = 0; j < kQ8_0BlockElements; ++j) amax = std::max(amax, std::abs(v[i + j]));
            const float d = amax / 127.0f;
            uint8_t* blk = row + (i / kQ8_0BlockElements) * kQ8_0BlockBytes;
            h = FloatToHalf(d);
            std::memcpy(blk, &h, 2);
            for (int j = 0; j < kQ8_0BlockElements; ++j) {
              const float q = d == 0 ? 0 : std::round(v[i + j] / d);
              blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
            }
          }
          break;
        case DType::kQ4_0:  // not among the types compared here
        case DType::kQ4_K:
          break;
      }
    }
  }
  w.view = Weight{.data = w.bytes.data(), .dtype = dtype, .rows = rows, .cols = cols};
  return w;
}

struct Case {
  std::string device;
  bool fp32 = false;
};

class BackendConsistencyTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (GetParam().device == "cuda" && !CudaBackendBuilt())
      GTEST_SKIP() << "CUDA backend not built (no nvcc)";
    absl::StatusOr<std::unique_ptr<Backend>> b =
        CreateBackend({.device = GetParam().device, .cuda_fp32 = GetParam().fp32});
    if (!b.ok()) GTEST_SKIP() << "CUDA backend unavailable: " << b.status().message();
    backend_ = std::move(*b);
    cpu_ = CreateCpuBackend({.num_threads = 2});
  }
  // Tolerance of one MatMul output relative to sum_i |x_i * w_i|: BF16 rounds
  // the input row and (for non-BF16 sources) the weights, 2^-8 each.
  double MatMulRelTol() const { return GetParam().fp32 ? 1e-5 : 1.0 / 64; }

  std::mt19937 rng_{12345};
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Backend> cpu_;
};

TEST_P(BackendConsistencyTest, AllocateZeroesAndCopies) {
  Buffers dev(backend_.get());
  absl::StatusOr<void*> p = backend_->Allocate(1003 * sizeof(float));
  ASSERT_OK(p.status());
  std::vector<float> zeros(1003, 1.0f);
  backend_->CopyToHost(*p, zeros.size() * sizeof(float), zeros.data());
  EXPECT_EQ(zeros, std::vector<float>(1003, 0.0f));
  const std::vector<float> x = Random(rng_, 1003);
  float* src = dev.Upload(x);
  backend_->Copy(src, x.size() * sizeof(float), *p);
  EXPECT_EQ(dev.Download(static_cast<float*>(*p), x.size()), x);
  backend_->Free(*p);
}

TEST_P(BackendConsistencyTest, Embed) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const int64_t vocab = 37;
    const int64_t cols = 96;  // Q8_0 needs a multiple of 32
    HostWeight table = MakeWeight(Random(rng_, vocab * cols), vocab, cols, dtype);
    const std::vector<int32_t> ids = {0, 36, 5, 5, 17, 2, 36};
    ASSERT_OK_AND_ASSIGN(Weight cpu_w, cpu_->PrepareWeight(table.view));
    ASSERT_OK_AND_ASSIGN(Weight dev_w, backend_->PrepareWeight(table.view));
    std::vector<float> want(ids.size() * cols);
    cpu_->Embed(cpu_w, ids, want.data());
    Buffers dev(backend_.get());
    float* out = dev.Poisoned(want.size());
    backend_->Embed(dev_w, ids, out);
    // BF16 storage of a non-BF16 table rounds each value once.
    const bool exact = GetParam().fp32 || dtype == DType::kBF16;
    ExpectClose(dev.Download(out, want.size()), want, 0, exact ? 0 : 1.0 / 256);
  }
}

TEST_P(BackendConsistencyTest, RmsNormInPlaceAndNot) {
  const int64_t rows = 5;
  const int64_t n = 1001;
  const std::vector<float> x = Random(rng_, rows * n, -3, 3);
  HostWeight w = MakeWeight(Random(rng_, n, 0.5, 1.5), 1, n, DType::kF32);
  ASSERT_OK_AND_ASSIGN(Weight dev_w, backend_->PrepareWeight(w.view));
  std::vector<float> want(x.size());
  cpu_->RmsNorm(x.data(), rows, w.view, 1e-5f, want.data());
  Buffers dev(backend_.get());
  float* dx = dev.Upload(x);
  float* out = dev.Poisoned(x.size());
  backend_->RmsNorm(dx, rows, dev_w, 1e-5f, out);
  ExpectClose(dev.Download(out, x.size()), want, 1e-6, 1e-5);
  backend_->RmsNorm(dx, rows, dev_w, 1e-5f, dx);  // out == x
  ExpectClose(dev.Download(dx, x.size()), want, 1e-6, 1e-5);
}

TEST_P(BackendConsistencyTest, MatMulEveryWeightType) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0}) {
    for (int64_t rows : {1, 3, 70}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " rows " + std::to_string(rows));
      const int64_t k = 160;  // Q8_0 needs a multiple of 32; not a multiple of 64/128 tiles
      const int64_t n = 77;
      const std::vector<float> x = Random(rng_, rows * k);
      HostWeight w = MakeWeight(Random(rng_, n * k), n, k, dtype);
      ASSERT_OK_AND_ASSIGN(Weight dev_w, backend_->PrepareWeight(w.view));
      std::vector<float> want(rows * n);
      cpu_->MatMul(x.data(), rows, w.view, want.data());
      // Scale of each output: sum_i |x_i * w_i| with the CPU's dequantised weights.
      std::vector<float> abs_x(x.size());
      for (size_t i = 0; i < x.size(); ++i) abs_x[i] = std::abs(x[i]);
      std::vector<float> ident_rows(k * k, 0.0f);
      for (int64_t i = 0; i < k; ++i) ident_rows[i * k + i] = 1.0f;
      std::vector<float> wt(k * n);  // wt[i][o] = w[o][i], via the CPU backend with an identity input
      cpu_->MatMul(ident_rows.data(), k, w.view, wt.data());
      std::vector<float> scale(rows * n, 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t o = 0; o < n; ++o) {
          double s = 0;
          for (int64_t i = 0; i < k; ++i) s += abs_x[r * k + i] * std::abs(wt[i * n + o]);
          scale[r * n + o] = static_cast<float>(s);
        }
      }
      Buffers dev(backend_.get());
      float* dx = dev.Upload(x);
      float* out = dev.Poisoned(want.size());
      backend_->MatMul(dx, rows, dev_w, out);
      ExpectClose(dev.Download(out, want.size()), want, 1e-6, MatMulRelTol(), &scale);
    }
  }
}

TEST_P(BackendConsistencyTest, RopeBothStyles) {
  for (RopeStyle style : {RopeStyle::kNormal, RopeStyle::kNeox}) {
    for (int32_t rope_dims : {20, 12}) {  // full and partial rotation
      SCOPED_TRACE(std::string(style == RopeStyle::kNormal ? "normal" : "neox") + " dims " +
                   std::to_string(rope_dims));
      const int64_t rows = 7;
      const int32_t heads = 3;
      const int32_t head_dim = 20;
      const std::vector<float> x = Random(rng_, rows * heads * head_dim);
      const std::vector<int32_t> positions = {0, 1, 2, 17, 511, 4095, 30000};
      std::vector<float> want = x;
      cpu_->Rope(want.data(), rows, heads, head_dim, rope_dims, positions, 10000.0f, style);
      Buffers dev(backend_.get());
      float* dx = dev.Upload(x);
      backend_->Rope(dx, rows, heads, head_dim, rope_dims, positions, 10000.0f, style);
      // Same float angles on both sides; cos/sin differ by an ulp or two.
      ExpectClose(dev.Download(dx, x.size()), want, 2e-5, 1e-5);
    }
  }
}

TEST_P(BackendConsistencyTest, SwiGluAndAdd) {
  const int64_t n = 1001;
  const std::vector<float> gate = Random(rng_, n, -8, 8);
  const std::vector<float> up = Random(rng_, n);
  std::vector<float> want(n);
  cpu_->SwiGlu(gate.data(), up.data(), n, want.data());
  Buffers dev(backend_.get());
  float* dg = dev.Upload(gate);
  float* du = dev.Upload(up);
  float* out = dev.Poisoned(n);
  backend_->SwiGlu(dg, du, n, out);
  ExpectClose(dev.Download(out, n), want, 1e-7, 1e-6);
  backend_->SwiGlu(dg, du, n, dg);  // out == gate
  ExpectClose(dev.Download(dg, n), want, 1e-7, 1e-6);

  std::vector<float> sum = gate;
  cpu_->Add(sum.data(), up.data(), n);
  float* dx = dev.Upload(gate);
  backend_->Add(dx, du, n);
  ExpectClose(dev.Download(dx, n), sum, 0, 0);  // one float add: bit-identical
}

// A paged-attention step: `contexts[s]` tokens per sequence after the step,
// `queries[s]` of them computed in this step (the rest a cached prefix).
void RunAttentionCase(Backend* cpu, Backend* backend, std::mt19937& rng, const std::vector<int32_t>& contexts,
                      const std::vector<int32_t>& queries, int32_t num_heads, KvLayout layout) {
  const int32_t layer = layout.num_layers - 1;
  int32_t total_blocks = 0;
  for (int32_t c : contexts) total_blocks += (c + layout.block_size - 1) / layout.block_size;
  const int32_t num_blocks = total_blocks + 3;  // a few unused blocks
  // Block tables: a random permutation of the pool, so tables are not contiguous.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttentionSequence> seqs;
  std::vector<int32_t> slots;
  int32_t next = 0;
  int32_t row = 0;
  for (size_t s = 0; s < contexts.size(); ++s) {
    const int32_t blocks = (contexts[s] + layout.block_size - 1) / layout.block_size;
    tables.emplace_back(perm.begin() + next, perm.begin() + next + blocks);
    next += blocks;
    for (int32_t p = contexts[s] - queries[s]; p < contexts[s]; ++p) {
      slots.push_back(tables[s][p / layout.block_size] * layout.block_size + p % layout.block_size);
    }
    seqs.push_back(
        AttentionSequence{.query_start = row, .num_queries = queries[s], .context_len = contexts[s]});
    row += queries[s];
  }
  for (size_t s = 0; s < seqs.size(); ++s) seqs[s].block_table = tables[s];
  const int64_t rows = row;
  const int64_t kv_width = layout.TokenStride();
  const int64_t q_width = int64_t{num_heads} * layout.head_dim;
  const size_t pool_floats = static_cast<size_t>(num_blocks) * layout.BlockElements();
  const std::vector<float> pool = Random(rng, pool_floats);  // the cached prefix (and junk elsewhere)
  const std::vector<float> q = Random(rng, rows * q_width, -2, 2);
  const std::vector<float> k = Random(rng, rows * kv_width);
  const std::vector<float> v = Random(rng, rows * kv_width);
  const float scale = 1.0f / std::sqrt(static_cast<float>(layout.head_dim));

  std::vector<float> cpu_pool = pool;
  const KvCacheView cpu_kv{cpu_pool.data(), layout, num_blocks};
  cpu->WriteKv(cpu_kv, layer, k.data(), v.data(), slots);
  std::vector<float> want(rows * q_width);
  cpu->PagedAttention(q.data(), cpu_kv, layer, num_heads, seqs, scale, want.data());

  Buffers dev(backend);
  const KvCacheView dev_kv{dev.Upload(pool), layout, num_blocks};
  backend->WriteKv(dev_kv, layer, dev.Upload(k), dev.Upload(v), slots);
  float* out = dev.Poisoned(want.size());
  backend->PagedAttention(dev.Upload(q), dev_kv, layer, num_heads, seqs, scale, out);
  // WriteKv is a copy: the pools must be bit-identical.
  EXPECT_EQ(dev.Download(static_cast<const float*>(dev_kv.base), pool_floats), cpu_pool)
      << "KV pool after WriteKv differs";
  // Outputs are convex combinations of V values in [-1, 1].
  ExpectClose(dev.Download(out, want.size()), want, 2e-5, 1e-4);
}

TEST_P(BackendConsistencyTest, PagedAttentionDecodeAndPrefixPrefill) {
  // GQA (6 query heads over 2 KV heads), head_dim 40, blocks of 5 tokens;
  // few rows, so long decode contexts are split and merged.
  const KvLayout layout{.num_layers = 2, .num_kv_heads = 2, .head_dim = 40, .block_size = 5};
  RunAttentionCase(cpu_.get(), backend_.get(), rng_, {1, 300, 45, 1030}, {1, 1, 7, 1}, 6, layout);
}

TEST_P(BackendConsistencyTest, PagedAttentionLargeBatch) {
  // Enough (row, head) pairs that no context is split; head_dim 128, MHA.
  const KvLayout layout{.num_layers = 1, .num_kv_heads = 8, .head_dim = 128, .block_size = 16};
  std::vector<int32_t> contexts;
  std::vector<int32_t> queries;
  std::uniform_int_distribution<int32_t> ctx(1, 600);
  for (int i = 0; i < 40; ++i) {
    contexts.push_back(ctx(rng_));
    queries.push_back(1);
  }
  contexts.push_back(333);  // plus one prefill chunk of 77 rows over a 256-token prefix
  queries.push_back(77);
  RunAttentionCase(cpu_.get(), backend_.get(), rng_, contexts, queries, 8, layout);
}

TEST_P(BackendConsistencyTest, PagedAttentionMaxHeadDim) {
  const KvLayout layout{.num_layers = 1, .num_kv_heads = 1, .head_dim = 256, .block_size = 16};
  RunAttentionCase(cpu_.get(), backend_.get(), rng_, {700, 19}, {1, 19}, 4, layout);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConsistencyTest,
                         ::testing::Values(Case{.device = "cuda"}, Case{.device = "cuda", .fp32 = true}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.device + (info.param.fp32 ? "_fp32" : "_bf16");
                         });

}  // namespace
}  // namespace tandem::kernels
