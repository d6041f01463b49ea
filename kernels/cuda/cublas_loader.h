// cuBLAS, loaded at run time with dlopen so that `tandem` starts (and falls
// back to the CPU backend) on machines without libcublas: only the CUDA
// runtime is linked, statically; cuBLAS is looked up the first time a CUDA
// backend or a GPU benchmark asks for it.
//
//   TANDEM_ASSIGN_OR_RETURN(const CublasApi* blas, LoadCublas());
//   blas->gemm_ex(handle, ...);
//
// Search order: $TANDEM_CUBLAS_LIBRARY, then libcublas.so.13 through the
// dynamic loader's path (LD_LIBRARY_PATH, ld.so.cache), then
// /usr/local/cuda/lib64/libcublas.so.13. The library stays loaded for the
// life of the process. Thread-safe.
#ifndef TANDEM_KERNELS_CUDA_CUBLAS_LOADER_H_
#define TANDEM_KERNELS_CUDA_CUBLAS_LOADER_H_

#include <cublas_api.h>

#include <string>

#include "absl/status/statusor.h"

namespace tandem::kernels::cuda {

// The cuBLAS entry points Tandem uses (the _v2 API).
struct CublasApi {
  std::string path;  // the file that was loaded
  decltype(&::cublasCreate_v2) create = nullptr;
  decltype(&::cublasDestroy_v2) destroy = nullptr;
  decltype(&::cublasSetStream_v2) set_stream = nullptr;
  decltype(&::cublasSetMathMode) set_math_mode = nullptr;
  // cublasGemmEx is overloaded in C++ (a legacy cudaDataType compute-type
  // wrapper), so its type is spelled out: the cublasComputeType_t entry point.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*,
                            void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  decltype(&::cublasGetStatusString) status_string = nullptr;
};

// The loaded API, or FailedPrecondition naming every path tried.
absl::StatusOr<const CublasApi*> LoadCublas();

}  // namespace tandem::kernels::cuda

#endif  // TANDEM_KERNELS_CUDA_CUBLAS_LOADER_H_
