// PoolCopier: KV blocks in and out of a pool the host may not touch (the CPU
// backend's guarded mode stands in for device memory), and in place where it
// may.
#include "engine/pool_copier.h"

#include <cstring>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::StatusIs;

constexpr size_t kBlock = 4096 + 64;  // not a page multiple

TEST(PoolCopierTest, StagesThroughPinnedMemoryWhenTheHostMayNotTouchThePool) {
  auto guarded = kernels::CreateGuardedCpuBackend({.num_threads = 1});
  ASSERT_OK_AND_ASSIGN(void* pool, guarded->Allocate(4 * kBlock));
  auto block = [&](int b) { return absl::MakeSpan(static_cast<uint8_t*>(pool) + b * kBlock, kBlock); };
  ASSERT_OK_AND_ASSIGN(auto copier, PoolCopier::Create(guarded.get(), kBlock, /*staging_blocks=*/2));
  EXPECT_FALSE(copier->direct());
  EXPECT_EQ(copier->capacity(), 2);
  // Write fills host memory, then copies it in: the pool is never touched
  // by the host (a touch would fault).
  for (int b = 0; b < 3; ++b) {
    ASSERT_OK(copier->Write(block(b), [&](absl::Span<uint8_t> host) {
      EXPECT_NE(host.data(), block(b).data());
      for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>(b * 7 + i);
      return absl::OkStatus();
    }));
  }
  // A failed fill is reported as is.
  EXPECT_THAT(copier->Write(block(3), [](absl::Span<uint8_t>) { return absl::NotFoundError("miss"); }),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(absl::Span<const uint8_t> one, copier->Read(block(1)));
  EXPECT_EQ(one[5], static_cast<uint8_t>(7 + 5));
  const std::vector<absl::Span<const uint8_t>> two = {block(2), block(0)};
  ASSERT_OK_AND_ASSIGN(std::vector<absl::Span<const uint8_t>> read, copier->ReadBlocks(two));
  ASSERT_EQ(read.size(), 2u);
  for (size_t i = 0; i < kBlock; ++i) {
    ASSERT_EQ(read[0][i], static_cast<uint8_t>(14 + i));
    ASSERT_EQ(read[1][i], static_cast<uint8_t>(i));
  }
  const std::vector<absl::Span<const uint8_t>> three = {block(0), block(1), block(2)};
  EXPECT_THAT(copier->ReadBlocks(three), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(copier->Read(block(0).subspan(1)), StatusIs(absl::StatusCode::kInternal));
  guarded->Free(pool);
}

TEST(PoolCopierTest, WorksInPlaceOnHostMemory) {
  auto cpu = kernels::CreateCpuBackend({.num_threads = 1});
  std::vector<uint8_t> pool(2 * kBlock, 0);
  ASSERT_OK_AND_ASSIGN(auto copier, PoolCopier::Create(cpu.get(), kBlock));
  EXPECT_TRUE(copier->direct());
  const absl::Span<uint8_t> block(pool.data() + kBlock, kBlock);
  ASSERT_OK(copier->Write(block, [&](absl::Span<uint8_t> host) {
    EXPECT_EQ(host.data(), block.data());  // no staging
    std::memset(host.data(), 9, host.size());
    return absl::OkStatus();
  }));
  EXPECT_EQ(pool[kBlock + 10], 9);
  ASSERT_OK_AND_ASSIGN(absl::Span<const uint8_t> read, copier->Read(block));
  EXPECT_EQ(read.data(), block.data());
}

}  // namespace
}  // namespace tandem::engine
