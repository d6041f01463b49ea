#include "router/worker_registry.h"

#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using ::tandem::testing::StatusIs;
using tandem::v1::WORKER_ROLE_DECODE;
using tandem::v1::WORKER_ROLE_PREFILL;

tandem::v1::RegisterRequest Worker(const std::string& id, tandem::v1::WorkerRole role,
                                   const std::string& model = "m") {
  tandem::v1::RegisterRequest r;
  r.set_worker_id(id);
  r.set_role(role);
  r.set_address("127.0.0.1:1");  // never dialled: channels connect lazily
  r.set_model_id(model);
  return r;
}

TEST(WorkerRegistryTest, RoundRobinPerRoleSkippingExcluded) {
  WorkerRegistry reg({.heartbeat_interval = absl::Seconds(10), .model_id = "m"});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("p1", WORKER_ROLE_PREFILL)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  std::vector<std::string> picks;
  for (int i = 0; i < 4; ++i) picks.push_back(reg.Pick(WORKER_ROLE_DECODE)->id);
  EXPECT_EQ(picks, (std::vector<std::string>{"d1", "d2", "d1", "d2"}));
  EXPECT_EQ(reg.Pick(WORKER_ROLE_PREFILL)->id, "p1");
  EXPECT_EQ(reg.Pick(WORKER_ROLE_DECODE, {"d1"})->id, "d2");
  EXPECT_THAT(reg.Pick(WORKER_ROLE_DECODE, {"d1", "d2"}).status(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(WorkerRegistryTest, MissedHeartbeatDeadlineTakesWorkerOutUntilItBeats) {
  // Deadline = 50 ms x 2 misses, on a clock that moves only when told.
  FakeClock clock;
  WorkerRegistry reg(
      {.heartbeat_interval = absl::Milliseconds(50), .misses_allowed = 2, .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  // At the deadline both are still healthy; one tick later neither is.
  clock.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(reg.HasHealthy(WORKER_ROLE_DECODE));
  EXPECT_TRUE(reg.Unhealthy().empty());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_FALSE(reg.HasHealthy(WORKER_ROLE_DECODE));
  EXPECT_EQ(reg.Unhealthy(), (std::vector<std::string>{"d1", "d2"}));
  // d1 stays silent (a simulated dead worker); d2 beats.
  tandem::v1::HeartbeatRequest beat;
  beat.set_worker_id("d2");
  ASSERT_TRUE(reg.Heartbeat(beat));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(reg.Pick(WORKER_ROLE_DECODE)->id, "d2");
  tandem::v1::HeartbeatRequest hb;
  hb.set_worker_id("d1");
  ASSERT_TRUE(reg.Heartbeat(hb));  // back in rotation
  std::set<std::string> seen;
  for (int i = 0; i < 4; ++i) seen.insert(reg.Pick(WORKER_ROLE_DECODE)->id);
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(reg.Unhealthy().empty());
}

// The router itself stopped (SIGSTOP) for longer than the heartbeat
// deadline: on waking it forgives the silence it could not hear, and a
// worker that stays silent afterwards still leaves after one deadline.
TEST(WorkerRegistryTest, TheRoutersOwnPauseIsNotHeldAgainstTheWorkers) {
  FakeClock clock, awake;  // the registry's judging clock; the router's running time
  WorkerRegistry reg({.heartbeat_interval = absl::Milliseconds(500),
                      .misses_allowed = 3,
                      .model_id = "m",
                      .clock = &clock,
                      .pause_threshold = absl::Seconds(1),
                      .awake_clock = &awake});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  EXPECT_TRUE(reg.Unhealthy().empty());
  // Stopped for 3 s: both clocks move, no judging runs meanwhile.
  clock.Advance(absl::Seconds(3));
  awake.Advance(absl::Seconds(3));
  EXPECT_TRUE(reg.Unhealthy().empty()) << "the router's pause was held against the workers";
  EXPECT_EQ(reg.awake_since(), clock.Now());
  for (const WorkerRegistry::WorkerInfo& w : reg.List()) EXPECT_EQ(w.since_heartbeat, absl::ZeroDuration());
  // Running again (judging every 250 ms): d2 beats, d1 stays silent and
  // leaves once the deadline passed after the pause.
  tandem::v1::HeartbeatRequest beat;
  beat.set_worker_id("d2");
  for (int i = 0; i < 7; ++i) {
    clock.Advance(absl::Milliseconds(250));
    awake.Advance(absl::Milliseconds(250));
    ASSERT_TRUE(reg.Heartbeat(beat));
  }
  EXPECT_EQ(reg.Unhealthy(), (std::vector<std::string>{"d1"}));
  // A pause shorter than the threshold forgives nothing.
  clock.Advance(absl::Milliseconds(900));
  awake.Advance(absl::Milliseconds(900));
  const absl::Time before = reg.awake_since();
  EXPECT_EQ(reg.Unhealthy(), (std::vector<std::string>{"d1"}));
  EXPECT_EQ(reg.awake_since(), before);
}

// A test's FakeClock alone: pause detection stays off (awake_clock left real).
TEST(WorkerRegistryTest, PauseDetectionIsOffForATestClockAlone) {
  FakeClock clock;
  WorkerRegistry reg({.heartbeat_interval = absl::Milliseconds(50), .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(reg.Unhealthy(), (std::vector<std::string>{"d1"}));
  EXPECT_EQ(reg.awake_since(), absl::InfinitePast());
}

TEST(WorkerRegistryTest, WithHealthySeesEveryCandidateAtOnceInRegistrationOrder) {
  FakeClock clock;
  WorkerRegistry reg({.heartbeat_interval = absl::Seconds(1), .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("p1", WORKER_ROLE_PREFILL)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("d3", WORKER_ROLE_DECODE)));
  reg.MarkFailed("d3");
  reg.AddInflight("d2", 7);
  std::vector<std::string> ids;
  int64_t d2_inflight = -1;
  int calls = 0;
  reg.WithHealthy(WORKER_ROLE_DECODE, {}, [&](absl::Span<const WorkerView> views) {
    ++calls;
    for (const WorkerView& v : views) {
      ids.push_back(v.handle.id);
      if (v.handle.id == "d2") d2_inflight = v.inflight_prefill_tokens;
      EXPECT_NE(v.handle.stubs, nullptr);
    }
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ids, (std::vector<std::string>{"d1", "d2"}));  // d3 failed
  EXPECT_EQ(d2_inflight, 7);
  ids.clear();
  reg.WithHealthy(WORKER_ROLE_DECODE, {"d1"}, [&](absl::Span<const WorkerView> views) {
    for (const WorkerView& v : views) ids.push_back(v.handle.id);
  });
  EXPECT_EQ(ids, (std::vector<std::string>{"d2"}));
  clock.Advance(absl::Hours(1));  // everyone's deadline passed: called once with none
  calls = 0;
  reg.WithHealthy(WORKER_ROLE_DECODE, {}, [&](absl::Span<const WorkerView> views) {
    ++calls;
    EXPECT_TRUE(views.empty());
  });
  EXPECT_EQ(calls, 1);
}

// Each worker keeps the slot it got at registration (its position in
// registration order), also when it registers again, in another role too;
// per-role scans keep registration order.
TEST(WorkerRegistryTest, SlotsAreRegistrationOrderAndStable) {
  WorkerRegistry reg({.heartbeat_interval = absl::Seconds(10), .model_id = "m"});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("p1", WORKER_ROLE_PREFILL)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  EXPECT_EQ(reg.SlotOf("d1"), 0u);
  EXPECT_EQ(reg.SlotOf("p1"), 1u);
  EXPECT_EQ(reg.SlotOf("d2"), 2u);
  EXPECT_EQ(reg.SlotOf("nobody"), std::nullopt);
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_PREFILL)));  // back as a prefill worker
  EXPECT_EQ(reg.SlotOf("d1"), 0u);
  auto scan = [&](tandem::v1::WorkerRole role) {
    std::vector<std::pair<std::string, uint32_t>> seen;
    reg.ForEachHealthy(role, {}, [&](const WorkerView& v) { seen.push_back({v.handle.id, v.slot}); });
    return seen;
  };
  EXPECT_EQ(scan(WORKER_ROLE_PREFILL), (std::vector<std::pair<std::string, uint32_t>>{{"d1", 0}, {"p1", 1}}));
  EXPECT_EQ(scan(WORKER_ROLE_DECODE), (std::vector<std::pair<std::string, uint32_t>>{{"d2", 2}}));
  ASSERT_OK(reg.Register(Worker("p3", WORKER_ROLE_PREFILL)));
  EXPECT_EQ(scan(WORKER_ROLE_PREFILL),
            (std::vector<std::pair<std::string, uint32_t>>{{"d1", 0}, {"p1", 1}, {"p3", 3}}));
}

TEST(WorkerRegistryTest, FailedWorkerLeavesRotationUntilNextHeartbeat) {
  WorkerRegistry reg({.heartbeat_interval = absl::Seconds(10), .model_id = "m"});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  reg.MarkFailed("d1");
  EXPECT_FALSE(reg.HasHealthy(WORKER_ROLE_DECODE));
  tandem::v1::HeartbeatRequest hb;
  hb.set_worker_id("d1");
  EXPECT_TRUE(reg.Heartbeat(hb));
  EXPECT_TRUE(reg.HasHealthy(WORKER_ROLE_DECODE));
  hb.set_worker_id("unknown");
  EXPECT_FALSE(reg.Heartbeat(hb));  // tells the worker to register again
}

// The rotation epoch of `id` as List reports it.
uint64_t Epoch(WorkerRegistry& reg, const std::string& id) {
  for (const WorkerRegistry::WorkerInfo& w : reg.List()) {
    if (w.id == id) return w.rotation_epoch;
  }
  ADD_FAILURE() << id << " not listed";
  return 0;
}

bool InRotation(WorkerRegistry& reg, const std::string& id) {
  for (const WorkerRegistry::WorkerInfo& w : reg.List()) {
    if (w.id == id) return w.healthy;
  }
  return false;
}

TEST(WorkerRegistryTest, RotationEpochGrowsEachTimeAWorkerComesBack) {
  FakeClock clock;
  WorkerRegistry reg({.heartbeat_interval = absl::Milliseconds(500), .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  tandem::v1::HeartbeatRequest hb;
  hb.set_worker_id("d1");
  const uint64_t first = Epoch(reg, "d1");
  EXPECT_EQ(reg.Pick(WORKER_ROLE_DECODE)->rotation_epoch, first);
  // Beats in time: the same epoch.
  clock.Advance(absl::Milliseconds(400));
  ASSERT_TRUE(reg.Heartbeat(hb));
  EXPECT_EQ(Epoch(reg, "d1"), first);
  // Late (past 3 x 500 ms), then back: a new epoch, which handles carry.
  clock.Advance(absl::Seconds(2));
  EXPECT_FALSE(InRotation(reg, "d1"));
  ASSERT_TRUE(reg.Heartbeat(hb));
  EXPECT_TRUE(InRotation(reg, "d1"));
  EXPECT_EQ(Epoch(reg, "d1"), first + 1);
  EXPECT_EQ(reg.Pick(WORKER_ROLE_DECODE)->rotation_epoch, first + 1);
  // Marked failed, then back: another.
  reg.MarkFailed("d1");
  ASSERT_TRUE(reg.Heartbeat(hb));
  EXPECT_EQ(Epoch(reg, "d1"), first + 2);
  // Registering again (a restarted worker): another.
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  EXPECT_EQ(Epoch(reg, "d1"), first + 3);
}

TEST(WorkerRegistryTest, HeldOutWorkerStaysOutWhileItHeartbeatsUntilTheHoldEnds) {
  FakeClock clock;
  WorkerRegistry reg({.heartbeat_interval = absl::Milliseconds(500), .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  tandem::v1::HeartbeatRequest hb;
  hb.set_worker_id("d1");
  // Its streams stalled although it heartbeats (a stuck device).
  reg.MarkFailed("d1", absl::Seconds(10));
  // A later failure without a hold does not shorten it.
  reg.MarkFailed("d1");
  for (int i = 0; i < 19; ++i) {
    clock.Advance(absl::Milliseconds(500));
    ASSERT_TRUE(reg.Heartbeat(hb));
    EXPECT_FALSE(InRotation(reg, "d1")) << "after " << (i + 1) * 500 << " ms";
  }
  EXPECT_THAT(reg.Pick(WORKER_ROLE_DECODE).status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(reg.Unhealthy(), std::vector<std::string>{"d1"});
  clock.Advance(absl::Milliseconds(500));  // 10 s
  ASSERT_TRUE(reg.Heartbeat(hb));
  EXPECT_TRUE(InRotation(reg, "d1"));
  EXPECT_EQ(reg.Pick(WORKER_ROLE_DECODE)->id, "d1");
}

TEST(WorkerRegistryTest, ListSaysWhyAWorkerIsOut) {
  FakeClock clock;
  WorkerRegistry reg({.heartbeat_interval = absl::Milliseconds(500), .model_id = "m", .clock = &clock});
  ASSERT_OK(reg.Register(Worker("d1", WORKER_ROLE_DECODE)));
  ASSERT_OK(reg.Register(Worker("d2", WORKER_ROLE_DECODE)));
  EXPECT_EQ(reg.heartbeat_deadline(), absl::Milliseconds(1500));
  reg.MarkFailed("d2");
  clock.Advance(absl::Milliseconds(700));
  tandem::v1::HeartbeatRequest hb;
  hb.set_worker_id("d2");
  ASSERT_TRUE(reg.Heartbeat(hb));
  reg.MarkFailed("d2");
  clock.Advance(absl::Milliseconds(900));
  for (const WorkerRegistry::WorkerInfo& w : reg.List()) {
    if (w.id == "d1") {
      EXPECT_FALSE(w.healthy);
      EXPECT_FALSE(w.failed);
      EXPECT_EQ(w.since_heartbeat, absl::Milliseconds(1600));
    } else {
      EXPECT_FALSE(w.healthy);
      EXPECT_TRUE(w.failed);
      EXPECT_EQ(w.since_heartbeat, absl::Milliseconds(900));
    }
  }
}

TEST(WorkerRegistryTest, RegistrationErrorsNameTheField) {
  WorkerRegistry reg({.model_id = "m"});
  EXPECT_THAT(reg.Register(Worker("", WORKER_ROLE_DECODE)),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("worker_id")));
  EXPECT_THAT(reg.Register(Worker("x", tandem::v1::WORKER_ROLE_UNSPECIFIED)),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("role")));
  EXPECT_THAT(reg.Register(Worker("x", WORKER_ROLE_DECODE, "other")),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("model_id")));
}

}  // namespace
}  // namespace tandem::router
