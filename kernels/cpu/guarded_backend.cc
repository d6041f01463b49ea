// The CPU backend in guarded mode (backend.h, CreateGuardedCpuBackend): the
// CPU backend's ops on memory the rest of the process cannot touch.
//
// Every Allocate'd buffer is its own anonymous mapping. While no backend call
// runs, every mapping is PROT_NONE, so a host read or write from outside the
// backend (the engine handing pool bytes to a tier, a transfer reading the
// pool for UCX) dies with SIGSEGV at the faulting line instead of working by
// accident on the CPU and failing on a GPU. Each backend call opens every
// mapping for its duration (a counted window: the compute thread's op and
// another thread's copy stream may overlap); a BeginOps/EndOps run (a forward
// pass) holds one window open for all its ops unless guard_each_op is set.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "kernels/backend.h"

namespace tandem::kernels {
namespace {

class GuardedCpuBackend;

// Opens every guarded mapping for its lifetime.
class Window {
 public:
  explicit Window(GuardedCpuBackend* backend);
  ~Window();
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;

 private:
  GuardedCpuBackend* const backend_;
};

// Copies are queued and done together in Synchronize, inside one window: as
// a device's stream, they are complete only once Synchronize returns (and
// one window per batch, not per block, keeps the mprotect cost down).
class GuardedCopyStream final : public CopyStream {
 public:
  explicit GuardedCopyStream(GuardedCpuBackend* backend) : backend_(backend) {}
  void ToHost(const void* src, size_t bytes, void* host_dst) override {
    queued_.push_back({src, host_dst, bytes});
  }
  void FromHost(const void* host_src, size_t bytes, void* dst) override {
    queued_.push_back({host_src, dst, bytes});
  }
  absl::Status Synchronize(absl::Time) override {
    if (queued_.empty()) return absl::OkStatus();
    Window open(backend_);
    for (const Copy& c : queued_) std::memcpy(c.dst, c.src, c.bytes);
    queued_.clear();
    return absl::OkStatus();
  }

 private:
  struct Copy {
    const void* src;
    void* dst;
    size_t bytes;
  };
  GuardedCpuBackend* const backend_;
  std::vector<Copy> queued_;
};

class GuardedCpuBackend final : public Backend {
 public:
  explicit GuardedCpuBackend(const CpuBackendOptions& options)
      : cpu_(CreateCpuBackend(options)), guard_each_op_(options.guard_each_op), protect_(options.protect) {}
  ~GuardedCpuBackend() override {
    absl::MutexLock lock(&mu_);
    for (const auto& [base, bytes] : mappings_) munmap(base, bytes);
  }

  std::string_view name() const override { return "cpu-guarded"; }
  bool SupportsWeightType(DType type) const override { return cpu_->SupportsWeightType(type); }

  absl::StatusOr<void*> Allocate(size_t bytes) override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t rounded = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    absl::MutexLock lock(&mu_);
    // Fresh anonymous pages are zero, as Allocate promises.
    void* p = mmap(nullptr, rounded, depth_ > 0 || !protect_ ? PROT_READ | PROT_WRITE : PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("cpu-guarded backend: cannot map %d bytes: %s", bytes, std::strerror(errno)));
    }
    mappings_[p] = rounded;
    return p;
  }
  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    absl::MutexLock lock(&mu_);
    auto it = mappings_.find(ptr);
    TANDEM_CHECK(it != mappings_.end(), "cpu-guarded backend: Free of a pointer it did not allocate");
    munmap(it->first, it->second);
    mappings_.erase(it);
  }
  void CopyToHost(const void* src, size_t bytes, void* host_dst) override {
    Window open(this);
    cpu_->CopyToHost(src, bytes, host_dst);
  }
  void CopyFromHost(const void* host_src, size_t bytes, void* dst) override {
    Window open(this);
    cpu_->CopyFromHost(host_src, bytes, dst);
  }
  void Copy(const void* src, size_t bytes, void* dst) override {
    Window open(this);
    cpu_->Copy(src, bytes, dst);
  }

  bool host_accessible() const override { return false; }
  absl::StatusOr<std::unique_ptr<CopyStream>> CreateCopyStream() override {
    return std::unique_ptr<CopyStream>(std::make_unique<GuardedCopyStream>(this));
  }
  absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) override { return cpu_->AllocatePinnedHost(bytes); }
  void FreePinnedHost(void* ptr) override { cpu_->FreePinnedHost(ptr); }

  // Weights are the model's host memory (an mmap'd file), borrowed as the
  // CPU backend does; a device backend copies them in.
  absl::StatusOr<Weight> PrepareWeight(const Weight& host) override { return cpu_->PrepareWeight(host); }

  void Embed(const Weight& table, absl::Span<const int32_t> ids, float* out) override {
    Window open(this);
    cpu_->Embed(table, ids, out);
  }
  void RmsNorm(const float* x, int64_t rows, const Weight& weight, float eps, float* out) override {
    Window open(this);
    cpu_->RmsNorm(x, rows, weight, eps, out);
  }
  void MatMul(const float* x, int64_t rows, const Weight& w, float* out) override {
    Window open(this);
    cpu_->MatMul(x, rows, w, out);
  }
  void Rope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
            absl::Span<const int32_t> positions, float freq_base, RopeStyle style) override {
    Window open(this);
    cpu_->Rope(x, rows, num_heads, head_dim, rope_dims, positions, freq_base, style);
  }
  bool RopeWithFreqFactors(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                           absl::Span<const int32_t> positions, float freq_base,
                           absl::Span<const float> freq_factors, RopeStyle style) override {
    Window open(this);
    return cpu_->RopeWithFreqFactors(x, rows, num_heads, head_dim, rope_dims, positions, freq_base,
                                     freq_factors, style);
  }
  void WriteKv(const KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) override {
    Window open(this);
    cpu_->WriteKv(kv, layer, k, v, slots);
  }
  void PagedAttention(const float* q, const KvCacheView& kv, int32_t layer, int32_t num_heads,
                      absl::Span<const AttentionSequence> seqs, float scale, float* out) override {
    Window open(this);
    cpu_->PagedAttention(q, kv, layer, num_heads, seqs, scale, out);
  }
  void SwiGlu(const float* gate, const float* up, int64_t n, float* out) override {
    Window open(this);
    cpu_->SwiGlu(gate, up, n, out);
  }
  void Add(float* x, const float* y, int64_t n) override {
    Window open(this);
    cpu_->Add(x, y, n);
  }

  void BeginOps() override {
    if (!guard_each_op_) OpenWindow();
  }
  void EndOps() override {
    if (!guard_each_op_) CloseWindow();
  }

  void OpenWindow() {
    absl::MutexLock lock(&mu_);
    if (depth_++ == 0) ProtectAllLocked(PROT_READ | PROT_WRITE);
  }
  void CloseWindow() {
    absl::MutexLock lock(&mu_);
    if (--depth_ == 0) ProtectAllLocked(PROT_NONE);
  }

 private:
  void ProtectAllLocked(int protection) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!protect_) return;
    for (const auto& [base, bytes] : mappings_) {
      TANDEM_CHECK(mprotect(base, bytes, protection) == 0,
                   "cpu-guarded backend: mprotect failed: ", std::strerror(errno));
    }
  }

  const std::unique_ptr<Backend> cpu_;
  const bool guard_each_op_;
  const bool protect_;
  absl::Mutex mu_;
  absl::flat_hash_map<void*, size_t> mappings_ ABSL_GUARDED_BY(mu_);
  int depth_ ABSL_GUARDED_BY(mu_) = 0;  // backend calls now running
};

Window::Window(GuardedCpuBackend* backend) : backend_(backend) { backend_->OpenWindow(); }
Window::~Window() { backend_->CloseWindow(); }

}  // namespace

std::unique_ptr<Backend> CreateGuardedCpuBackend(const CpuBackendOptions& options) {
  return std::make_unique<GuardedCpuBackend>(options);
}

}  // namespace tandem::kernels
