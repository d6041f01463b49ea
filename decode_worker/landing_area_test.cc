// LandingArea: pinned slots registered with a real transfer engine, handed
// out and returned with their reservations, and copied into a pool the host
// may not touch (the CPU backend's guarded mode).
#include "decode_worker/landing_area.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/testing/status_matchers.h"

namespace tandem::decode_worker {
namespace {

using ::tandem::testing::StatusIs;

constexpr size_t kBlock = 1024;

TEST(LandingAreaTest, SlotsAreBoundedReturnedAndCopiedIntoThePool) {
  auto guarded = kernels::CreateGuardedCpuBackend({.num_threads = 1});
  ASSERT_OK_AND_ASSIGN(auto transfer, transfer::TransferEngine::Create({.name = "landing-test"}));
  ASSERT_OK_AND_ASSIGN(auto area, LandingArea::Create(guarded.get(), transfer.get(), kBlock, 4));
  EXPECT_EQ(area->region().bytes, 4 * kBlock);
  ASSERT_OK_AND_ASSIGN(LandingArea::Slots three, area->Acquire(3));
  EXPECT_EQ(three.ids().size(), 3u);
  EXPECT_EQ(area->free_slots(), 1);
  // Back-pressure: more than is free is refused, naming the counts.
  EXPECT_THAT(area->Acquire(2), StatusIs(absl::StatusCode::kResourceExhausted));
  {
    ASSERT_OK_AND_ASSIGN(LandingArea::Slots one, area->Acquire(1));
    EXPECT_EQ(area->free_slots(), 0);
  }
  EXPECT_EQ(area->free_slots(), 1) << "a destroyed Slots returns its slots";

  // What a prefill worker would have written lands in the slots (host
  // memory, region_.base_address); CopyToPool moves it into pool blocks.
  auto* landing = reinterpret_cast<uint8_t*>(area->region().base_address);
  for (size_t i = 0; i < three.ids().size(); ++i) {
    std::memset(landing + three.ids()[i] * kBlock, static_cast<int>(0x40 + i), kBlock);
  }
  ASSERT_OK_AND_ASSIGN(void* pool, guarded->Allocate(8 * kBlock));
  auto* base = static_cast<uint8_t*>(pool);
  const std::vector<absl::Span<uint8_t>> dst = {
      {base + 5 * kBlock, kBlock}, {base, kBlock}, {base + 2 * kBlock, kBlock}};
  ASSERT_OK(area->CopyToPool(three, dst));
  std::vector<uint8_t> back(8 * kBlock);
  guarded->CopyToHost(pool, back.size(), back.data());
  EXPECT_EQ(back[5 * kBlock], 0x40);
  EXPECT_EQ(back[0], 0x41);
  EXPECT_EQ(back[2 * kBlock + kBlock - 1], 0x42);
  EXPECT_EQ(back[kBlock], 0) << "an untouched block stays zero";
  EXPECT_THAT(area->CopyToPool(three, absl::MakeConstSpan(dst).subspan(1)),
              StatusIs(absl::StatusCode::kInternal));

  LandingArea::Slots moved = std::move(three);
  EXPECT_EQ(area->free_slots(), 1) << "moving keeps the slots held";
  moved = LandingArea::Slots();
  EXPECT_EQ(area->free_slots(), 4);
  guarded->Free(pool);
}

}  // namespace
}  // namespace tandem::decode_worker
