// Helpers for the kvstore tests: a temporary directory
// removed on destruction, deterministic block contents, the Gate
// (tests/testing/gate.h) that holds a tier copy until the test releases it,
// damage to a closed SSD tier's files (FlipBytesInFiles) and a small file
// system that fills (SmallFileSystem).
#ifndef TANDEM_KVSTORE_TEST_UTIL_H_
#define TANDEM_KVSTORE_TEST_UTIL_H_

#include <sys/mount.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/gate.h"
#include "tests/testing/temp_dir.h"

namespace tandem::kvstore::testing {

// A temporary directory removed on destruction (tests/testing/temp_dir.h).
using ::tandem::testing::TempDir;

// Holds a tier copy (from the loader thread) until the test releases it
// (tests/testing/gate.h, shared with the engine's tests).
using ::tandem::testing::Gate;

// Block i's tokens and KV bytes, derived from i (so a mix-up shows).
inline std::vector<int32_t> TokensFor(uint64_t i, int32_t n) {
  std::vector<int32_t> t(n);
  for (int32_t k = 0; k < n; ++k) t[k] = static_cast<int32_t>((i * 131 + k * 7) % 32000);
  return t;
}
inline std::vector<uint8_t> PayloadFor(uint64_t i, size_t bytes) {
  std::vector<uint8_t> p(bytes);
  std::mt19937_64 rng(i * 0x9E3779B97F4A7C15ull + 1);
  for (size_t k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(rng());
  return p;
}

// Flips every `stride`-th byte (from byte 0) of each file directly in `dir`
// whose extension is one of `extensions` (".sst", ".blob"), as a failing
// disk would; how many files it changed.
inline int FlipBytesInFiles(const std::string& dir, const std::vector<std::string>& extensions,
                            size_t stride = 97) {
  int changed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (std::find(extensions.begin(), extensions.end(), ext) == extensions.end()) continue;
    std::string bytes;
    {
      std::ifstream in(entry.path(), std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (bytes.empty()) continue;
    for (size_t i = 0; i < bytes.size(); i += stride) bytes[i] = static_cast<char>(bytes[i] ^ 0x5a);
    std::ofstream out(entry.path(), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    changed += out.good() ? 1 : 0;
  }
  return changed;
}

// A tmpfs of `bytes` on `dir` for a test's life (a disk that fills), when the
// test may mount (CAP_SYS_ADMIN); mounted() says whether it could.
class SmallFileSystem {
 public:
  SmallFileSystem(const std::string& dir, size_t bytes) : dir_(dir) {
    std::filesystem::create_directories(dir);
    mounted_ = mount("tmpfs", dir.c_str(), "tmpfs", 0, absl::StrCat("size=", bytes).c_str()) == 0;
  }
  ~SmallFileSystem() {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

}  // namespace tandem::kvstore::testing

#endif  // TANDEM_KVSTORE_TEST_UTIL_H_
