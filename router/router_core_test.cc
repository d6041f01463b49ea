// RouterCore in one process, without workers: the checks a request meets
// before any RPC (validation, deadline, placement), on a FakeClock; and,
// against a fake decode worker's gRPC server, the Releases it sends again.
#include "router/router_core.h"

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/server.h"
#include "gtest/gtest.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"
#include "worker_common/grpc_server.h"

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

// A fake worker's service served as a worker serves it
// (worker_common::StartGrpcServer: 127.0.0.1, a free port, the router's
// keepalive pings accepted — a bare server answers them with GOAWAY "too
// many pings" after a few seconds, ending a long call for its own reason).
// Its owner declares it last, so it shuts down (and no handler runs)
// before the rest of the owner goes.
class LocalServer {
 public:
  explicit LocalServer(grpc::Service* service)
      : running_(*worker_common::StartGrpcServer({.host = "127.0.0.1", .port = 0}, {service})) {}
  ~LocalServer() { running_.server->Shutdown(); }
  const std::string& address() const { return running_.address; }

 private:
  worker_common::RunningGrpcServer running_;
};

// A decode worker that answers every Reserve with `reserve_status` and
// every Release with `release_status`, and records the request ids of the
// Reserves and Releases it receives.
class FakeDecodeWorker final : public tandem::v1::DecodeWorker::Service {
 public:
  explicit FakeDecodeWorker(grpc::Status reserve_status, grpc::Status release_status = grpc::Status::OK)
      : reserve_status_(std::move(reserve_status)), release_status_(std::move(release_status)) {}
  std::string address() const { return server_.address(); }

  grpc::Status Reserve(grpc::ServerContext*, const tandem::v1::ReserveRequest* r,
                       tandem::v1::KvReservation*) override {
    if (before_reserve) before_reserve();
    absl::MutexLock lock(&mu_);
    reserves_.push_back(r->request_id());
    return reserve_status_;
  }
  // Runs (on a server thread) before each Reserve is answered. Set before
  // any request.
  std::function<void()> before_reserve;
  grpc::Status Release(grpc::ServerContext*, const tandem::v1::ReleaseRequest* r,
                       tandem::v1::ReleaseResponse*) override {
    absl::MutexLock lock(&mu_);
    releases_.push_back(r->request_id());
    return release_status_;
  }
  std::vector<std::string> reserves() {
    absl::MutexLock lock(&mu_);
    return reserves_;
  }
  std::vector<std::string> releases() {
    absl::MutexLock lock(&mu_);
    return releases_;
  }

 private:
  const grpc::Status reserve_status_;
  const grpc::Status release_status_;
  absl::Mutex mu_;
  std::vector<std::string> reserves_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> releases_ ABSL_GUARDED_BY(mu_);
  LocalServer server_{this};  // last: stops first
};

// A prefill worker whose Prefill calls wait until their reservation is
// provided (ProvideReservation), then answer with an end-of-generation
// first token (nothing to decode), or until they are cancelled. Records
// what it was sent.
class FakePrefillWorker final : public tandem::v1::PrefillWorker::CallbackService {
 public:
  // `provide_status`: how every ProvideReservation is answered (an error
  // leaves the Prefill waiting).
  explicit FakePrefillWorker(grpc::Status provide_status = grpc::Status::OK)
      : provide_status_(std::move(provide_status)) {}
  std::string address() const { return server_.address(); }

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext*, const tandem::v1::PrefillRequest* r,
                                    tandem::v1::PrefillResponse* response) override {
    auto* call = new Waiting(this, response);
    absl::MutexLock lock(&mu_);
    prefills_.push_back(*r);
    waiting_[Key(r->request_id(), r->attempt())] = call;
    return call;
  }
  grpc::ServerUnaryReactor* ProvideReservation(grpc::CallbackServerContext* context,
                                               const tandem::v1::ProvideReservationRequest* r,
                                               tandem::v1::ProvideReservationResponse*) override {
    {
      absl::MutexLock lock(&mu_);
      ++provided_;
      auto it = waiting_.find(Key(r->request_id(), r->attempt()));
      if (it != waiting_.end() && provide_status_.ok()) {
        it->second->response->set_first_token_is_eos(true);
        it->second->Finish(grpc::Status::OK);
        waiting_.erase(it);
      }
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(provide_status_);
    return reactor;
  }
  std::vector<tandem::v1::PrefillRequest> prefills() {
    absl::MutexLock lock(&mu_);
    return prefills_;
  }
  int provided() {
    absl::MutexLock lock(&mu_);
    return provided_;
  }
  int cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

 private:
  struct Waiting final : grpc::ServerUnaryReactor {
    Waiting(FakePrefillWorker* w, tandem::v1::PrefillResponse* r) : worker(w), response(r) {}
    void OnCancel() override {
      absl::MutexLock lock(&worker->mu_);
      // Whoever takes it out of waiting_ finishes it.
      if (!absl::erase_if(worker->waiting_, [&](const auto& e) { return e.second == this; })) return;
      ++worker->cancelled_;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
    void OnDone() override { delete this; }
    FakePrefillWorker* const worker;
    tandem::v1::PrefillResponse* const response;
  };
  static std::string Key(const std::string& id, int32_t attempt) {
    return id + "#" + std::to_string(attempt);
  }

  const grpc::Status provide_status_;
  absl::Mutex mu_;
  std::vector<tandem::v1::PrefillRequest> prefills_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Waiting*> waiting_ ABSL_GUARDED_BY(mu_);
  int provided_ ABSL_GUARDED_BY(mu_) = 0;
  int cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  LocalServer server_{this};  // last: stops first
};

class ReleaseRetryTest : public RouterCoreTest {
 protected:
  // Registers `decode` as "d1" and prefill_ as "p1".
  void RegisterPair(FakeDecodeWorker& decode) {
    for (auto [id, role, address] :
         {std::tuple{"d1", tandem::v1::WORKER_ROLE_DECODE, decode.address()},
          std::tuple{"p1", tandem::v1::WORKER_ROLE_PREFILL, prefill_->address()}}) {
      tandem::v1::RegisterRequest r;
      r.set_worker_id(id);
      r.set_role(role);
      r.set_address(address);
      r.set_model_id("m");
      r.set_block_size(16);
      ASSERT_OK(registry_.Register(r));
    }
  }
  // Longer than aggregate_max_uncached_tokens: disaggregated, so Reserve.
  static tandem::v1::GenerateRequest DisaggregatedRequest() {
    tandem::v1::GenerateRequest request = Request();
    for (int i = 0; i < 39; ++i) request.mutable_prompt_token_ids()->add_ids(6 + i);
    return request;
  }
  // RegisterPair, then runs one request until it ends.
  absl::Status RunAgainst(FakeDecodeWorker& decode) {
    RegisterPair(decode);
    auto recorder = std::make_shared<Recorder>();
    core_->Start(DisaggregatedRequest(), clock_.Now() + absl::Minutes(1), recorder);
    EXPECT_TRUE(
        ::tandem::testing::PollUntil([&] { return recorder->status().has_value(); }, absl::Seconds(20)));
    // The call object is gone once nothing holds it (its last callback ran).
    EXPECT_TRUE(::tandem::testing::PollUntil([&] { return core_->in_flight() == 0; }, absl::Seconds(20)));
    return recorder->status().value_or(absl::UnknownError("not done"));
  }
  // Calls RetryReleases every 10 ms for `d`: longer than the 1 s a
  // release waits between tries, so a Release that should not go would.
  void RetryFor(absl::Duration d) {
    const absl::Time end = absl::Now() + d;
    while (absl::Now() < end) {
      core_->RetryReleases();
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  void Heartbeat(const std::string& id) {
    tandem::v1::HeartbeatRequest h;
    h.set_worker_id(id);
    EXPECT_TRUE(registry_.Heartbeat(h));
  }

  // Replaced by a test that wants another one, before RegisterPair.
  std::unique_ptr<FakePrefillWorker> prefill_ = std::make_unique<FakePrefillWorker>();
};

// A Reserve whose worker did not answer (UNAVAILABLE: stopped, unreachable)
// may have left a reservation there: once the call is over and the worker
// heartbeats again, the router releases that request id on it, once.
TEST_F(ReleaseRetryTest, AReserveWithoutAnAnswerIsReleasedWhenTheWorkerIsBack) {
  FakeDecodeWorker decode(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stopped"));
  EXPECT_THAT(RunAgainst(decode), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_EQ(decode.reserves().size(), 1u);
  // Out of the rotation (the Reserve failed as a gone worker's): nothing sent.
  RetryFor(absl::Milliseconds(1500));
  EXPECT_TRUE(decode.releases().empty());
  Heartbeat("d1");
  ASSERT_TRUE(::tandem::testing::PollUntil(
      [&] {
        core_->RetryReleases();
        return !decode.releases().empty();
      },
      absl::Seconds(20), absl::Milliseconds(10)));
  EXPECT_EQ(decode.releases(), decode.reserves());
  // Answered: never sent again.
  RetryFor(absl::Milliseconds(1500));
  EXPECT_EQ(decode.releases().size(), 1u);
}

// A worker back in the rotation that keeps failing the Release is asked
// again at most once a second, and no more once the reservation's TTL (on
// its side) has freed it.
TEST_F(ReleaseRetryTest, AFailingReleaseIsRetriedAtMostOnceASecondUntilTheTtl) {
  RouterOptions options;
  options.clock = &clock_;
  options.reservation_ttl = absl::Seconds(1);  // tracked for 2 s
  core_ = std::make_unique<RouterCore>(options, &model_, &registry_);
  FakeDecodeWorker decode(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stopped"),
                          grpc::Status(grpc::StatusCode::UNAVAILABLE, "still stopped"));
  const absl::Time start = absl::Now();
  EXPECT_THAT(RunAgainst(decode), StatusIs(absl::StatusCode::kUnavailable));
  Heartbeat("d1");
  size_t at_expiry = 0;
  while (absl::Now() < start + absl::Seconds(4)) {
    core_->RetryReleases();
    if (absl::Now() < start + absl::Seconds(2)) at_expiry = decode.releases().size();
    absl::SleepFor(absl::Milliseconds(10));
  }
  const size_t sent = decode.releases().size();
  EXPECT_GE(sent, 1u);             // tried once the call was gone and the worker back
  EXPECT_LE(sent, 2u);             // within the 2 s it was tracked: at most once a second
  EXPECT_LE(sent, at_expiry + 1);  // none later than the one in flight at expiry
}

// Decode admission: while the decode worker's reported load leaves no room
// under the TPOT limit, a request waits at the router (no Reserve reaches
// the worker); a report with room dispatches it at once.
TEST_F(ReleaseRetryTest, ARequestWaitsForDecodeRoomAndGoesWhenALoadReportShowsIt) {
  RouterOptions options;
  options.clock = &clock_;
  options.decode_tpot_limit_ms = 20;
  core_ = std::make_unique<RouterCore>(options, &model_, &registry_);
  FakeDecodeWorker decode(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "decode_full: no blocks"));
  ASSERT_NO_FATAL_FAILURE(RegisterPair(decode));
  // 10 ms steps of 1 at 12 running: the next request's predicted TPOT is
  // 130 ms, past 20, and 12 is past the 8 always taken: no room.
  auto report = [&](int32_t running) {
    tandem::v1::HeartbeatRequest h;
    h.set_worker_id("d1");
    h.mutable_load()->set_running(running);
    h.mutable_load()->set_decode_step_ms(10);
    h.mutable_load()->set_decode_batch(1);
    ASSERT_TRUE(registry_.Heartbeat(h));
    core_->OnDecodeRoomChanged();
  };
  report(12);
  auto recorder = std::make_shared<Recorder>();
  core_->Start(DisaggregatedRequest(), clock_.Now() + absl::Minutes(1), recorder);
  EXPECT_EQ(core_->flow_queue().stats().waiting, 1);
  report(12);  // still none
  EXPECT_EQ(core_->flow_queue().stats().waiting, 1);
  EXPECT_TRUE(decode.reserves().empty());
  EXPECT_FALSE(recorder->status().has_value());
  report(0);  // room: dispatched, its Reserve reaches the worker
  EXPECT_EQ(core_->flow_queue().stats().waiting, 0);
  ASSERT_TRUE(
      ::tandem::testing::PollUntil([&] { return recorder->status().has_value(); }, absl::Seconds(20)));
  EXPECT_EQ(decode.reserves().size(), 1u);
  EXPECT_TRUE(::tandem::testing::PollUntil([&] { return core_->in_flight() == 0; }, absl::Seconds(20)));
}

// A Reserve the worker refused (RESOURCE_EXHAUSTED: no room) made nothing to
// release.
TEST_F(ReleaseRetryTest, ARefusedReserveIsNotReleased) {
  FakeDecodeWorker decode(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "decode_full: no blocks"));
  EXPECT_FALSE(RunAgainst(decode).ok());
  ASSERT_EQ(decode.reserves().size(), 1u);
  Heartbeat("d1");
  RetryFor(absl::Milliseconds(1500));
  EXPECT_TRUE(decode.releases().empty());
  // The prefill that went with the Reserve was cancelled for it; no
  // reservation was handed over.
  ASSERT_EQ(prefill_->prefills().size(), 1u);
  EXPECT_TRUE(prefill_->prefills()[0].reservation_follows());
  EXPECT_EQ(prefill_->cancelled(), 1);
  EXPECT_EQ(prefill_->provided(), 0);
}

// The decode worker reserves while the prefill worker computes: the Prefill
// (saying its reservation follows) reaches the prefill worker before the
// Reserve is answered, and the reservation then follows it. The old order
// (TANDEM_RESERVE_BEFORE_PREFILL=1) sends the Prefill only after the answer,
// so this Reserve would wait its 5 s for nothing.
TEST_F(ReleaseRetryTest, ThePrefillIsSentBeforeTheReserveIsAnsweredAndTheReservationFollows) {
  FakeDecodeWorker decode(grpc::Status::OK);
  std::atomic<bool> prefill_first{false};
  decode.before_reserve = [&] {
    prefill_first =
        ::tandem::testing::PollUntil([&] { return !prefill_->prefills().empty(); }, absl::Seconds(5));
  };
  EXPECT_OK(RunAgainst(decode));
  EXPECT_TRUE(prefill_first);
  ASSERT_EQ(prefill_->prefills().size(), 1u);
  const tandem::v1::PrefillRequest& sent = prefill_->prefills()[0];
  EXPECT_TRUE(sent.reservation_follows());
  EXPECT_FALSE(sent.has_reservation());
  EXPECT_EQ(sent.attempt(), 1);
  EXPECT_EQ(prefill_->provided(), 1);
  EXPECT_EQ(prefill_->cancelled(), 0);
  // An end-of-generation first token: nothing to decode, the reservation
  // is given back.
  EXPECT_TRUE(::tandem::testing::PollUntil([&] { return decode.releases().size() == 1u; }, absl::Seconds(5)));
  EXPECT_EQ(decode.releases(), decode.reserves());
}

// A reservation the router could not hand over leaves the Prefill waiting
// for nothing: the router cancels it, releases the reservation, takes that
// prefill worker out of the rotation as gone (the handover failed
// UNAVAILABLE) and retries without it — here on the decode worker alone
// (aggregated), which this fake cannot do, so the request ends UNAVAILABLE.
TEST_F(ReleaseRetryTest, AFailedHandoverCancelsThePrefillAndReleasesTheReservation) {
  prefill_ = std::make_unique<FakePrefillWorker>(grpc::Status(grpc::StatusCode::UNAVAILABLE, "going away"));
  FakeDecodeWorker decode(grpc::Status::OK);
  EXPECT_THAT(RunAgainst(decode), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(prefill_->provided(), 1);
  EXPECT_EQ(prefill_->cancelled(), 1);
  EXPECT_EQ(prefill_->prefills().size(), 1u);  // the retry did not go back to it
  ASSERT_EQ(decode.reserves().size(), 1u);
  EXPECT_TRUE(::tandem::testing::PollUntil([&] { return decode.releases().size() == 1u; }, absl::Seconds(5)));
  EXPECT_EQ(decode.releases(), decode.reserves());
}

// With reserve_during_prefill off, the Prefill carries the reservation and
// goes once the Reserve answered.
TEST_F(ReleaseRetryTest, WithoutTheOverlapThePrefillCarriesTheReservation) {
  RouterOptions options;
  options.clock = &clock_;
  options.reserve_during_prefill = false;
  core_ = std::make_unique<RouterCore>(options, &model_, &registry_);
  FakeDecodeWorker decode(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "decode_full: no blocks"));
  EXPECT_FALSE(RunAgainst(decode).ok());
  EXPECT_EQ(decode.reserves().size(), 1u);
  EXPECT_TRUE(prefill_->prefills().empty());  // never sent: the Reserve failed first
}

}  // namespace
}  // namespace tandem::router
