#include "router/progress_watch.h"

#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace tandem::router {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

absl::flat_hash_map<std::string, WorkerState> Workers() {
  return {{"d0", {.in_rotation = true, .rotation_epoch = 4}},
          {"d1", {.in_rotation = true, .rotation_epoch = 0}},
          {"p0", {.in_rotation = true, .rotation_epoch = 1}}};
}

InFlightCall Stream() {
  return {
      .step = InFlightCall::Step::kDecode, .decode = {"d0", 4}, .began = kT0, .allowance = absl::Seconds(2)};
}

TEST(StallAllowanceTest, FloorOrStepsTimesTimePerTokenWhicheverIsLonger) {
  EXPECT_EQ(StallAllowance(absl::Seconds(2), 20, 0), absl::Seconds(2));                // no report yet
  EXPECT_EQ(StallAllowance(absl::Seconds(2), 20, 30), absl::Seconds(2));               // 600 ms < floor
  EXPECT_EQ(StallAllowance(absl::Seconds(2), 20, 250), absl::Seconds(5));              // a slow worker
  EXPECT_EQ(StallAllowance(absl::ZeroDuration(), 20, 250), absl::InfiniteDuration());  // off
}

TEST(JudgeCallTest, AStreamOnAHealthyProgressingWorkerRuns) {
  InFlightCall call = Stream();
  call.last_token = kT0 + absl::Seconds(9);
  EXPECT_EQ(JudgeCall(call, Workers(), {}, kT0 + absl::Seconds(10)), std::nullopt);
}

TEST(JudgeCallTest, NoTokenPastTheAllowanceIsAStall) {
  InFlightCall call = Stream();
  call.last_token = kT0 + absl::Seconds(1);
  EXPECT_EQ(JudgeCall(call, Workers(), {}, kT0 + absl::Seconds(3)), std::nullopt);  // exactly 2 s
  std::optional<Verdict> v = JudgeCall(call, Workers(), {}, kT0 + absl::Milliseconds(3001));
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(v->stalled);
  EXPECT_EQ(v->worker, "d0");
  EXPECT_TRUE(absl::StrContains(v->reason, "d0 stopped making progress: no token for 2.001s")) << v->reason;
}

TEST(JudgeCallTest, AStreamWaitingOnAWorkerThatServesOthersIsNotStalled) {
  // Preempted or waiting for room: its worker's other streams progress.
  InFlightCall call = Stream();
  call.last_token = kT0;
  const absl::flat_hash_map<std::string, absl::Time> progress = {{"d0", kT0 + absl::Seconds(9)}};
  EXPECT_EQ(JudgeCall(call, Workers(), progress, kT0 + absl::Seconds(10)), std::nullopt);
  // Another worker's progress does not count.
  const absl::flat_hash_map<std::string, absl::Time> elsewhere = {{"d1", kT0 + absl::Seconds(9)}};
  EXPECT_TRUE(JudgeCall(call, Workers(), elsewhere, kT0 + absl::Seconds(10)).has_value());
}

TEST(JudgeCallTest, FirstTokenMayTakeTheExtraAllowance) {
  InFlightCall call = Stream();  // aggregated: the decode worker prefills first
  call.first_token_extra = absl::Seconds(5);
  EXPECT_EQ(JudgeCall(call, Workers(), {}, kT0 + absl::Seconds(6)), std::nullopt);
  EXPECT_TRUE(JudgeCall(call, Workers(), {}, kT0 + absl::Seconds(8)).has_value());
  call.last_token = kT0 + absl::Seconds(1);  // once it has one, the plain allowance
  EXPECT_TRUE(JudgeCall(call, Workers(), {}, kT0 + absl::Seconds(4)).has_value());
}

TEST(JudgeCallTest, AReserveWithoutAnswerIsAStallButAPrefillIsNot) {
  InFlightCall reserve = Stream();
  reserve.step = InFlightCall::Step::kReserve;
  std::optional<Verdict> v = JudgeCall(reserve, Workers(), {}, kT0 + absl::Seconds(3));
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(absl::StrContains(v->reason, "no answer to Reserve")) << v->reason;
  InFlightCall prefill = Stream();
  prefill.step = InFlightCall::Step::kPrefill;
  prefill.prefill = WorkerRef{"p0", 1};
  prefill.allowance = absl::InfiniteDuration();
  EXPECT_EQ(JudgeCall(prefill, Workers(), {}, kT0 + absl::Hours(1)), std::nullopt);
}

// A prefill worker whose device hangs heartbeats on but finishes nothing:
// past the allowance its prefill is a stall, blamed on the prefill worker;
// a busy one that finishes other prefills is not.
TEST(JudgeCallTest, APrefillWorkerThatFinishesNothingPastTheAllowanceIsStalled) {
  InFlightCall prefill = Stream();
  prefill.step = InFlightCall::Step::kPrefill;
  prefill.prefill = WorkerRef{"p0", 1};
  prefill.allowance = absl::Seconds(5);
  EXPECT_EQ(JudgeCall(prefill, Workers(), {}, kT0 + absl::Seconds(5)), std::nullopt);
  std::optional<Verdict> v = JudgeCall(prefill, Workers(), {}, kT0 + absl::Seconds(6));
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->worker, "p0");
  EXPECT_TRUE(v->stalled);
  EXPECT_TRUE(absl::StrContains(v->reason, "no prefill finished for 6s")) << v->reason;
  const absl::flat_hash_map<std::string, absl::Time> busy = {{"p0", kT0 + absl::Seconds(4)}};
  EXPECT_EQ(JudgeCall(prefill, Workers(), busy, kT0 + absl::Seconds(8)), std::nullopt);
  // The decode worker's progress does not count for the prefill worker.
  const absl::flat_hash_map<std::string, absl::Time> decode_only = {{"d0", kT0 + absl::Seconds(7)}};
  EXPECT_TRUE(JudgeCall(prefill, Workers(), decode_only, kT0 + absl::Seconds(8)).has_value());
}

TEST(JudgeCallTest, AWorkerOutOfTheRotationLosesItsCallsWhateverTheirProgress) {
  InFlightCall call = Stream();
  call.last_token = kT0;
  absl::flat_hash_map<std::string, WorkerState> workers = Workers();
  workers["d0"] = {.in_rotation = false,
                   .rotation_epoch = 4,
                   .heartbeat_late = true,
                   .since_heartbeat = absl::Milliseconds(1600)};
  std::optional<Verdict> v = JudgeCall(call, workers, {}, kT0 + absl::Milliseconds(1));
  ASSERT_TRUE(v.has_value());
  EXPECT_FALSE(v->stalled);
  EXPECT_EQ(v->reason, "d0 stopped making progress: no heartbeat for 1.6s");
  workers["d0"] = {.in_rotation = false, .rotation_epoch = 4};
  v = JudgeCall(call, workers, {}, kT0);
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(absl::StrContains(v->reason, "taken out of the rotation")) << v->reason;
  // Back already, in a new epoch: the call was in flight during the absence.
  workers["d0"] = {.in_rotation = true, .rotation_epoch = 5};
  v = JudgeCall(call, workers, {}, kT0);
  ASSERT_TRUE(v.has_value());
  EXPECT_TRUE(absl::StrContains(v->reason, "left the rotation")) << v->reason;
  // Gone from the registry.
  workers.erase("d0");
  EXPECT_TRUE(JudgeCall(call, workers, {}, kT0).has_value());
}

TEST(JudgeCallTest, APrefillIsAbandonedWhenEitherWorkerLeaves) {
  InFlightCall call = Stream();
  call.step = InFlightCall::Step::kPrefill;
  call.prefill = WorkerRef{"p0", 1};
  call.allowance = absl::InfiniteDuration();
  absl::flat_hash_map<std::string, WorkerState> workers = Workers();
  EXPECT_EQ(JudgeCall(call, workers, {}, kT0), std::nullopt);
  workers["p0"].in_rotation = false;
  std::optional<Verdict> v = JudgeCall(call, workers, {}, kT0);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->worker, "p0");
  workers = Workers();
  workers["d0"].rotation_epoch = 5;
  v = JudgeCall(call, workers, {}, kT0);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->worker, "d0");
}

}  // namespace
}  // namespace tandem::router
