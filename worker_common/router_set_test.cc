#include "worker_common/router_set.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "tests/testing/poll.h"

namespace tandem::worker_common {
namespace {

using engine::KvEventLog;
using engine::KvTier;

// A router as a worker sees it: records registrations, answers heartbeats,
// and keeps every KV-event batch it receives.
class FakeRouter final : public tandem::v1::WorkerRegistry::Service {
 public:
  struct Received {
    uint64_t first = 0, last = 0;
    std::vector<uint64_t> hashes;
  };

  explicit FakeRouter(bool refuse = false) : refuse_(refuse) {}

  // Listens on `port` (0: any free port).
  void Serve(int port = 0) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void Shutdown() {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    server_.reset();
  }
  ~FakeRouter() override { Shutdown(); }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }

  grpc::Status Register(grpc::ServerContext*, const tandem::v1::RegisterRequest* r,
                        tandem::v1::RegisterResponse*) override {
    if (refuse_) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model_id: serving another model");
    absl::MutexLock lock(&mu_);
    registered_.push_back(r->worker_id());
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const tandem::v1::HeartbeatRequest*,
                         tandem::v1::HeartbeatResponse* response) override {
    absl::MutexLock lock(&mu_);
    response->set_known(!registered_.empty());
    return grpc::Status::OK;
  }
  grpc::Status PublishKvEvents(grpc::ServerContext*, grpc::ServerReader<tandem::v1::KvEventBatch>* reader,
                               tandem::v1::KvEventsAck*) override {
    tandem::v1::KvEventBatch batch;
    while (reader->Read(&batch)) {
      Received got{batch.first_sequence_number(), batch.sequence_number(), {}};
      for (const auto& e : batch.events())
        got.hashes.insert(got.hashes.end(), e.block_hashes().begin(), e.block_hashes().end());
      absl::MutexLock lock(&mu_);
      received_.push_back(std::move(got));
    }
    return grpc::Status::OK;
  }

  bool AwaitRegistered(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !registered_.empty(); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
  // Waits until a batch ending at `last` or later has arrived; returns all.
  std::vector<Received> AwaitEventsThrough(uint64_t last, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !received_.empty() && received_.back().last >= last;
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    return received_;
  }
  std::vector<std::string> registered() {
    absl::MutexLock lock(&mu_);
    return registered_;
  }

 private:
  const bool refuse_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<std::string> registered_ ABSL_GUARDED_BY(mu_);
  std::vector<Received> received_ ABSL_GUARDED_BY(mu_);
};

RouterSet::Options SetOptions(std::string routers) {
  RouterSet::Options o;
  o.routers = std::move(routers);
  o.membership.registration.set_worker_id("w-1");
  o.membership.heartbeat_interval = absl::Milliseconds(20);
  return o;
}

// The numbers of a router's batches follow each other from `first` on, and
// their hashes are `want` in order.
void ExpectContiguous(const std::vector<FakeRouter::Received>& got, uint64_t first,
                      std::vector<uint64_t> want) {
  std::vector<uint64_t> hashes;
  uint64_t next = first;
  for (const FakeRouter::Received& r : got) {
    EXPECT_EQ(r.first, next);
    next = r.last + 1;
    hashes.insert(hashes.end(), r.hashes.begin(), r.hashes.end());
  }
  EXPECT_EQ(hashes, want);
}

TEST(ResolveRouterTargetsTest, ListsLiteralsAndNamesAndRejectsMalformedEntries) {
  auto t = ResolveRouterTargets(" 127.0.0.1:5000,[::1]:6000 , dns:///127.0.0.2:7000");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<std::string>{"127.0.0.1:5000", "127.0.0.2:7000", "[::1]:6000"}));
  // A name with one (IPv4) address keeps its name: "localhost" is one router.
  t = ResolveRouterTargets("localhost:5000");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, (std::vector<std::string>{"localhost:5000"}));
  for (const char* bad : {"", "router", "router:0", "router:http", "[::1]6000", "a:1:2"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ResolveRouterTargets(bad).status())) << bad;
  }
}

TEST(RouterSetTest, EveryRouterGetsTheRegistrationAndTheSameNumberedEvents) {
  FakeRouter a, b;
  a.Serve();
  b.Serve();
  KvEventLog log;
  RouterSet routers(SetOptions(a.target() + "," + b.target()), &log);
  ASSERT_TRUE(routers.Start().ok());
  ASSERT_TRUE(routers.AwaitRegistration(absl::Seconds(10)).ok());
  ASSERT_TRUE(a.AwaitRegistered(absl::Seconds(10)));
  ASSERT_TRUE(b.AwaitRegistered(absl::Seconds(10)));
  EXPECT_EQ(a.registered().front(), "w-1");
  EXPECT_EQ(b.registered().front(), "w-1");
  EXPECT_EQ(routers.targets().size(), 2u);
  for (uint64_t h = 1; h <= 5; ++h) log.Stored(h, KvTier::kHbm);
  log.Removed(2, KvTier::kHbm);
  ExpectContiguous(a.AwaitEventsThrough(6, absl::Seconds(10)), 1, {1, 2, 3, 4, 5, 2});
  ExpectContiguous(b.AwaitEventsThrough(6, absl::Seconds(10)), 1, {1, 2, 3, 4, 5, 2});
  routers.Stop();
}

TEST(RouterSetTest, ARouterThatComesUpLateIsJoinedAndGetsTheEventsKeptForIt) {
  FakeRouter a, late;
  a.Serve();
  late.Serve();  // to learn a free port, then away
  const std::string late_target = late.target();
  const int late_port = std::stoi(late_target.substr(late_target.rfind(':') + 1));
  late.Shutdown();
  KvEventLog log;
  RouterSet routers(SetOptions(a.target() + "," + late_target), &log);
  ASSERT_TRUE(routers.Start().ok());
  ASSERT_TRUE(routers.AwaitRegistration(absl::Seconds(10)).ok());  // one router answering is enough
  for (uint64_t h = 1; h <= 3; ++h) log.Stored(h, KvTier::kDram);
  ExpectContiguous(a.AwaitEventsThrough(3, absl::Seconds(10)), 1, {1, 2, 3});
  FakeRouter back;
  back.Serve(late_port);
  ASSERT_TRUE(back.AwaitRegistered(absl::Seconds(10)));
  log.Stored(4, KvTier::kDram);
  // The events appended while it was away were kept for its consumer.
  ExpectContiguous(back.AwaitEventsThrough(4, absl::Seconds(10)), 1, {1, 2, 3, 4});
  EXPECT_EQ(routers.registered(), 2);
  routers.Stop();
}

TEST(RouterSetTest, RefusedByEveryRouterIsAnErrorNamingTheReason) {
  FakeRouter refusing(/*refuse=*/true);
  refusing.Serve();
  KvEventLog log;
  RouterSet routers(SetOptions(refusing.target()), &log);
  ASSERT_TRUE(routers.Start().ok());
  grpc::Status s = routers.AwaitRegistration(absl::Seconds(10));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("another model"), std::string::npos) << s.error_message();
  RouterSet malformed(SetOptions("no-port"), &log);
  EXPECT_TRUE(absl::IsInvalidArgument(malformed.Start()));
}

TEST(RouterSetTest, ResolvingAgainJoinsNewRoutersAndLeavesGoneOnes) {
  FakeRouter a, b;
  a.Serve();
  b.Serve();
  absl::Mutex mu;
  std::vector<std::string> answer = {a.target()};
  RouterSet::Options o = SetOptions("routers.example:5000");
  o.resolve_interval = absl::Milliseconds(20);
  o.resolve = [&](const std::string&) -> absl::StatusOr<std::vector<std::string>> {
    absl::MutexLock lock(&mu);
    return answer;
  };
  KvEventLog log;
  RouterSet routers(o, &log);
  ASSERT_TRUE(routers.Start().ok());
  ASSERT_TRUE(routers.AwaitRegistration(absl::Seconds(10)).ok());
  {
    absl::MutexLock lock(&mu);
    answer = {a.target(), b.target()};  // a pod was added
  }
  ASSERT_TRUE(b.AwaitRegistered(absl::Seconds(10)));
  {
    absl::MutexLock lock(&mu);
    answer = {b.target()};  // a's pod went away
  }
  EXPECT_TRUE(testing::PollUntil([&] { return routers.targets().size() == 1; }, absl::Seconds(10)));
  EXPECT_EQ(routers.targets(), (std::vector<std::string>{b.target()}));
  routers.Stop();
}

}  // namespace
}  // namespace tandem::worker_common
