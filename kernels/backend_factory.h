// Chooses and creates a kernel backend at run time: the one seam where the
// build's backends are listed, so model and engine code never name one.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
//                           CreateBackend({.device = "auto", .num_threads = 0}));
//
// "auto" picks CUDA when this build has the CUDA backend and a device is
// present (cudaGetDeviceCount > 0), else the CPU backend; it never fails for
// lack of a GPU or of the CUDA driver. "cuda" insists on a GPU. "cpu-guarded"
// is the CPU backend whose memory the host may not touch (backend.h,
// CreateGuardedCpuBackend): the device code path, exercised without a GPU.
#ifndef TANDEM_KERNELS_BACKEND_FACTORY_H_
#define TANDEM_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tandem::kernels {

struct BackendOptions {
  // "cpu", "cpu-guarded", "cuda" or "auto". Default: "auto".
  std::string device = "auto";
  // CPU backend: threads, the caller included; 0 = one per hardware thread. Default: 0.
  int num_threads = 0;
  // CUDA backend: device ordinal. Default: 0.
  int cuda_device = 0;
  // CUDA backend: F32 weights and FP32 GEMMs instead of BF16. Default: false.
  bool cuda_fp32 = false;
};

// InvalidArgument for an unknown device name; FailedPrecondition for
// device "cuda" when this build lacks the CUDA backend or no GPU/driver/
// cuBLAS is usable.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

// The KV pool's element type for `flag`: "f32", "bf16", "f16", or "auto"
// (bf16 where the backend's memory is a device's, f32 on the CPU, where the
// llama.cpp references need it). InvalidArgument for anything else.
absl::StatusOr<DType> ResolveKvDType(std::string_view flag, const Backend& backend);

// Whether this build includes the CUDA backend.
bool CudaBackendBuilt();
// CUDA devices visible to this process (0 without the CUDA backend, a driver or a GPU).
int CudaDevicesPresent();

}  // namespace tandem::kernels

#endif  // TANDEM_KERNELS_BACKEND_FACTORY_H_
