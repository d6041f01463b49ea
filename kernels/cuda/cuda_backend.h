// The CUDA backend: kernels::Backend on one NVIDIA GPU. Weights live in
// device memory as BF16 (or F32 with fp32_weights), activations and the paged
// KV cache as F32, GEMMs through cuBLAS (cublasGemmEx, FP32 accumulation).
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> gpu, CreateCudaBackend({}));
//   TANDEM_ASSIGN_OR_RETURN(auto llama, model::LlamaModel::Create(config, weights, gpu.get()));
//   ... llama->Forward(...) ...
//   TANDEM_RETURN_IF_ERROR(gpu->status());   // the first CUDA error, if any
//
// Precision path (see README.md): weights converted once at PrepareWeight to
// BF16 (F32/F16/Q8_0 sources round to nearest even; BF16 sources are copied
// bit-exact); each MatMul rounds its F32 input rows to BF16, multiplies on the
// tensor cores and accumulates in FP32 into an F32 output. Everything else
// (norms, RoPE, attention, KV) is FP32. With fp32_weights the GEMMs are plain
// FP32 (CUBLAS_COMPUTE_32F, no TF32) for exact checks against the CPU backend.
//
// Errors: Backend's ops return void, so the backend keeps the first CUDA or
// cuBLAS error (converted to absl::Status; nothing aborts) in status(). After
// an error every op is a no-op and CopyToHost fills its output with NaN, so a
// failed step can never produce plausible numbers. Not batch-invariant: cuBLAS
// may pick a different kernel for a different number of rows.
//
// Thread safety: like every Backend, driven by one thread. Ops are queued on
// one CUDA stream owned by the backend; CopyToHost and CopyFromHost
// synchronise with it. Copy streams (CreateCopyStream) are separate CUDA
// streams, usable from other threads (each sets the device first): they
// overlap device<->pinned-host copies with the compute stream's kernels.
#ifndef TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_
#define TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tandem::kernels {

struct CudaBackendOptions {
  // CUDA device ordinal. Default: 0.
  int device = 0;
  // Keep weights F32 on the device and run FP32 GEMMs (2x the memory and far
  // slower; for exact comparisons with the CPU backend). Default: false (BF16).
  bool fp32_weights = false;
};

class CudaBackend : public Backend {
 public:
  // (Backend::status() is the first error any op hit, OK if none.)
  // Waits for every queued op; returns status().
  virtual absl::Status Synchronize() = 0;
  // "NVIDIA H100 80GB HBM3", etc.
  virtual std::string device_name() const = 0;
};

// Number of CUDA devices, 0 when there is none or no driver (libcuda.so
// absent): never an error, so callers can use it to pick a backend.
int CudaDeviceCount();

// FailedPrecondition when there is no device, the driver is missing or
// cuBLAS cannot be loaded.
absl::StatusOr<std::unique_ptr<CudaBackend>> CreateCudaBackend(const CudaBackendOptions& options);

// Measurements for benchmarks (bench/gpu_decode_bench.cc), on `device`.
// Device-to-device cudaMemcpy bandwidth in bytes/s, counting bytes read plus
// bytes written, best of `iters` copies of `bytes`.
absl::StatusOr<double> MeasureCopyBandwidth(int device, size_t bytes, int iters);
// cublasGemmEx rate in FLOP/s for out[m][n] = x[m][k] * w[n][k]^T with BF16
// inputs (F32 output and accumulation), as MatMul runs it; best of `iters`.
absl::StatusOr<double> MeasureGemmRate(int device, int64_t m, int64_t n, int64_t k, int iters);

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_CUDA_CUDA_BACKEND_H_
