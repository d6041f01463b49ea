// Helpers for the kvstore and engine tier tests: a temporary directory
// removed on destruction, deterministic block contents, and a Gate that holds
// a tier copy on the loader thread until the test releases it.
#ifndef TANDEM_KVSTORE_TEST_UTIL_H_
#define TANDEM_KVSTORE_TEST_UTIL_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::kvstore::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "/kvstore_test_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Holds a tier copy (from the loader thread) until the test releases it.
// Every wait is bounded: a test that never releases fails instead of hanging.
class Gate {
 public:
  static constexpr std::chrono::seconds kTimeout{30};

  // Called where the copy is held; returns when released (or after kTimeout).
  void Enter() {
    std::unique_lock<std::mutex> lock(mu_);
    entered_ = true;
    cv_.notify_all();
    if (!cv_.wait_for(lock, kTimeout, [&] { return released_; })) ADD_FAILURE() << "Gate never released";
  }
  // True once Enter was called; false after kTimeout without it.
  bool WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kTimeout, [&] { return entered_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool released_ = false;
};

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

}  // namespace tandem::kvstore::testing

#endif  // TANDEM_KVSTORE_TEST_UTIL_H_
