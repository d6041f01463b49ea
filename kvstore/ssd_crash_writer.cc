// Test helper for ssd_tier_crash_test: opens an SsdTier at argv[1]
// (sync_writes = argv[2] == "sync"), writes blocks 1, 2, 3, ... forever and
// prints "acked N" after each Put of block N returns OK, until killed.
#include <cstdio>
#include <cstring>
#include <string>

#include "kvstore/block_format.h"
#include "kvstore/ssd_tier.h"
#include "kvstore/test_util.h"

int main(int argc, char** argv) {
  using namespace tandem::kvstore;
  if (argc != 3) {
    std::fprintf(stderr, "usage: ssd_crash_writer PATH sync|nosync\n");
    return 2;
  }
  SsdTier::Options options;
  options.path = argv[1];
  options.capacity_bytes = size_t{1} << 30;
  options.model_id_hash = ModelIdHash("crash-test");
  options.sync_writes = std::strcmp(argv[2], "sync") == 0;
  absl::StatusOr<std::unique_ptr<SsdTier>> ssd = SsdTier::Create(options);
  if (!ssd.ok()) {
    std::fprintf(stderr, "ssd_crash_writer: %s\n", std::string(ssd.status().message()).c_str());
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (uint64_t n = 1;; ++n) {
    const std::vector<int32_t> tokens = tandem::kvstore::testing::TokensFor(n, 16);
    const std::vector<uint8_t> payload = tandem::kvstore::testing::PayloadFor(n, 16384);
    const std::string value = EncodeBlock(
        {.model_id_hash = options.model_id_hash, .block_hash = n, .tokens = tokens, .payload = payload});
    const absl::Status s = (*ssd)->Put(
        n, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()), value.size()), nullptr);
    if (!s.ok()) {
      std::fprintf(stderr, "ssd_crash_writer: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::printf("acked %llu\n", static_cast<unsigned long long>(n));
    std::fflush(stdout);
  }
}
