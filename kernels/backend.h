// The kernel interface: every operation the model needs, implemented once per
// backend (cpu/, and cuda/ built in every build and chosen at run time when a
// GPU exists; it has not yet run on one). Model code is written against this class and
// never #ifdefs on a backend; it asks a backend what it supports at run time.
//
//   std::unique_ptr<Backend> cpu = CreateCpuBackend({.num_threads = 0});
//   TANDEM_ASSIGN_OR_RETURN(Weight w, cpu->PrepareWeight(host_view));
//   cpu->MatMul(x, rows, w, out);
//
// Memory: pointers passed to the ops are in the backend's memory (host memory
// for the CPU backend, device memory for CUDA). Allocate/CopyToHost/CopyFromHost
// move data across that boundary on the compute thread; a CopyStream moves it
// from any other thread while the compute thread runs ops. Where
// host_accessible() is false (CUDA, and the CPU backend's guarded mode, whose
// memory is mapped PROT_NONE outside backend calls so a stray host access
// crashes), nothing outside the backend may dereference backend memory: KV
// leaves and enters it through pinned host staging (AllocatePinnedHost).
//
// Determinism: every op computes each output element with a reduction order
// that depends only on that element's inputs, never on the batch size, the
// thread count or the other rows. A sequence therefore gets bit-identical
// results whether it runs alone or in any batch (batch invariance).
//
// Thread safety: a backend is driven by one thread (the engine thread that owns
// it); ops are not safe to call concurrently.
#ifndef TANDEM_KERNELS_BACKEND_H_
#define TANDEM_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "kernels/kv_layout.h"

namespace tandem::kernels {

// A weight matrix of `rows` x `cols` elements (row-major; each row holds `cols`
// contiguous elements), or a vector when rows == 1.
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// How RoPE pairs dimensions. kNormal rotates (x[2i], x[2i+1]) (llama.cpp's
// LLAMA_ROPE_TYPE_NORM, GGUF llama models); kNeox rotates (x[i], x[i + d/2])
// (Hugging Face checkpoints that were not permuted).
enum class RopeStyle { kNormal, kNeox };

// One sequence's part of a batched step.
struct AttentionSequence {
  int32_t query_start = 0;  // first row of this sequence in the step's token rows
  int32_t num_queries = 0;  // rows of this sequence in this step
  // Tokens in this sequence's KV after this step's KV writes. Query row j
  // (0-based within the sequence) sits at position context_len - num_queries + j
  // and attends to positions [0, its position] (causal).
  int32_t context_len = 0;
  // Block ids covering positions [0, context_len), in order.
  absl::Span<const int32_t> block_table;
};

// A queue of copies between backend memory and host memory, apart from the
// compute ops (CUDA: its own stream, so copies overlap kernels; CPU: done at
// once). Copies run in the order queued. Both sides must stay valid, and the
// source unchanged, until Synchronize returns. The caller keeps backend memory
// it copies out of or into away from concurrent ops (e.g. blocks it holds).
//
// Thread safety: one stream is used by one thread at a time; different
// streams and the compute thread's ops may run at once.
class CopyStream {
 public:
  virtual ~CopyStream() = default;
  virtual void ToHost(const void* src, size_t bytes, void* host_dst) = 0;
  virtual void FromHost(const void* host_src, size_t bytes, void* dst) = 0;
  // Waits until every queued copy is done. The first failed copy's error
  // (sticky for the stream); DeadlineExceeded if they are not done by then
  // (the copies stay queued: call again before touching their memory).
  virtual absl::Status Synchronize(absl::Time deadline) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  // Whether MatMul/Embed accept weights of this type.
  virtual bool SupportsWeightType(DType type) const = 0;

  // Backend memory. Allocate returns zeroed memory; ResourceExhausted when it
  // does not fit.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void CopyToHost(const void* src, size_t bytes, void* host_dst) = 0;
  virtual void CopyFromHost(const void* host_src, size_t bytes, void* dst) = 0;
  // Copy within backend memory.
  virtual void Copy(const void* src, size_t bytes, void* dst) = 0;

  // Whether code outside the backend may dereference backend memory (the
  // plain CPU backend: it is ordinary host memory). When false, only backend
  // calls touch it (see "Memory" above).
  virtual bool host_accessible() const = 0;
  // A new copy queue (see CopyStream). Any thread.
  virtual absl::StatusOr<std::unique_ptr<CopyStream>> CreateCopyStream() = 0;
  // Zeroed host memory that copy streams move to and from at full speed and
  // UCX can register: page-locked on CUDA (cudaHostAlloc), ordinary memory on
  // the CPU. Any thread. ResourceExhausted when it cannot be had.
  virtual absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) = 0;
  virtual void FreePinnedHost(void* ptr) = 0;
  // The first error an op hit (a device fault), OK if none: sticky, so a
  // caller that checks it once per step learns of any failure in the step.
  virtual absl::Status status() const { return absl::OkStatus(); }

  // Brackets a run of ops (a forward pass; OpsScope below). The guarded CPU
  // mode opens its memory once for the run instead of around every op (each
  // opening is an mprotect of every buffer: per op it made decode 30x
  // slower); other backends ignore it. Nested runs count. Code between the
  // ops of a run (the model's own) is then unguarded: the guarded mode's
  // guard_each_op option keeps per-op windows to check it too.
  virtual void BeginOps() {}
  virtual void EndOps() {}

  // Makes a host-resident weight usable by this backend. The CPU backend uses
  // the host memory in place (the result borrows `host`, e.g. an mmap);
  // a device backend copies (and may convert). The result lives until the
  // backend is destroyed.
  virtual absl::StatusOr<Weight> PrepareWeight(const Weight& host) = 0;

  // out[r][:] = row ids[r] of `table` (rows = vocabulary), as F32.
  virtual void Embed(const Weight& table, absl::Span<const int32_t> ids, float* out) = 0;

  // out[r][:] = x[r][:] / sqrt(mean(x[r]^2) + eps) * weight, for `rows` rows of
  // `weight.cols` elements. out may equal x.
  virtual void RmsNorm(const float* x, int64_t rows, const Weight& weight, float eps, float* out) = 0;

  // out[r][o] = sum_i x[r][i] * w[o][i]: x is rows x w.cols, out rows x w.rows.
  virtual void MatMul(const float* x, int64_t rows, const Weight& w, float* out) = 0;

  // Rotates the first `rope_dims` of each head of x ([rows][num_heads][head_dim])
  // in place by position: theta_i = pos * freq_base^(-2i / rope_dims).
  virtual void Rope(float* x, int64_t rows, int32_t num_heads, int32_t head_dim, int32_t rope_dims,
                    absl::Span<const int32_t> positions, float freq_base, RopeStyle style) = 0;

  // Optional (asked at run time, as ggml's ggml_rope_ext with freq_factors):
  // Rope with a per-pair divisor, theta_i = pos * freq_base^(-2i / rope_dims)
  // / freq_factors[i], for frequency-scaled RoPE (Llama 3's rope_scaling;
  // llama.cpp's rope_freqs tensor holds the same numbers). Factors of 1 give
  // Rope's result bit for bit. freq_factors is host memory, like positions.
  // Returns false, touching nothing, where the backend lacks the op (the
  // default); a caller may ask with rows = 0.
  // REQUIRES: freq_factors.size() == rope_dims / 2.
  virtual bool RopeWithFreqFactors(float* /*x*/, int64_t /*rows*/, int32_t /*num_heads*/,
                                   int32_t /*head_dim*/, int32_t /*rope_dims*/,
                                   absl::Span<const int32_t> /*positions*/, float /*freq_base*/,
                                   absl::Span<const float> /*freq_factors*/, RopeStyle /*style*/) {
    return false;
  }

  // Writes rows of K and V ([rows][kv_heads][head_dim]) for `layer` into the
  // paged cache at slots[r] = block_id * block_size + offset_in_block.
  virtual void WriteKv(const KvCacheView& kv, int32_t layer, const float* k, const float* v,
                       absl::Span<const int32_t> slots) = 0;

  // Causal attention over the paged cache for every sequence of the step.
  // q: [rows][num_heads][head_dim]; out: same shape. Grouped-query: query head
  // h reads KV head h / (num_heads / kv_heads). REQUIRES: this step's K/V were
  // written with WriteKv first.
  virtual void PagedAttention(const float* q, const KvCacheView& kv, int32_t layer, int32_t num_heads,
                              absl::Span<const AttentionSequence> seqs, float scale, float* out) = 0;

  // out[i] = silu(gate[i]) * up[i] for n elements. out may equal gate.
  virtual void SwiGlu(const float* gate, const float* up, int64_t n, float* out) = 0;

  // x[i] += y[i] for n elements.
  virtual void Add(float* x, const float* y, int64_t n) = 0;
};

struct CpuBackendOptions {
  // Threads for data-parallel ops, the caller included. Default: 0, one per
  // hardware thread.
  int num_threads = 0;
  // Guarded mode only: close the memory after every op, even inside a
  // BeginOps run, so the model's code between ops is checked too (tests of
  // model code; much slower). Default: false.
  bool guard_each_op = false;
  // Guarded mode only: false keeps the device-style behaviour (own
  // mappings, host_accessible() false, copies queued until Synchronize) but
  // never protects the memory, to measure the staged path's own cost
  // without the mprotect cost of enforcing it (bench/staged_transfer_bench).
  // Default: true.
  bool protect = true;
};

// Calls BeginOps/EndOps for its lifetime.
class OpsScope {
 public:
  explicit OpsScope(Backend& backend) : backend_(backend) { backend_.BeginOps(); }
  ~OpsScope() { backend_.EndOps(); }
  OpsScope(const OpsScope&) = delete;
  OpsScope& operator=(const OpsScope&) = delete;

 private:
  Backend& backend_;
};

std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options);

// The CPU backend in guarded mode, the proof that the rest of the process
// treats backend memory as a device's: every Allocate'd buffer is its own
// mapping, PROT_NONE except while a backend call (an op, a copy) runs, so any
// host access from outside the backend faults. host_accessible() is false.
// Ops are bit-identical to CreateCpuBackend's. (Accesses from another thread
// during a backend call are not caught: the mapping is open for that call.)
std::unique_ptr<Backend> CreateGuardedCpuBackend(const CpuBackendOptions& options);

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_BACKEND_H_
