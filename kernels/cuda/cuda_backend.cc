// Host side of the CUDA backend (see cuda_backend.h): memory, weight
// conversion, cuBLAS GEMMs, per-op metadata uploads and kernel launches
// (cuda_kernels.cu). Compiled by the host compiler against the CUDA runtime,
// which is linked statically, so this file costs nothing on machines without
// a GPU until CreateCudaBackend is called.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "kernels/cuda/cublas_loader.h"
#include "kernels/cuda/cuda_kernels.h"

namespace tandem::kernels {
namespace {

using cuda::AttentionItem;
using cuda::AttentionRow;
using cuda::DeviceDType;
using cuda::DeviceKvLayout;

absl::Status CudaError(cudaError_t err, std::string_view what) {
  return absl::InternalError(
      absl::StrFormat("cuda: %s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err)));
}

// Positions per attention work item when a step has too few (row, head)
// pairs to fill the GPU (decode with small batches): long contexts are split
// and the partials merged by a second kernel.
constexpr int32_t kSplitTokens = 256;
// Bytes of the metadata ring (see Upload); grows if one op needs more.
constexpr size_t kInitialRingBytes = size_t{4} << 20;
constexpr size_t kUploadAlign = 256;

// Host row r of `w` as F32 (common/dtype.h, as the CPU backend).
void DequantizeRow(const Weight& w, int64_t r, float* out) {
  ::tandem::DequantizeRow(w.dtype, static_cast<const uint8_t*>(w.data) + DTypeBytes(w.dtype, w.cols) * r,
                          w.cols, out);
}

// A copy queue on its own non-blocking CUDA stream (Backend::CreateCopyStream).
// Errors are the stream's own (sticky); a caller that sees one fails its
// transfer and the worker reports the backend unhealthy through status().
class CudaCopyStream final : public CopyStream {
 public:
  CudaCopyStream(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  ~CudaCopyStream() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  void ToHost(const void* src, size_t bytes, void* host_dst) override {
    Enqueue(host_dst, src, bytes, cudaMemcpyDeviceToHost, "D2H (copy stream)");
  }
  void FromHost(const void* host_src, size_t bytes, void* dst) override {
    Enqueue(dst, host_src, bytes, cudaMemcpyHostToDevice, "H2D (copy stream)");
  }
  absl::Status Synchronize(absl::Time deadline) override {
    if (!status_.ok()) return status_;
    cudaSetDevice(device_);
    // cudaStreamSynchronize has no deadline; poll the stream instead. Copies
    // of a few MB finish in well under a millisecond, so the poll is short.
    while (true) {
      const cudaError_t err = cudaStreamQuery(stream_);
      if (err == cudaSuccess) return status_;
      if (err != cudaErrorNotReady) {
        status_ = CudaError(err, "copy stream");
        return status_;
      }
      if (absl::Now() >= deadline)
        return absl::DeadlineExceededError("device copies still running at the deadline");
      absl::SleepFor(absl::Microseconds(20));
    }
  }

 private:
  void Enqueue(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, std::string_view what) {
    if (!status_.ok()) return;
    cudaSetDevice(device_);
    const cudaError_t err = cudaMemcpyAsync(dst, src, bytes, kind, stream_);
    if (err != cudaSuccess) status_ = CudaError(err, what);
  }

  const int device_;
  const cudaStream_t stream_;
  absl::Status status_;
};

// A device buffer that only grows.
struct Scratch {
  void* ptr = nullptr;
  size_t bytes = 0;
};

class CudaBackendImpl final : public CudaBackend {
 public:
  CudaBackendImpl(const CudaBackendOptions& options, const cuda::CublasApi* blas)
      : options_(options), blas_(blas) {}

  ~CudaBackendImpl() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (void* p : weights_) cudaFree(p);
    for (Scratch* s : {&act_bf16_, &partial_acc_, &partial_ml_}) {
      if (s->ptr != nullptr) cudaFree(s->ptr);
    }
    if (ring_dev_ != nullptr) cudaFree(ring_dev_);
    if (ring_host_ != nullptr) cudaFreeHost(ring_host_);
    if (handle_ != nullptr) blas_->destroy(handle_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    TANDEM_RETURN_IF_ERROR(Check(cudaSetDevice(options_.device), "cudaSetDevice"));
    cudaDeviceProp prop;
    TANDEM_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, options_.device), "cudaGetDeviceProperties"));
    device_name_ = prop.name;
    sm_count_ = prop.multiProcessorCount;
    TANDEM_RETURN_IF_ERROR(
        Check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    TANDEM_RETURN_IF_ERROR(CheckBlas(blas_->create(&handle_), "cublasCreate"));
    TANDEM_RETURN_IF_ERROR(CheckBlas(blas_->set_stream(handle_, stream_), "cublasSetStream"));
    // Default math: FP32 GEMMs stay FP32 (no TF32); BF16 GEMMs use tensor cores.
    TANDEM_RETURN_IF_ERROR(
        CheckBlas(blas_->set_math_mode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
    TANDEM_RETURN_IF_ERROR(GrowRing(kInitialRingBytes));
    return status_;
  }

  std::string_view name() const override { return "cuda"; }
  bool SupportsWeightType(DType) const override { return true; }  // all converted at PrepareWeight
  absl::Status status() const override { return status_; }
  std::string device_name() const override { return device_name_; }

  absl::Status Synchronize() override {
    if (status_.ok() && Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize").ok()) ring_used_ = 0;
    return status_;
  }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    TANDEM_RETURN_IF_ERROR(status_);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // an allocation failure is not sticky: clear it
      return absl::ResourceExhaustedError(absl::StrFormat("cuda backend: cannot allocate %d bytes", bytes));
    }
    TANDEM_RETURN_IF_ERROR(Check(err, "cudaMalloc"));
    if (!Check(cudaMemsetAsync(p, 0, bytes, stream_), "cudaMemsetAsync").ok()) {
      cudaFree(p);
      return status_;
    }
    return p;
  }

  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    cudaStreamSynchronize(stream_);  // queued ops may still read it
    cudaFree(ptr);
  }

  void CopyToHost(const void* src, size_t bytes, void* host_dst) override {
    if (status_.ok() &&
        Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "D2H").ok() &&
        Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize").ok()) {
      ring_used_ = 0;  // the stream is idle: every uploaded metadata block is consumed
      return;
    }
    std::memset(host_dst, 0xff, bytes);  // all-ones floats are NaN: a failed step reads as garbage
  }

  void CopyFromHost(const void* host_src, size_t bytes, void* dst) override {
    if (!status_.ok()) return;
    if (Check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "H2D").ok()) {
      (void)Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // host_src may go away
    }
  }

  void Copy(const void* src, size_t bytes, void* dst) override {
    if (!status_.ok()) return;
    (void)Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "D2D");
  }

  bool host_accessible() const override { return false; }

  absl::StatusOr<std::unique_ptr<CopyStream>> CreateCopyStream() override {
    TANDEM_RETURN_IF_ERROR(status_);
    cudaSetDevice(options_.device);
    cudaStream_t stream = nullptr;
    TANDEM_RETURN_IF_ERROR(
        Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    return std::unique_ptr<CopyStream>(std::make_unique<CudaCopyStream>(options_.device, stream));
  }

  absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) override {
    cudaSetDevice(options_.device);
    void* p = nullptr;
    // Portable: any device's copies may use it. Not a sticky error when it
    // fails: pinned memory is a host resource that can run out.
    const cudaError_t err = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocPortable);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrFormat("cuda backend: cannot pin %d host bytes: %s", bytes, cudaGetErrorString(err)));
    }
    std::memset(p, 0, bytes);
    return p;
  }
  void FreePinnedHost(void* ptr) override {
    if (ptr != nullptr) cudaFreeHost(ptr);
  }

  absl::StatusOr<Weight> PrepareWeight(const Weight& host) override {
    TANDEM_RETURN_IF_ERROR(status_);
    if (host.rows < 1 || host.cols < 1 || host.data == nullptr) {
      return absl::InvalidArgumentError("cuda backend: empty weight");
    }
    if (host.dtype == DType::kQ8_0 && host.cols % kQ8_0BlockElements != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cuda backend: Q8_0 weight row of %d elements is not a multiple of 32", host.cols));
    }
    // Vectors (norm weights, biases) stay F32: ops read them as float*.
    const DType target = (host.rows == 1 || options_.fp32_weights) ? DType::kF32 : DType::kBF16;
    const size_t elements = static_cast<size_t>(host.rows) * host.cols;
    const size_t bytes = DTypeBytes(target, elements);
    std::vector<uint8_t> converted;
    const void* src = host.data;
    if (host.dtype != target) {
      converted.resize(bytes);
      std::vector<float> row(host.cols);
      for (int64_t r = 0; r < host.rows; ++r) {
        DequantizeRow(host, r, row.data());
        if (target == DType::kF32) {
          std::memcpy(converted.data() + r * host.cols * sizeof(float), row.data(),
                      host.cols * sizeof(float));
        } else {
          uint16_t* out = reinterpret_cast<uint16_t*>(converted.data()) + r * host.cols;
          for (int64_t i = 0; i < host.cols; ++i) out[i] = FloatToBF16(row[i]);
        }
      }
      src = converted.data();
    }
    void* dev = nullptr;
    const cudaError_t err = cudaMalloc(&dev, bytes);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrFormat("cuda backend: no device memory for a %d x %d weight", host.rows, host.cols));
    }
    TANDEM_RETURN_IF_ERROR(Check(err, "cudaMalloc (weight)"));
    weights_.push_back(dev);
    TANDEM_RETURN_IF_ERROR(Check(cudaMemcpy(dev, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (weight)"));
    return Weight{.data = dev, .dtype = target, .rows = host.rows, .cols = host.cols};
  }

  void Embed(const Weight& table, absl::Span<const int32_t> ids, float* out) override {
    if (!status_.ok() || ids.empty()) return;
    if (table.dtype != DType::kF32 && table.dtype != DType::kBF16) {
      return Fail(absl::InvalidArgumentError("cuda backend: Embed needs a table from PrepareWeight"));
    }
    const int32_t* d_ids = Upload(ids);
    if (d_ids == nullptr) return;
    (void)Check(
        cuda::LaunchEmbed(table.data, table.dtype == DType::kBF16 ? DeviceDType::kBF16 : DeviceDType::kF32,
                          table.rows, table.cols, d_ids, static_cast<int64_t>(ids.size()), out, stream_),
        "Embed");
  }

  void RmsNorm(const float* x, int64_t rows, const Weight& weight, float eps, float* out) override {
    if (!status_.ok() || rows <= 0) return;
    if (weight.dtype != DType::kF32) {
      return Fail(absl::InvalidArgumentError("cuda backend: RmsNorm needs an F32 weight from PrepareWeight"));
    }
    (void)Check(
        cuda::LaunchRmsNorm(x, rows, static_cast<const float*>(weight.data), weight.cols, eps, out, stream_),
        "RmsNorm");
  }

  void MatMul(const float* x, int64_t rows, const Weight& w, float* out) override {
    if (!status_.ok() || rows <= 0) return;
    if (rows > INT_MAX || w.rows > INT_MAX || w.cols > INT_MAX) {
      return Fail(absl::InvalidArgumentError("cuda backend: MatMul dimension exceeds INT_MAX"));
    }
    const int m = static_cast<int>(w.rows);  // output columns
    const int n = static_cast<int>(rows);
    const int k = static_cast<int>(w.cols);
    const float alpha = 1.0f;
    const float beta = 0.0f;
    // Row-major out[rows][N] = x[rows][K] * W[N][K]^T is, in cuBLAS's
    // column-major terms, out^T (N x rows, ld N) = op_T(W as K x N, ld K) *
    // x^T (K x rows, ld K).
    const void* b = x;
    cudaDataType type = CUDA_R_32F;
    if (w.dtype == DType::kBF16) {
      const size_t elements = static_cast<size_t>(rows) * k;
      if (!EnsureScratch(&act_bf16_, elements * sizeof(uint16_t))) return;
      if (!Check(cuda::LaunchFloatToBF16(x, static_cast<int64_t>(elements),
                                         static_cast<uint16_t*>(act_bf16_.ptr), stream_),
                 "FloatToBF16")
               .ok()) {
        return;
      }
      b = act_bf16_.ptr;
      type = CUDA_R_16BF;
    } else if (w.dtype != DType::kF32) {
      return Fail(absl::InvalidArgumentError("cuda backend: MatMul needs a weight from PrepareWeight"));
    }
    (void)CheckBlas(
        blas_->gemm_ex(handle_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, type, k, b, type, k, &beta,
                       out, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
  }

  void Rope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
            absl::Span<const int32_t> positions, float freq_base, RopeStyle style) override {
    if (!status_.ok() || rows <= 0) return;
    if (rope_dims <= 0 || rope_dims % 2 != 0 || rope_dims > head_dim ||
        positions.size() < static_cast<size_t>(rows)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("cuda backend: Rope with rope_dims %d, head_dim %d, %d positions for %d rows",
                          rope_dims, head_dim, positions.size(), rows)));
    }
    const int32_t* d_pos = Upload(positions.subspan(0, rows));
    if (d_pos == nullptr) return;
    // The CPU reference's expression, evaluated on the host: same bits.
    const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(rope_dims));
    (void)Check(cuda::LaunchRope(x, rows, num_heads, head_dim, rope_dims, d_pos, theta_scale,
                                 style == RopeStyle::kNeox, stream_),
                "Rope");
  }

  void WriteKv(const KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) override {
    if (!status_.ok() || slots.empty()) return;
    const int32_t* d_slots = Upload(slots);
    if (d_slots == nullptr) return;
    (void)Check(cuda::LaunchWriteKv(DeviceLayout(kv), layer, k, v, d_slots,
                                    static_cast<int64_t>(slots.size()), stream_),
                "WriteKv");
  }

  void PagedAttention(const float* q, const KvCacheView& kv, int32_t layer, int32_t num_heads,
                      absl::Span<const AttentionSequence> seqs, float scale, float* out) override {
    if (!status_.ok() || seqs.empty()) return;
    const KvLayout& l = kv.layout;
    if (l.head_dim < 1 || l.head_dim > cuda::kMaxAttentionHeadDim || l.num_kv_heads < 1 ||
        num_heads % l.num_kv_heads != 0) {
      return Fail(absl::InvalidArgumentError(
          absl::StrFormat("cuda backend: attention with head_dim %d (max %d), %d heads over %d KV heads",
                          l.head_dim, cuda::kMaxAttentionHeadDim, num_heads, l.num_kv_heads)));
    }
    int64_t total_rows = 0;
    for (const AttentionSequence& s : seqs) total_rows += s.num_queries;
    // Split long contexts only when the step alone cannot fill the GPU.
    const bool split = total_rows * num_heads < 2 * int64_t{sm_count_};
    std::vector<AttentionRow> rows;
    std::vector<AttentionItem> items;
    std::vector<int32_t> tables;
    bool any_split = false;
    for (const AttentionSequence& s : seqs) {
      const int64_t blocks = (int64_t{s.context_len} + l.block_size - 1) / l.block_size;
      if (s.num_queries < 1 || s.context_len < s.num_queries ||
          static_cast<int64_t>(s.block_table.size()) < blocks) {
        return Fail(absl::InvalidArgumentError("cuda backend: malformed attention sequence"));
      }
      const int32_t table_offset = static_cast<int32_t>(tables.size());
      for (int64_t b = 0; b < blocks; ++b) {
        if (s.block_table[b] < 0 || s.block_table[b] >= kv.num_blocks) {
          return Fail(absl::InvalidArgumentError("cuda backend: block id out of range"));
        }
        tables.push_back(s.block_table[b]);
      }
      for (int32_t j = 0; j < s.num_queries; ++j) {
        AttentionRow r;
        r.row = s.query_start + j;
        r.n_ctx = s.context_len - s.num_queries + j + 1;  // causal: positions [0, own position]
        r.table_offset = table_offset;
        r.item_begin = static_cast<int32_t>(items.size());
        r.num_splits = split ? (r.n_ctx + kSplitTokens - 1) / kSplitTokens : 1;
        any_split = any_split || r.num_splits > 1;
        for (int32_t p = 0; p < r.num_splits; ++p) {
          items.push_back(AttentionItem{.row_index = static_cast<int32_t>(rows.size()), .split = p});
        }
        rows.push_back(r);
      }
    }
    float* partial_acc = nullptr;
    float* partial_ml = nullptr;
    if (any_split) {
      const size_t slots = items.size() * static_cast<size_t>(num_heads);
      if (!EnsureScratch(&partial_acc_, slots * l.head_dim * sizeof(float)) ||
          !EnsureScratch(&partial_ml_, slots * 2 * sizeof(float))) {
        return;
      }
      partial_acc = static_cast<float*>(partial_acc_.ptr);
      partial_ml = static_cast<float*>(partial_ml_.ptr);
    }
    const AttentionRow* d_rows = Upload(absl::MakeConstSpan(rows));
    const AttentionItem* d_items = Upload(absl::MakeConstSpan(items));
    const int32_t* d_tables = Upload(absl::MakeConstSpan(tables));
    if (d_rows == nullptr || d_items == nullptr || d_tables == nullptr) return;
    (void)Check(cuda::LaunchPagedAttention(
                    q, DeviceLayout(kv), layer, num_heads, d_rows, static_cast<int32_t>(rows.size()), d_items,
                    static_cast<int32_t>(items.size()), any_split, d_tables, split ? kSplitTokens : INT_MAX,
                    scale, partial_acc, partial_ml, out, stream_),
                "PagedAttention");
  }

  void SwiGlu(const float* gate, const float* up, int64_t n, float* out) override {
    if (!status_.ok()) return;
    (void)Check(cuda::LaunchSwiGlu(gate, up, n, out, stream_), "SwiGlu");
  }

  void Add(float* x, const float* y, int64_t n) override {
    if (!status_.ok()) return;
    (void)Check(cuda::LaunchAdd(x, y, n, stream_), "Add");
  }

 private:
  static DeviceKvLayout DeviceLayout(const KvCacheView& kv) {
    DeviceKvLayout d;
    d.base = kv.base;
    d.dtype = kv.layout.dtype == DType::kBF16  ? cuda::DeviceKvDType::kBF16
              : kv.layout.dtype == DType::kF16 ? cuda::DeviceKvDType::kF16
                                               : cuda::DeviceKvDType::kF32;
    d.block_elements = kv.layout.BlockElements();
    d.layer_stride = kv.layout.LayerStride();
    d.plane_stride = kv.layout.PlaneStride();
    d.token_stride = kv.layout.TokenStride();
    d.block_size = kv.layout.block_size;
    d.num_blocks = kv.num_blocks;
    d.num_kv_heads = kv.layout.num_kv_heads;
    d.head_dim = kv.layout.head_dim;
    return d;
  }

  // Records the first error; returns it (OK on success).
  absl::Status Check(cudaError_t err, std::string_view what) {
    if (err != cudaSuccess && status_.ok()) status_ = CudaError(err, what);
    return status_;
  }
  absl::Status CheckBlas(cublasStatus_t st, std::string_view what) {
    if (st != CUBLAS_STATUS_SUCCESS && status_.ok()) {
      status_ = absl::InternalError(absl::StrFormat("cublas: %s: %s", what, blas_->status_string(st)));
    }
    return status_;
  }
  void Fail(absl::Status s) {
    if (status_.ok()) status_ = std::move(s);
  }

  // Grows `s` to at least `bytes` (waiting for queued ops that may use the
  // old buffer). False (error recorded) on failure.
  bool EnsureScratch(Scratch* s, size_t bytes) {
    if (s->bytes >= bytes) return true;
    if (!Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize").ok()) return false;
    const size_t want = std::max(bytes, s->bytes * 2);  // amortise growth
    if (s->ptr != nullptr) cudaFree(s->ptr);
    s->ptr = nullptr;
    s->bytes = 0;
    if (!Check(cudaMalloc(&s->ptr, want), "cudaMalloc (scratch)").ok()) return false;
    s->bytes = want;
    return true;
  }

  absl::Status GrowRing(size_t bytes) {
    if (ring_host_ != nullptr) {
      TANDEM_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"));
      cudaFreeHost(ring_host_);
      cudaFree(ring_dev_);
      ring_host_ = nullptr;
      ring_dev_ = nullptr;
      ring_bytes_ = 0;
    }
    TANDEM_RETURN_IF_ERROR(Check(cudaMallocHost(&ring_host_, bytes), "cudaMallocHost (metadata ring)"));
    TANDEM_RETURN_IF_ERROR(Check(cudaMalloc(&ring_dev_, bytes), "cudaMalloc (metadata ring)"));
    ring_bytes_ = bytes;
    ring_used_ = 0;
    return absl::OkStatus();
  }

  // Copies a host array (block tables, positions, slots) to device memory
  // for the ops queued next. Each upload gets its own region of a pinned
  // ring mirrored on the device; regions are reused only after the stream
  // has drained (CopyToHost, Synchronize, or here when the ring is full),
  // so a queued kernel never sees its metadata overwritten. Null on error.
  template <typename T>
  const T* Upload(absl::Span<const T> host) {
    const size_t bytes = host.size() * sizeof(T);
    const size_t padded = (bytes + kUploadAlign - 1) / kUploadAlign * kUploadAlign;
    if (ring_used_ + padded > ring_bytes_) {
      if (padded > ring_bytes_) {
        if (!GrowRing(std::max(padded, 2 * ring_bytes_)).ok()) return nullptr;
      } else {
        if (!Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize").ok()) return nullptr;
        ring_used_ = 0;
      }
    }
    uint8_t* h = static_cast<uint8_t*>(ring_host_) + ring_used_;
    uint8_t* d = static_cast<uint8_t*>(ring_dev_) + ring_used_;
    if (bytes > 0) std::memcpy(h, host.data(), bytes);
    if (!Check(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_), "metadata upload").ok())
      return nullptr;
    ring_used_ += padded;
    return reinterpret_cast<const T*>(d);
  }

  const CudaBackendOptions options_;
  const cuda::CublasApi* const blas_;  // process-lifetime
  absl::Status status_;
  std::string device_name_;
  int sm_count_ = 1;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  std::vector<void*> weights_;  // device copies made by PrepareWeight, freed with the backend
  Scratch act_bf16_;            // MatMul's BF16 copy of its input rows
  Scratch partial_acc_;         // split attention partials
  Scratch partial_ml_;
  void* ring_host_ = nullptr;  // pinned
  void* ring_dev_ = nullptr;
  size_t ring_bytes_ = 0;
  size_t ring_used_ = 0;
};

absl::Status NoDevice(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrFormat("no CUDA device: %s (%s)", cudaGetErrorString(err), cudaGetErrorName(err)));
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrFormat("no CUDA device %d (%d device%s present)", device, count, count == 1 ? "" : "s"));
  }
  return absl::OkStatus();
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const CudaBackendOptions& options) {
  TANDEM_RETURN_IF_ERROR(NoDevice(options.device));
  TANDEM_ASSIGN_OR_RETURN(const cuda::CublasApi* blas, cuda::LoadCublas());
  auto backend = std::make_unique<CudaBackendImpl>(options, blas);
  TANDEM_RETURN_IF_ERROR(backend->Init());
  return backend;
}

absl::StatusOr<double> MeasureCopyBandwidth(int device, size_t bytes, int iters) {
  TANDEM_RETURN_IF_ERROR(NoDevice(device));
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return CudaError(e, "cudaSetDevice");
  void* a = nullptr;
  void* b = nullptr;
  if (cudaError_t e = cudaMalloc(&a, bytes); e != cudaSuccess) return CudaError(e, "cudaMalloc");
  if (cudaError_t e = cudaMalloc(&b, bytes); e != cudaSuccess) {
    cudaFree(a);
    return CudaError(e, "cudaMalloc");
  }
  double best = 0;
  cudaError_t err = cudaMemset(a, 1, bytes);
  for (int i = 0; err == cudaSuccess && i < iters + 1; ++i) {
    const auto start = std::chrono::steady_clock::now();
    err = cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0 && s > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / s);  // i = 0 warms up
  }
  cudaFree(a);
  cudaFree(b);
  if (err != cudaSuccess) return CudaError(err, "device copy");
  return best;
}

absl::StatusOr<double> MeasureGemmRate(int device, int64_t m, int64_t n, int64_t k, int iters) {
  TANDEM_RETURN_IF_ERROR(NoDevice(device));
  TANDEM_ASSIGN_OR_RETURN(const cuda::CublasApi* blas, cuda::LoadCublas());
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) return CudaError(e, "cudaSetDevice");
  // Random BF16 operands (zeros run measurably faster on tensor cores).
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint16_t> pattern(size_t{1} << 20);
  for (uint16_t& v : pattern) v = FloatToBF16(dist(rng));
  void* x = nullptr;
  void* w = nullptr;
  void* out = nullptr;
  cublasHandle_t handle = nullptr;
  auto cleanup = [&] {
    if (handle != nullptr) blas->destroy(handle);
    cudaFree(x);
    cudaFree(w);
    cudaFree(out);
  };
  auto fill = [&](void* dst, size_t elements) {
    cudaError_t e = cudaSuccess;
    for (size_t done = 0; e == cudaSuccess && done < elements; done += pattern.size()) {
      const size_t count = std::min(pattern.size(), elements - done);
      e = cudaMemcpy(static_cast<uint16_t*>(dst) + done, pattern.data(), count * 2, cudaMemcpyHostToDevice);
    }
    return e;
  };
  cudaError_t err = cudaMalloc(&x, m * k * 2);
  if (err == cudaSuccess) err = cudaMalloc(&w, n * k * 2);
  if (err == cudaSuccess) err = cudaMalloc(&out, m * n * 4);
  if (err == cudaSuccess) err = fill(x, m * k);
  if (err == cudaSuccess) err = fill(w, n * k);
  if (err != cudaSuccess) {
    cleanup();
    return CudaError(err, "gemm operands");
  }
  if (cublasStatus_t st = blas->create(&handle); st != CUBLAS_STATUS_SUCCESS) {
    handle = nullptr;
    cleanup();
    return absl::InternalError(absl::StrFormat("cublasCreate: %s", blas->status_string(st)));
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  double best = 0;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (int i = 0; i < iters + 1 && st == CUBLAS_STATUS_SUCCESS && err == cudaSuccess; ++i) {
    const auto start = std::chrono::steady_clock::now();
    st = blas->gemm_ex(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                       static_cast<int>(k), &alpha, w, CUDA_R_16BF, static_cast<int>(k), x, CUDA_R_16BF,
                       static_cast<int>(k), &beta, out, CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT);
    err = cudaDeviceSynchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0 && s > 0) best = std::max(best, 2.0 * m * n * k / s);
  }
  cleanup();
  if (st != CUBLAS_STATUS_SUCCESS)
    return absl::InternalError(absl::StrFormat("cublasGemmEx: %s", blas->status_string(st)));
  if (err != cudaSuccess) return CudaError(err, "gemm");
  return best;
}

}  // namespace tandem::kernels
