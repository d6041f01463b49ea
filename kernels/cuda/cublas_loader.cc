#include "kernels/cuda/cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tandem::kernels::cuda {
namespace {

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

absl::StatusOr<CublasApi> Load() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("TANDEM_CUBLAS_LIBRARY"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  candidates.push_back("libcublas.so.13");
  candidates.push_back("/usr/local/cuda/lib64/libcublas.so.13");
  std::vector<std::string> errors;
  for (const std::string& path : candidates) {
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      errors.push_back(err != nullptr ? err : path);
      continue;
    }
    CublasApi api;
    api.path = path;
    if (!Resolve(lib, "cublasCreate_v2", &api.create) || !Resolve(lib, "cublasDestroy_v2", &api.destroy) ||
        !Resolve(lib, "cublasSetStream_v2", &api.set_stream) ||
        !Resolve(lib, "cublasSetMathMode", &api.set_math_mode) ||
        !Resolve(lib, "cublasGemmEx", &api.gemm_ex) ||
        !Resolve(lib, "cublasGetStatusString", &api.status_string)) {
      errors.push_back(absl::StrCat(path, ": missing a cuBLAS symbol"));
      dlclose(lib);
      continue;
    }
    return api;  // `lib` stays open for the life of the process
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot load cuBLAS (set TANDEM_CUBLAS_LIBRARY or LD_LIBRARY_PATH): ", absl::StrJoin(errors, "; ")));
}

}  // namespace

absl::StatusOr<const CublasApi*> LoadCublas() {
  static const absl::StatusOr<CublasApi>* const loaded = new absl::StatusOr<CublasApi>(Load());
  if (!loaded->ok()) return loaded->status();
  return &**loaded;
}

}  // namespace tandem::kernels::cuda
