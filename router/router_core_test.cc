// RouterCore in one process, without workers: the checks a request meets
// before any RPC (validation, deadline, placement), on a FakeClock.
#include "router/router_core.h"

#include <memory>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::router {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

// Records OnDone; these requests end before any RPC, inside Start.
class Recorder final : public GenerationObserver {
 public:
  void OnChunk(const tandem::v1::TokenChunk&) override { ++chunks_; }
  void OnDone(const absl::Status& status, const tandem::v1::GenerateSummary&) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
  }
  std::optional<absl::Status> status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  int chunks_ = 0;

 private:
  absl::Mutex mu_;
  std::optional<absl::Status> status_;
};

class RouterCoreTest : public ::testing::Test {
 protected:
  RouterCoreTest()
      : registry_({.heartbeat_interval = absl::Seconds(1),
                   .misses_allowed = 2,
                   .model_id = "m",
                   .clock = &clock_}) {
    model_.spec = "synthetic:test";
    model_.config.model_id = "m";
    model_.config.vocab_size = 100;
    model_.config.context_length = 64;
    RouterOptions options;
    options.clock = &clock_;
    core_ = std::make_unique<RouterCore>(options, &model_, &registry_);
  }

  static tandem::v1::GenerateRequest Request() {
    tandem::v1::GenerateRequest r;
    r.mutable_prompt_token_ids()->add_ids(5);  // token ids: no tokenizer needed
    r.set_max_tokens(4);
    return r;
  }
  // Starts `r` with `deadline` and returns how it ended.
  absl::Status Run(const tandem::v1::GenerateRequest& r, absl::Time deadline) {
    auto recorder = std::make_shared<Recorder>();
    core_->Start(r, deadline, recorder);
    std::optional<absl::Status> s = recorder->status();
    EXPECT_TRUE(s.has_value()) << "expected to end inside Start (no worker was called)";
    EXPECT_EQ(recorder->chunks_, 0);
    return s.value_or(absl::UnknownError("not done"));
  }
  void RegisterDecode(const std::string& id) {
    tandem::v1::RegisterRequest r;
    r.set_worker_id(id);
    r.set_role(tandem::v1::WORKER_ROLE_DECODE);
    r.set_address("127.0.0.1:1");  // never dialled here
    r.set_model_id("m");
    ASSERT_OK(registry_.Register(r));
  }

  FakeClock clock_;
  WorkerRegistry registry_;
  model::ModelInfo model_;
  std::unique_ptr<RouterCore> core_;
};

TEST_F(RouterCoreTest, InvalidRequestsEndWithTheValidatorsError) {
  tandem::v1::GenerateRequest r = Request();
  r.mutable_slo()->set_ttft_ms(0);
  EXPECT_THAT(Run(r, clock_.Now() + absl::Minutes(1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("slo.ttft_ms")));
  EXPECT_EQ(core_->in_flight(), 0);
}

TEST_F(RouterCoreTest, DeadlinesAreReadOnTheInjectedClock) {
  // The deadline is 30 s away in real time, but the core's clock is already
  // past it; a healthy decode worker is there, so only the clock decides.
  const absl::Time deadline = clock_.Now() + absl::Seconds(30);
  clock_.Advance(absl::Seconds(31));
  RegisterDecode("d1");
  EXPECT_THAT(Run(Request(), deadline), StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST_F(RouterCoreTest, AWorkerPastItsHeartbeatDeadlineIsNotPlaced) {
  RegisterDecode("d1");
  clock_.Advance(absl::Seconds(2) + absl::Milliseconds(1));  // interval 1 s x 2 misses
  EXPECT_THAT(Run(Request(), clock_.Now() + absl::Minutes(1)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no healthy decode worker")));
}

}  // namespace
}  // namespace tandem::router
