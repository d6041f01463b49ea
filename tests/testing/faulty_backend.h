// A Backend that forwards to another and can be made to fail as a device
// does: after Fail(status), status() returns that error forever (sticky) and
// ops become no-ops, like the CUDA backend after a fault.
#ifndef TANDEM_TESTS_TESTING_FAULTY_BACKEND_H_
#define TANDEM_TESTS_TESTING_FAULTY_BACKEND_H_

#include <atomic>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "kernels/backend.h"

namespace tandem::testing {

class FaultyBackend final : public kernels::Backend {
 public:
  explicit FaultyBackend(std::unique_ptr<kernels::Backend> inner) : inner_(std::move(inner)) {}

  void Fail(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(status);
    failed_ = true;
  }

  std::string_view name() const override { return "faulty"; }
  bool SupportsWeightType(DType t) const override { return inner_->SupportsWeightType(t); }
  absl::StatusOr<void*> Allocate(size_t bytes) override { return inner_->Allocate(bytes); }
  void Free(void* p) override { inner_->Free(p); }
  void CopyToHost(const void* src, size_t bytes, void* dst) override { inner_->CopyToHost(src, bytes, dst); }
  void CopyFromHost(const void* src, size_t bytes, void* dst) override {
    if (!failed_) inner_->CopyFromHost(src, bytes, dst);
  }
  void Copy(const void* src, size_t bytes, void* dst) override {
    if (!failed_) inner_->Copy(src, bytes, dst);
  }
  bool host_accessible() const override { return inner_->host_accessible(); }
  absl::StatusOr<std::unique_ptr<kernels::CopyStream>> CreateCopyStream() override {
    return inner_->CreateCopyStream();
  }
  absl::StatusOr<void*> AllocatePinnedHost(size_t bytes) override {
    return inner_->AllocatePinnedHost(bytes);
  }
  void FreePinnedHost(void* p) override { inner_->FreePinnedHost(p); }
  absl::Status status() const override {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  void BeginOps() override { inner_->BeginOps(); }
  void EndOps() override { inner_->EndOps(); }
  absl::StatusOr<kernels::Weight> PrepareWeight(const kernels::Weight& host) override {
    return inner_->PrepareWeight(host);
  }
  void Embed(const kernels::Weight& t, absl::Span<const int32_t> ids, float* out) override {
    if (!failed_) inner_->Embed(t, ids, out);
  }
  void RmsNorm(const float* x, int64_t rows, const kernels::Weight& w, float eps, float* out) override {
    if (!failed_) inner_->RmsNorm(x, rows, w, eps, out);
  }
  void MatMul(const float* x, int64_t rows, const kernels::Weight& w, float* out) override {
    if (!failed_) inner_->MatMul(x, rows, w, out);
  }
  void Rope(float* x, int64_t rows, int32_t heads, int32_t head_dim, int32_t rope_dims,
            absl::Span<const int32_t> pos, float base, kernels::RopeStyle style) override {
    if (!failed_) inner_->Rope(x, rows, heads, head_dim, rope_dims, pos, base, style);
  }
  bool RopeWithFreqFactors(float* x, int64_t rows, int32_t heads, int32_t head_dim, int32_t rope_dims,
                           absl::Span<const int32_t> pos, float base, absl::Span<const float> factors,
                           kernels::RopeStyle style) override {
    return inner_->RopeWithFreqFactors(x, rows, heads, head_dim, rope_dims, pos, base, factors, style);
  }
  void WriteKv(const kernels::KvCacheView& kv, int32_t layer, const float* k, const float* v,
               absl::Span<const int32_t> slots) override {
    if (!failed_) inner_->WriteKv(kv, layer, k, v, slots);
  }
  void PagedAttention(const float* q, const kernels::KvCacheView& kv, int32_t layer, int32_t heads,
                      absl::Span<const kernels::AttentionSequence> seqs, float scale, float* out) override {
    if (!failed_) inner_->PagedAttention(q, kv, layer, heads, seqs, scale, out);
  }
  void SwiGlu(const float* g, const float* u, int64_t n, float* out) override {
    if (!failed_) inner_->SwiGlu(g, u, n, out);
  }
  void Add(float* x, const float* y, int64_t n) override {
    if (!failed_) inner_->Add(x, y, n);
  }

 private:
  const std::unique_ptr<kernels::Backend> inner_;
  mutable absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> failed_{false};
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_FAULTY_BACKEND_H_
