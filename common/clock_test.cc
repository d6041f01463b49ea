#include "common/clock.h"

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  const absl::Time start = absl::FromUnixSeconds(1000);
  FakeClock clock(start);
  EXPECT_EQ(clock.Now(), start);
  EXPECT_EQ(clock.Now(), start);  // no real time leaks in
  clock.Advance(absl::Milliseconds(1500));
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(1500));
  clock.Set(absl::FromUnixSeconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(5));
}

TEST(ClockTest, FakeClockStartsAtTheRealTimeByDefault) {
  const absl::Time before = absl::Now();
  FakeClock clock;
  EXPECT_GE(clock.Now(), before);
  EXPECT_LE(clock.Now(), absl::Now());
}

TEST(ClockTest, RealClockFollowsAbslNow) {
  Clock* real = Clock::Real();
  ASSERT_EQ(real, Clock::Real());  // one instance
  const absl::Time before = absl::Now();
  const absl::Time now = real->Now();
  EXPECT_GE(now, before);
  EXPECT_LE(now, absl::Now());
}

}  // namespace
}  // namespace tandem
