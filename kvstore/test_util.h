// Helpers for the kvstore tests: a temporary directory
// removed on destruction, deterministic block contents, and the Gate
// (tests/testing/gate.h) that holds a tier copy until the test releases it.
#ifndef TANDEM_KVSTORE_TEST_UTIL_H_
#define TANDEM_KVSTORE_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

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

}  // namespace tandem::kvstore::testing

#endif  // TANDEM_KVSTORE_TEST_UTIL_H_
