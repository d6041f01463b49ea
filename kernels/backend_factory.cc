#include "kernels/backend_factory.h"

#include "absl/strings/str_cat.h"

#if TANDEM_KERNELS_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace tandem::kernels {

bool CudaBackendBuilt() { return TANDEM_KERNELS_HAVE_CUDA != 0; }

int CudaDevicesPresent() {
#if TANDEM_KERNELS_HAVE_CUDA
  return CudaDeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  std::string device = options.device;
  if (device == "auto") device = CudaDevicesPresent() > 0 ? "cuda" : "cpu";
  if (device == "cpu") return CreateCpuBackend({.num_threads = options.num_threads});
  if (device == "cpu-guarded") return CreateGuardedCpuBackend({.num_threads = options.num_threads});
  if (device == "cuda") {
#if TANDEM_KERNELS_HAVE_CUDA
    absl::StatusOr<std::unique_ptr<CudaBackend>> cuda =
        CreateCudaBackend({.device = options.cuda_device, .fp32_weights = options.cuda_fp32});
    if (!cuda.ok()) return cuda.status();
    return std::unique_ptr<Backend>(std::move(*cuda));
#else
    return absl::FailedPreconditionError(
        "this build has no CUDA backend (nvcc was not found at configure time)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", device, "' (want cpu, cpu-guarded, cuda or auto)"));
}

absl::StatusOr<DType> ResolveKvDType(std::string_view flag, const Backend& backend) {
  if (flag == "f32") return DType::kF32;
  if (flag == "bf16") return DType::kBF16;
  if (flag == "f16") return DType::kF16;
  // "auto": the guarded CPU mode rehearses the device path, but its numbers
  // are the CPU's, checked against F32 references: it keeps F32.
  if (flag == "auto") return backend.name() == "cuda" ? DType::kBF16 : DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown KV dtype '", std::string(flag), "' (want f32, bf16, f16 or auto)"));
}

}  // namespace tandem::kernels
