// The request path in one process: a router (RouterCore with its gRPC
// services, as `tandem router` assembles them) and prefill and decode
// WorkerProcesses, all on 127.0.0.1:0 with real gRPC between them and real
// UCX writes of the KV blocks. Faults are injected into real RPCs by server
// interceptors on the workers (a Reserve that fails, a Prefill that returns
// ABORTED as a failed transfer does, a prefill response whose block checksum
// is wrong) and by holding or removing a worker (a decode worker that stops
// mid-stream). The router's registry and core run on a FakeClock, so no
// worker leaves the rotation because this machine is slow, and nothing here
// sleeps to synchronise: each step waits for the event it needs, with a
// deadline.
//
// The subprocess cluster tests (cluster_test, up_test) stay the end-to-end
// layer; this is the layer where a fault can be aimed at one call.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "engine/engine.h"
#include "engine/engine_runner.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/server_interceptor.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/model_info.h"
#include "router/router_core.h"
#include "router/router_service.h"
#include "router/worker_registry.h"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tandem/v1/worker.pb.h"
#include "tests/testing/device.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"
#include "worker/worker_process.h"
#include "worker_common/grpc_server.h"

namespace tandem {
namespace {

using worker::WorkerProcess;

constexpr char kModel[] = "synthetic:tiny";
constexpr char kReserve[] = "/tandem.v1.DecodeWorker/Reserve";
constexpr char kPrefill[] = "/tandem.v1.PrefillWorker/Prefill";
constexpr char kRenew[] = "/tandem.v1.DecodeWorker/Renew";
// Bound on every request and every wait in this file.
constexpr absl::Duration kDeadline = absl::Seconds(60);

// Faults to apply to the next matching calls, shared by every worker's
// interceptors; records which worker each fault hit.
class Faults {
 public:
  // The next `count` calls of `method` on any worker end with `status`
  // instead of the handler's (the handler still runs: a reply lost on the
  // way, which is what a caller sees of a worker that fails late).
  void FailNext(const std::string& method, grpc::Status status, int count = 1) {
    absl::MutexLock lock(&mu_);
    statuses_[method] = {count, std::move(status)};
  }
  // The next `count` Prefill responses carry a wrong CRC32C for their first
  // transferred block.
  void CorruptNextChecksums(int count = 1) {
    absl::MutexLock lock(&mu_);
    corrupt_checksums_ = count;
  }

  std::optional<grpc::Status> TakeStatus(const std::string& method, const std::string& worker) {
    absl::MutexLock lock(&mu_);
    auto it = statuses_.find(method);
    if (it == statuses_.end() || it->second.first == 0) return std::nullopt;
    --it->second.first;
    hits_.push_back(worker + " " + method);
    return it->second.second;
  }
  bool TakeChecksumCorruption(const std::string& worker) {
    absl::MutexLock lock(&mu_);
    if (corrupt_checksums_ == 0) return false;
    --corrupt_checksums_;
    hits_.push_back(worker + " checksum");
    return true;
  }
  // Every call's end, counted per method (faulted or not).
  void CountCall(const std::string& method) {
    absl::MutexLock lock(&mu_);
    ++calls_[method];
  }
  // Waits until `method` has ended `n` times; false at the deadline.
  bool AwaitCalls(const std::string& method, int n, absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_[method] >= n; };
    return mu_.AwaitWithDeadline(absl::Condition(&reached), deadline);
  }
  // "WORKER METHOD" or "WORKER checksum" for each fault applied, in order.
  std::vector<std::string> hits() {
    absl::MutexLock lock(&mu_);
    return hits_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::pair<int, grpc::Status>> statuses_ ABSL_GUARDED_BY(mu_);
  int corrupt_checksums_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> hits_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
};

class FaultInterceptor final : public grpc::experimental::Interceptor {
 public:
  FaultInterceptor(Faults* faults, std::string worker, std::string method)
      : faults_(faults), worker_(std::move(worker)), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_MESSAGE) && method_ == kPrefill) {
      const auto* response = static_cast<const tandem::v1::PrefillResponse*>(methods->GetSendMessage());
      if (response != nullptr && response->kv_block_crc32c_size() > 0 &&
          faults_->TakeChecksumCorruption(worker_)) {
        corrupted_ = *response;
        corrupted_.set_kv_block_crc32c(0, corrupted_.kv_block_crc32c(0) ^ 0x5a5a5a5au);
        methods->ModifySendMessage(&corrupted_);
      }
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS)) {
      faults_->CountCall(method_);
      if (std::optional<grpc::Status> status = faults_->TakeStatus(method_, worker_)) {
        methods->ModifySendStatus(*status);
      }
    }
    methods->Proceed();
  }

 private:
  Faults* const faults_;
  const std::string worker_;
  const std::string method_;
  tandem::v1::PrefillResponse corrupted_;  // outlives the send it replaces
};

class FaultInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  FaultInterceptorFactory(Faults* faults, std::string worker) : faults_(faults), worker_(std::move(worker)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new FaultInterceptor(faults_, worker_, info->method());
  }

 private:
  Faults* const faults_;
  const std::string worker_;
};

// The router as `tandem router` assembles it (cli/router_command.cc), on a
// FakeClock.
class InProcessRouter {
 public:
  explicit InProcessRouter(FakeClock* clock, router::RouterOptions options = {}) {
    absl::StatusOr<std::unique_ptr<model::ModelInfo>> info = model::LoadModelInfo(kModel);
    EXPECT_TRUE(info.ok()) << info.status();
    if (!info.ok()) return;
    model_ = *std::move(info);
    registry_ = std::make_unique<router::WorkerRegistry>(
        router::WorkerRegistry::Options{.model_id = model_->config.model_id, .clock = clock});
    options.clock = clock;
    options.placement.policy = router::Policy::kRoundRobin;
    core_ = std::make_unique<router::RouterCore>(options, model_.get(), registry_.get());
    core_->StartBackground();
    generate_ = std::make_unique<router::GenerateService>(core_.get());
    registry_service_ = std::make_unique<router::RegistryService>(registry_.get(), core_.get());
    absl::StatusOr<worker_common::RunningGrpcServer> server =
        worker_common::StartGrpcServer({}, {generate_.get(), registry_service_.get()});
    EXPECT_TRUE(server.ok()) << server.status();
    if (server.ok()) server_ = *std::move(server);
  }
  ~InProcessRouter() {
    if (server_.server != nullptr)
      server_.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    if (core_ != nullptr) core_->Stop();
  }

  const std::string& address() const { return server_.address; }
  router::WorkerRegistry& registry() { return *registry_; }
  router::RouterCore& core() { return *core_; }

 private:
  std::unique_ptr<model::ModelInfo> model_;
  std::unique_ptr<router::WorkerRegistry> registry_;
  std::unique_ptr<router::RouterCore> core_;
  std::unique_ptr<router::GenerateService> generate_;
  std::unique_ptr<router::RegistryService> registry_service_;
  worker_common::RunningGrpcServer server_;
};

// What a client got from one Generate stream.
struct Outcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  tandem::v1::GenerateSummary summary;
};

class RequestPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    router_ = std::make_unique<InProcessRouter>(&clock_);
    ASSERT_FALSE(router_->address().empty());
    stub_ = tandem::v1::Tandem::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }

  // A worker registered with the router (Create returns once it is).
  WorkerProcess* AddWorker(WorkerProcess::Role role, const std::string& id, int32_t max_step_tokens = 0) {
    WorkerProcess::Options options;
    if (max_step_tokens > 0) options.max_step_tokens = max_step_tokens;
    options.role = role;
    options.model = kModel;
    options.device = ::tandem::testing::TestDevice();
    options.worker_id = id;
    options.router = router_->address();
    options.kv_cache_bytes = size_t{16} << 20;
    options.metrics = &metrics_[id];
    options.server_interceptors = [this, id] {
      std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> v;
      v.push_back(std::make_unique<FaultInterceptorFactory>(&faults_, id));
      return v;
    };
    absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Create(std::move(options));
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return nullptr;
    workers_[id] = *std::move(worker);
    return workers_[id].get();
  }

  static tandem::v1::GenerateRequest Request(int32_t max_tokens) {
    tandem::v1::GenerateRequest request;
    // Three full blocks of 16 and a partial one: enough that the router
    // disaggregates (it aggregates only prompts the decode worker holds).
    for (int i = 0; i < 56; ++i) request.mutable_prompt_token_ids()->add_ids(3 + (i * 37) % 200);
    request.set_max_tokens(max_tokens);
    request.set_stop_at_eos(false);
    return request;
  }

  // Runs one Generate stream to its end. `on_first_chunk` runs (on this
  // thread) when the first tokens arrive.
  Outcome Generate(const tandem::v1::GenerateRequest& request,
                   const std::function<void()>& on_first_chunk = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kDeadline));
    std::unique_ptr<grpc::ClientReader<tandem::v1::GenerateResponse>> reader =
        stub_->Generate(&context, request);
    Outcome outcome;
    tandem::v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (response.has_chunk()) {
        const bool first = outcome.tokens.empty() && response.chunk().token_ids_size() > 0;
        outcome.tokens.insert(outcome.tokens.end(), response.chunk().token_ids().begin(),
                              response.chunk().token_ids().end());
        outcome.text += response.chunk().text();
        if (first && on_first_chunk) on_first_chunk();
      } else if (response.has_summary()) {
        outcome.summary = response.summary();
      }
    }
    outcome.status = reader->Finish();
    return outcome;
  }

  // The tokens an undisturbed cluster produces for `request` (computed by
  // this fixture's own workers: greedy decoding is batch-invariant, so a
  // request served from a cached prefix or by another worker gives the same).
  std::vector<int32_t> Reference(const tandem::v1::GenerateRequest& request) {
    Outcome outcome = Generate(request);
    EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
    return outcome.tokens;
  }

  // Runs `request` on `decode` ("decode-0"); once its first tokens reached
  // the client, decode-0's engine thread is held (a stuck device: nothing
  // more comes from it), `replacement` (if any) joins as a decode worker,
  // and decode-0 is shut down with the stream on it, as a supervisor would.
  Outcome LoseDecodeWorkerMidStream(WorkerProcess* decode, const tandem::v1::GenerateRequest& request,
                                    const std::string& replacement = "") {
    absl::Notification release_engine;
    std::thread shutdown;
    Outcome outcome = Generate(request, [&] {
      EXPECT_TRUE(decode->engine_runner()
                      .Post(
                          [&release_engine](engine::Engine&) {
                            release_engine.WaitForNotificationWithTimeout(kDeadline);
                            return absl::OkStatus();
                          },
                          absl::Now() + kDeadline)
                      .ok());
      if (!replacement.empty()) {
        EXPECT_NE(AddWorker(WorkerProcess::Role::kDecode, replacement), nullptr);
      }
      shutdown = std::thread([this] { workers_.erase("decode-0"); });
    });
    release_engine.Notify();
    EXPECT_TRUE(shutdown.joinable());
    if (shutdown.joinable()) shutdown.join();
    return outcome;
  }

  static double ProcessCounter(const std::string& name) {
    const std::string text = DefaultMetricsRegistry().RenderPrometheus();
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StartsWith(line, name + " ")) continue;
      double value = 0;
      if (absl::SimpleAtod(line.substr(name.size() + 1), &value)) return value;
    }
    return 0;
  }

  FakeClock clock_;
  Faults faults_;
  std::map<std::string, MetricsRegistry> metrics_;
  std::unique_ptr<InProcessRouter> router_;
  std::unique_ptr<tandem::v1::Tandem::Stub> stub_;
  std::map<std::string, std::unique_ptr<WorkerProcess>> workers_;
};

TEST_F(RequestPathTest, DisaggregatedRequestMatchesAggregatedDecode) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  const tandem::v1::GenerateRequest request = Request(12);
  Outcome split = Generate(request);
  ASSERT_TRUE(split.status.ok()) << split.status.error_message();
  EXPECT_EQ(split.summary.prefill_worker(), "prefill-0");
  EXPECT_EQ(split.summary.decode_worker(), "decode-0");
  ASSERT_EQ(split.tokens.size(), 12u);
  // Where the wait went: the flow queue and the Reserve are parts of queue_ms.
  const tandem::v1::Timings& t = split.summary.timings();
  ASSERT_TRUE(t.has_admission_ms());
  ASSERT_TRUE(t.has_reserve_ms());
  EXPECT_LE(t.admission_ms() + t.reserve_ms(), t.queue_ms());
  // Again, now that both workers hold the prompt's blocks in their prefix
  // caches: the same tokens (batch-invariant kernels, cached KV bit-exact).
  Outcome again = Generate(request);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.summary.usage().cached_tokens(), 48);
  EXPECT_EQ(again.tokens, split.tokens);
  EXPECT_TRUE(faults_.hits().empty());
}

// Chunk streaming: a prefill worker whose steps hold 16 tokens computes the
// 56-token prompt in four chunks and sends each chunk's finished block while
// the next computes; the decode worker then decodes exactly what one engine
// computing the whole prompt itself decodes.
TEST_F(RequestPathTest, ChunkStreamedKvDecodesLikeAnUnsplitPrompt) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0", /*max_step_tokens=*/16), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  const double streamed_before = ProcessCounter("tandem_worker_kv_streamed_bytes_total");
  const tandem::v1::GenerateRequest request = Request(12);
  Outcome split = Generate(request);
  ASSERT_TRUE(split.status.ok()) << split.status.error_message();
  EXPECT_EQ(split.summary.prefill_worker(), "prefill-0");
  // Blocks 0-2 went out with chunks 1-3; the partial block 3 after the last.
  EXPECT_GT(ProcessCounter("tandem_worker_kv_streamed_bytes_total"), streamed_before);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<model::LoadedModel> m, model::LoadModel(kModel));
  auto backend = kernels::CreateCpuBackend({.num_threads = 1});
  ASSERT_OK_AND_ASSIGN(auto llama, model::LlamaModel::Create(m->config, m->weights, backend.get()));
  ASSERT_OK_AND_ASSIGN(auto engine, engine::Engine::Create({.num_blocks = 64}, llama.get(), backend.get(),
                                                           m->tokenizer.get()));
  engine::EngineRequest local{.id = 1, .max_tokens = 12, .stop_at_eos = false};
  local.prompt_tokens.assign(request.prompt_token_ids().ids().begin(),
                             request.prompt_token_ids().ids().end());
  ASSERT_OK(engine->Add(std::move(local)));
  std::vector<int32_t> want;
  while (engine->HasWork()) {
    ASSERT_OK_AND_ASSIGN(std::vector<engine::SequenceUpdate> updates, engine->Step());
    for (const engine::SequenceUpdate& u : updates)
      want.insert(want.end(), u.new_tokens.begin(), u.new_tokens.end());
  }
  EXPECT_EQ(split.tokens, want);
  EXPECT_TRUE(faults_.hits().empty());
}

TEST_F(RequestPathTest, FailedReserveIsRetriedOnAnotherDecodeWorker) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  faults_.FailNext(kReserve, grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected: reserve failed"));
  Outcome outcome = Generate(Request(12));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  const std::vector<std::string> hits = faults_.hits();
  ASSERT_EQ(hits.size(), 1u);
  const std::string failed = hits[0].substr(0, hits[0].find(' '));
  EXPECT_NE(outcome.summary.decode_worker(), failed);
  EXPECT_FALSE(outcome.summary.decode_worker().empty());
  // The output is what an undisturbed cluster gives.
  EXPECT_EQ(outcome.tokens, Reference(Request(12)));
}

TEST_F(RequestPathTest, AbortedTransferIsRetriedWithANewReservation) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  // What a prefill worker answers when its UCX write to the reservation
  // failed: ABORTED, so the router releases the reservation and places the
  // request again on another decode worker.
  faults_.FailNext(kPrefill, grpc::Status(grpc::StatusCode::ABORTED, "injected: KV transfer failed"));
  Outcome outcome = Generate(Request(12));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(faults_.hits(), std::vector<std::string>{"prefill-0 " + std::string(kPrefill)});
  EXPECT_EQ(outcome.summary.prefill_worker(), "prefill-0");
  EXPECT_EQ(outcome.tokens, Reference(Request(12)));
}

TEST_F(RequestPathTest, ChecksumMismatchMakesTheDecodeWorkerPrefillItself) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  const double failures_before = ProcessCounter("tandem_worker_kv_transfer_checksum_failures_total");
  faults_.CorruptNextChecksums();
  Outcome outcome = Generate(Request(12));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(faults_.hits(), std::vector<std::string>{"prefill-0 checksum"});
  EXPECT_EQ(ProcessCounter("tandem_worker_kv_transfer_checksum_failures_total"), failures_before + 1);
  // The stream is unchanged: the decode worker dropped the transferred
  // blocks and computed the prompt itself.
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-1"), nullptr);
  EXPECT_EQ(outcome.tokens.size(), 12u);
  Outcome clean = Generate(Request(12));
  ASSERT_TRUE(clean.status.ok()) << clean.status.error_message();
  EXPECT_EQ(outcome.tokens, clean.tokens);
}

TEST_F(RequestPathTest, DecodeWorkerThatStopsMidStreamFailsTheStreamCleanly) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  // The decode worker stops mid-stream and is shut down; no other decode
  // worker exists.
  const Outcome outcome = LoseDecodeWorkerMidStream(decode, Request(1000));
  const std::vector<int32_t> sent = outcome.tokens;
  // Tokens had reached the client, so the router cannot retry: it fails the
  // stream with UNAVAILABLE naming the worker, within the deadline.
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE) << outcome.status.error_message();
  EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), "decode-0"))
      << outcome.status.error_message();
  EXPECT_GT(sent.size(), 0u);
  EXPECT_LT(sent.size(), 1000u);
  // With no decode worker left, a new request is refused at once.
  Outcome none = Generate(Request(4));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAVAILABLE) << none.status.error_message();
  // A new decode worker serves again, from the first token.
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  Outcome after = Generate(Request(8));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.summary.decode_worker(), "decode-1");
  ASSERT_EQ(after.tokens.size(), 8u);
  const size_t common = std::min(sent.size(), after.tokens.size());
  EXPECT_TRUE(std::equal(sent.begin(), sent.begin() + common, after.tokens.begin()))
      << "the interrupted stream's tokens are a prefix of an undisturbed one";
}

// Live migration (issue #17 item 2): a decode worker shut down mid-stream
// while another decode worker exists. The router re-prefills the prompt plus
// the tokens already sent and the stream resumes on the other worker, token
// for token what an undisturbed run sends: greedy, and seeded sampling (the
// new workers skip the draws of the tokens already sent).
class RequestPathMigrationTest : public RequestPathTest, public ::testing::WithParamInterface<bool> {
 protected:
  tandem::v1::GenerateRequest MigratingRequest() const {
    tandem::v1::GenerateRequest request = Request(160);
    if (GetParam()) {  // seeded sampling
      request.mutable_sampling()->set_temperature(0.9f);
      request.mutable_sampling()->set_seed(20261203);
    }
    return request;
  }
};

TEST_P(RequestPathMigrationTest, StreamMovesToAnotherDecodeWorkerAndMatchesAnUndisturbedRun) {
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  const tandem::v1::GenerateRequest request = MigratingRequest();
  const std::vector<int32_t> undisturbed = Reference(request);
  ASSERT_EQ(undisturbed.size(), 160u);
  static const std::string kMoved = "tandem_router_stream_migrations_total{outcome=\"moved\"}";
  const double moved_before = ProcessCounter(kMoved);
  const Outcome outcome = LoseDecodeWorkerMidStream(decode, request, "decode-1");
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.summary.migrations(), 1);
  EXPECT_EQ(outcome.summary.decode_worker(), "decode-1");
  EXPECT_EQ(outcome.summary.usage().completion_tokens(), 160);
  EXPECT_EQ(outcome.summary.usage().prompt_tokens(), 56);
  EXPECT_EQ(outcome.tokens, undisturbed);
  EXPECT_EQ(ProcessCounter(kMoved), moved_before + 1);
}

// With no other decode worker the stream cannot move: it fails cleanly,
// naming the lost worker (covered by
// DecodeWorkerThatStopsMidStreamFailsTheStreamCleanly); with migration off
// (max_migrations 0) as well.
TEST_P(RequestPathMigrationTest, MigrationOffFailsTheStreamNamingTheWorker) {
  router::RouterOptions options;
  options.max_migrations = 0;
  router_ = std::make_unique<InProcessRouter>(&clock_, options);
  stub_ = tandem::v1::Tandem::NewStub(
      grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  const Outcome outcome = LoseDecodeWorkerMidStream(decode, MigratingRequest(), "decode-1");
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE) << outcome.status.error_message();
  EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), "decode-0 failed mid-stream after"))
      << outcome.status.error_message();
}

INSTANTIATE_TEST_SUITE_P(GreedyAndSeeded, RequestPathMigrationTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("SeededSampling") : std::string("Greedy");
                         });

// Overload: a decode reservation lives as long as its request (the router
// renews it while the prefill queues), and the router's queue is bounded
// (what does not fit is refused at once).
class RequestPathOverloadTest : public RequestPathTest {
 protected:
  // Reservations lapse after kTtl unless renewed (every kTtl / 4); one
  // request may wait for its first token per prefill worker.
  static constexpr absl::Duration kTtl = absl::Seconds(1);

  void SetUp() override {
    router::RouterOptions options;
    options.reservation_ttl = kTtl;
    options.max_queued_prefills_per_worker = 1;
    router_ = std::make_unique<InProcessRouter>(&clock_, options);
    ASSERT_FALSE(router_->address().empty());
    stub_ = tandem::v1::Tandem::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }

  // Holds `worker`'s engine thread until `release` is notified: its queued
  // prefills wait, as behind a long queue.
  static void HoldEngine(WorkerProcess* worker, absl::Notification* release) {
    ASSERT_TRUE(worker->engine_runner()
                    .Post(
                        [release](engine::Engine&) {
                          release->WaitForNotificationWithTimeout(kDeadline);
                          return absl::OkStatus();
                        },
                        absl::Now() + kDeadline)
                    .ok());
  }

  // prefill-0 and decode-0, prefill-0's engine held until `release`.
  void AddPairHoldingPrefill(absl::Notification* release) {
    WorkerProcess* prefill = AddWorker(WorkerProcess::Role::kPrefill, "prefill-0");
    ASSERT_NE(prefill, nullptr);
    ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
    HoldEngine(prefill, release);
  }
};

TEST_F(RequestPathOverloadTest, ReservationOutlivesItsTtlWhileItsPrefillIsQueued) {
  const double expired_before = ProcessCounter("tandem_worker_reservations_expired_total");
  absl::Notification release;
  ASSERT_NO_FATAL_FAILURE(AddPairHoldingPrefill(&release));
  Outcome outcome;
  std::thread client([&] { outcome = Generate(Request(8)); });
  // Six renewals come from six ticks of the router's renewer, at least five
  // periods (5 x kTtl/4 > kTtl) after the reservation was made: unrenewed,
  // it would have lapsed while the prefill waited.
  const bool renewed = faults_.AwaitCalls(kRenew, 6, absl::Now() + kDeadline);
  release.Notify();
  client.join();
  ASSERT_TRUE(renewed);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.tokens.size(), 8u);
  EXPECT_EQ(outcome.summary.prefill_worker(), "prefill-0");
  EXPECT_EQ(ProcessCounter("tandem_worker_reservations_expired_total"), expired_before);
}

TEST_F(RequestPathOverloadTest, RequestBeyondTheQueueBoundIsRefusedAtOnce) {
  absl::Notification release;
  ASSERT_NO_FATAL_FAILURE(AddPairHoldingPrefill(&release));
  Outcome admitted;
  std::thread client([&] { admitted = Generate(Request(8)); });
  // The first request is admitted and waits for its prefill (its
  // reservation is being renewed): the queue of one is full.
  const bool waiting = faults_.AwaitCalls(kRenew, 1, absl::Now() + kDeadline);
  const absl::Time sent = absl::Now();
  Outcome refused = waiting ? Generate(Request(8)) : Outcome{};
  const absl::Duration took = absl::Now() - sent;
  release.Notify();
  client.join();
  ASSERT_TRUE(waiting);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << refused.status.error_message();
  EXPECT_TRUE(absl::StrContains(refused.status.error_message(), "router queue full"))
      << refused.status.error_message();
  EXPECT_TRUE(refused.tokens.empty());
  // At once: the held prefill would have kept a queued request until kDeadline.
  EXPECT_LT(took, absl::Seconds(5));
  ASSERT_TRUE(admitted.status.ok()) << admitted.status.error_message();
  EXPECT_EQ(admitted.tokens.size(), 8u);
  // The admitted request left the queue: the next one is served.
  Outcome after = Generate(Request(8));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
}

// Flow control (issue 18 item 5) through the real request path: with one
// prefill in flight per worker, later requests wait at the router; a
// higher-priority arrival to the full queue sheds the newest waiting
// request of a lower priority and is dispatched before the older one.
class RequestPathFlowControlTest : public RequestPathOverloadTest {
 protected:
  void SetUp() override {
    router::RouterOptions options;
    options.reservation_ttl = kTtl;
    options.max_queued_prefills_per_worker = 3;
    options.max_inflight_prefills_per_worker = 1;
    router_ = std::make_unique<InProcessRouter>(&clock_, options);
    ASSERT_FALSE(router_->address().empty());
    stub_ = tandem::v1::Tandem::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }
  bool AwaitQueue(int64_t running, int64_t waiting) {
    return tandem::testing::PollUntil(
        [&] {
          const router::FlowQueue::Stats s = router_->core().flow_queue().stats();
          return s.running == running && s.waiting == waiting;
        },
        kDeadline);
  }
};

TEST_F(RequestPathFlowControlTest, HigherPriorityShedsTheNewestLowerAndGoesFirst) {
  absl::Notification release;
  ASSERT_NO_FATAL_FAILURE(AddPairHoldingPrefill(&release));
  absl::Mutex mu;
  std::vector<std::string> first_tokens;  // request ids in the order their first token came
  auto run = [&](const std::string& id, int32_t priority, Outcome* out) {
    tandem::v1::GenerateRequest r = Request(4);
    r.set_request_id(id);
    r.set_priority(priority);
    *out = Generate(r, [&] {
      absl::MutexLock lock(&mu);
      first_tokens.push_back(id);
    });
  };
  Outcome a, b, c, d;
  std::thread ta(run, "a", 0, &a);  // dispatched; its prefill is held
  bool queued = AwaitQueue(1, 0);
  std::thread tb(run, "b", 0, &b);  // waits at the router
  queued = queued && AwaitQueue(1, 1);
  std::thread tc(run, "c", 0, &c);
  queued = queued && AwaitQueue(1, 2);  // full: 1 running + 2 waiting = 3
  std::thread td(run, "d", 5, &d);      // sheds c, the newest of priority 0
  tc.join();
  queued = queued && AwaitQueue(1, 2);
  release.Notify();
  ta.join();
  tb.join();
  td.join();
  ASSERT_TRUE(queued);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << c.status.error_message();
  EXPECT_TRUE(absl::StartsWith(c.status.error_message(), "lower_priority: ")) << c.status.error_message();
  EXPECT_TRUE(c.tokens.empty());
  for (const Outcome* o : {&a, &b, &d}) {
    ASSERT_TRUE(o->status.ok()) << o->status.error_message();
    EXPECT_EQ(o->tokens.size(), 4u);
  }
  EXPECT_EQ(first_tokens, (std::vector<std::string>{"a", "d", "b"}));
  EXPECT_EQ(router_->core().queued_prefills(), 0);
}

// A tenant below its share of the in-flight limit is not held behind
// another tenant's running prefills: its request goes to the worker past
// the limit (the worker's engine admits it before the other tenant's
// queued prompts: engine_test HigherPriorityFirstThenTenantsShareAdmissions).
TEST_F(RequestPathFlowControlTest, LightTenantIsDispatchedPastTheLimit) {
  absl::Notification release;
  ASSERT_NO_FATAL_FAILURE(AddPairHoldingPrefill(&release));
  auto run = [&](const std::string& id, const std::string& tenant, Outcome* out) {
    tandem::v1::GenerateRequest r = Request(4);
    r.set_request_id(id);
    r.set_tenant(tenant);
    *out = Generate(r);
  };
  Outcome a, b, light;
  std::thread ta(run, "a", "heavy", &a);  // dispatched; its prefill is held
  bool queued = AwaitQueue(1, 0);
  std::thread tb(run, "b", "heavy", &b);  // heavy is at its limit: waits
  queued = queued && AwaitQueue(1, 1);
  std::thread tl(run, "l", "light", &light);  // below its share: dispatched
  queued = queued && AwaitQueue(2, 1);
  release.Notify();
  for (std::thread* t : {&ta, &tb, &tl}) t->join();
  ASSERT_TRUE(queued);
  for (const Outcome* o : {&a, &b, &light}) {
    ASSERT_TRUE(o->status.ok()) << o->status.error_message();
    EXPECT_EQ(o->tokens.size(), 4u);
  }
  EXPECT_EQ(router_->core().queued_prefills(), 0);
}

// Gray failures (issue 17): a decode worker that stays alive but makes no
// progress. Its engine thread is held after the first tokens (a stuck
// device, or SIGSTOP); the router notices it by its progress deadline or
// its heartbeat deadline, on the FakeClock, fails the stream cleanly long
// before the request's deadline, takes the worker out of the rotation, and
// lets it back once it heartbeats (and, after a stall, once its hold ends).
class RequestPathGrayFailureTest : public RequestPathTest {
 protected:
  // The progress deadline of the stall test: shorter than the heartbeat
  // deadline (3 x 500 ms), so advancing past it says nothing about heartbeats.
  static constexpr absl::Duration kStall = absl::Seconds(1);
  // Detection must come within one sweep (250 ms) of the deadline; the
  // bound leaves room for a loaded machine, and is far below kDeadline.
  static constexpr absl::Duration kDetectionBound = absl::Seconds(3);

  // Each test starts its router with its own options.
  void SetUp() override {}
  void StartRouter(const router::RouterOptions& options) {
    router_ = std::make_unique<InProcessRouter>(&clock_, options);
    ASSERT_FALSE(router_->address().empty());
    stub_ = tandem::v1::Tandem::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }

  // Loses a worker's heartbeats (and its attempts to register again) on the
  // way to the router while muted: the worker is alive, the router does not
  // hear from it.
  class HeartbeatMute final : public grpc::experimental::ClientInterceptorFactoryInterface {
   public:
    void Set(bool muted) { muted_ = muted; }
    grpc::experimental::Interceptor* CreateClientInterceptor(
        grpc::experimental::ClientRpcInfo* info) override {
      return new Interceptor(this, info->method());
    }

   private:
    class Interceptor final : public grpc::experimental::Interceptor {
     public:
      Interceptor(HeartbeatMute* mute, std::string method) : mute_(mute), method_(std::move(method)) {}
      void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
        if (mute_->muted_ && methods->QueryInterceptionHookPoint(
                                 grpc::experimental::InterceptionHookPoints::PRE_SEND_MESSAGE)) {
          // The router answers an unknown id with known=false and refuses a
          // registration for another model: nothing the worker sends counts.
          if (method_ == "/tandem.v1.WorkerRegistry/Heartbeat") {
            heartbeat_ = *static_cast<const tandem::v1::HeartbeatRequest*>(methods->GetSendMessage());
            heartbeat_.set_worker_id("muted:" + heartbeat_.worker_id());
            methods->ModifySendMessage(&heartbeat_);
          } else if (method_ == "/tandem.v1.WorkerRegistry/Register") {
            register_ = *static_cast<const tandem::v1::RegisterRequest*>(methods->GetSendMessage());
            register_.set_model_id("muted");
            methods->ModifySendMessage(&register_);
          }
        }
        methods->Proceed();
      }

     private:
      HeartbeatMute* const mute_;
      const std::string method_;
      tandem::v1::HeartbeatRequest heartbeat_;  // outlive the sends they replace
      tandem::v1::RegisterRequest register_;
    };
    std::atomic<bool> muted_{false};
  };

  // A decode worker whose channel to the router passes through `mute`
  // (shared: the worker's heartbeat thread outlives the test body).
  WorkerProcess* AddMutableDecodeWorker(const std::string& id, std::shared_ptr<HeartbeatMute> mute) {
    WorkerProcess::Options options;
    options.role = WorkerProcess::Role::kDecode;
    options.model = kModel;
    options.device = ::tandem::testing::TestDevice();
    options.worker_id = id;
    options.router = router_->address();
    options.kv_cache_bytes = size_t{16} << 20;
    options.metrics = &metrics_[id];
    options.channel_factory = [mute](const std::string& target) {
      std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
      interceptors.push_back(std::make_unique<Forwarder>(mute));
      return grpc::experimental::CreateCustomChannelWithInterceptors(
          target, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(interceptors));
    };
    absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Create(std::move(options));
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return nullptr;
    workers_[id] = *std::move(worker);
    return workers_[id].get();
  }
  // gRPC owns the factories it is given; this one shares the test's mute.
  class Forwarder final : public grpc::experimental::ClientInterceptorFactoryInterface {
   public:
    explicit Forwarder(std::shared_ptr<HeartbeatMute> mute) : mute_(std::move(mute)) {}
    grpc::experimental::Interceptor* CreateClientInterceptor(
        grpc::experimental::ClientRpcInfo* info) override {
      return mute_->CreateClientInterceptor(info);
    }

   private:
    const std::shared_ptr<HeartbeatMute> mute_;
  };

  // A worker's engine thread held until `release` (released at the latest
  // when the hold is destroyed, so a failing test does not wait kDeadline).
  struct EngineHold {
    absl::Notification held;
    absl::Notification release;
    // Decode rows the engine had computed when it was held: the worker
    // produced 1 + this many tokens (the first one came from the prefill).
    std::atomic<int64_t> decode_tokens{-1};
  };
  struct ReleaseOnExit {
    std::shared_ptr<EngineHold> hold;
    ~ReleaseOnExit() {
      if (!hold->release.HasBeenNotified()) hold->release.Notify();
    }
  };
  static bool Hold(WorkerProcess* worker, const std::shared_ptr<EngineHold>& hold) {
    return worker->engine_runner()
        .Post(
            [hold](engine::Engine& engine) {
              hold->decode_tokens = engine.stats().decode_tokens_computed;
              hold->held.Notify();
              hold->release.WaitForNotificationWithTimeout(kDeadline);
              return absl::OkStatus();
            },
            absl::Now() + kDeadline)
        .ok();
  }

  // engine.stats().decode_tokens_computed, read on the worker's engine thread.
  static int64_t DecodeTokensComputed(WorkerProcess* worker) {
    auto read = std::make_shared<EngineHold>();
    read->release.Notify();  // read, do not hold
    EXPECT_TRUE(Hold(worker, read));
    EXPECT_TRUE(read->held.WaitForNotificationWithTimeout(kDeadline));
    return std::max<int64_t>(0, read->decode_tokens);
  }

  // A Generate stream read on a thread of its own, so the test acts while it
  // runs.
  class LiveStream {
   public:
    LiveStream(tandem::v1::Tandem::Stub* stub, const tandem::v1::GenerateRequest& request)
        : thread_([this, stub, request] { Read(stub, request); }) {}
    ~LiveStream() {
      context_.TryCancel();
      thread_.join();
    }
    bool AwaitTokens(size_t n) {
      absl::MutexLock lock(&mu_);
      auto reached = [&]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return outcome_.tokens.size() >= n || ended_; };
      return mu_.AwaitWithTimeout(absl::Condition(&reached), kDeadline) && outcome_.tokens.size() >= n;
    }
    // The stream's end (real time), or nullopt at kDeadline.
    std::optional<absl::Time> AwaitEnd() {
      absl::MutexLock lock(&mu_);
      if (!mu_.AwaitWithTimeout(absl::Condition(&ended_), kDeadline)) return std::nullopt;
      return ended_at_;
    }
    Outcome outcome() {
      absl::MutexLock lock(&mu_);
      return outcome_;
    }

   private:
    void Read(tandem::v1::Tandem::Stub* stub, const tandem::v1::GenerateRequest& request) {
      context_.set_deadline(absl::ToChronoTime(absl::Now() + kDeadline));
      std::unique_ptr<grpc::ClientReader<tandem::v1::GenerateResponse>> reader =
          stub->Generate(&context_, request);
      tandem::v1::GenerateResponse response;
      while (reader->Read(&response)) {
        absl::MutexLock lock(&mu_);
        outcome_.tokens.insert(outcome_.tokens.end(), response.chunk().token_ids().begin(),
                               response.chunk().token_ids().end());
        outcome_.text += response.chunk().text();
        if (response.has_summary()) outcome_.summary = response.summary();
      }
      grpc::Status status = reader->Finish();
      absl::MutexLock lock(&mu_);
      outcome_.status = std::move(status);
      ended_at_ = absl::Now();
      ended_ = true;
    }

    grpc::ClientContext context_;
    absl::Mutex mu_;
    Outcome outcome_ ABSL_GUARDED_BY(mu_);
    bool ended_ ABSL_GUARDED_BY(mu_) = false;
    absl::Time ended_at_ ABSL_GUARDED_BY(mu_);
    std::thread thread_;  // last: starts once the rest exists
  };

  bool InRotation(const std::string& id) {
    for (const router::WorkerRegistry::WorkerInfo& w : router_->registry().List()) {
      if (w.id == id) return w.healthy;
    }
    return false;
  }
  // Sends requests until `worker` serves one (round robin: within as many
  // requests as there are decode workers); each must succeed.
  bool ServedBy(const std::string& worker) {
    for (int i = 0; i < 4; ++i) {
      Outcome outcome = Generate(Request(8));
      EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
      if (outcome.summary.decode_worker() == worker) return true;
    }
    return false;
  }
  // Starts a long stream on `decode` (the only decode worker so far), holds
  // its engine thread after the first tokens, and waits until every token
  // it produced reached the client: from then on nothing moves on it.
  // Returns the number of those tokens (0 on failure).
  size_t StartStalledStream(WorkerProcess* decode, std::unique_ptr<LiveStream>* stream,
                            const std::shared_ptr<EngineHold>& hold,
                            const tandem::v1::GenerateRequest& request = Request(1000)) {
    // Decode rows the worker computed for earlier requests (the engine's
    // counter spans its life).
    const int64_t before = DecodeTokensComputed(decode);
    *stream = std::make_unique<LiveStream>(stub_.get(), request);
    // The second token, not the first: the router sends the first as the
    // prefill worker returns it, before it opens (and watches) the decode
    // worker's stream; the second comes from that stream.
    EXPECT_TRUE((*stream)->AwaitTokens(2));
    EXPECT_TRUE(Hold(decode, hold));
    EXPECT_TRUE(hold->held.WaitForNotificationWithTimeout(kDeadline));
    const size_t produced = 1 + static_cast<size_t>(std::max<int64_t>(0, hold->decode_tokens - before));
    EXPECT_TRUE((*stream)->AwaitTokens(produced));
    return ::testing::Test::HasFailure() ? 0 : produced;
  }
};

TEST_F(RequestPathGrayFailureTest,
       StalledDecodeWorkerFailsItsStreamAtTheProgressDeadlineAndLeavesTheRotation) {
  router::RouterOptions options;
  options.stream_stall_timeout = kStall;
  StartRouter(options);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  auto hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_on_exit{hold};
  std::unique_ptr<LiveStream> stream;
  const size_t produced = StartStalledStream(decode, &stream, hold);
  ASSERT_GT(produced, 0u);
  // The worker heartbeats on (a stuck device does); only its progress
  // deadline passes.
  clock_.Advance(kStall + absl::Milliseconds(200));
  const absl::Time advanced = absl::Now();
  std::optional<absl::Time> ended = stream->AwaitEnd();
  ASSERT_TRUE(ended.has_value()) << "the stream did not end";
  const absl::Duration detection = *ended - advanced;
  RecordProperty("stall_detection_ms", absl::StrCat(absl::ToInt64Milliseconds(detection)));
  std::printf("stall: stream ended %s after the progress deadline passed\n",
              absl::FormatDuration(detection).c_str());
  EXPECT_LT(detection, kDetectionBound);
  const Outcome outcome = stream->outcome();
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE) << outcome.status.error_message();
  for (const char* part : {"decode-0", "stopped making progress", "no token for"}) {
    EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), part)) << outcome.status.error_message();
  }
  EXPECT_EQ(outcome.tokens.size(), produced);
  // Out of the rotation although it heartbeats; new requests go elsewhere.
  EXPECT_FALSE(InRotation("decode-0"));
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  Outcome next = Generate(Request(8));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.summary.decode_worker(), "decode-1");
  EXPECT_FALSE(InRotation("decode-0"));
  // Released: the router's cancel reached the worker, whose reactor freed
  // the stream's blocks; once its hold has passed it serves again.
  hold->release.Notify();
  EXPECT_TRUE(testing::PollUntil([&] { return decode->engine_runner().load().used_blocks == 0; }, kDeadline));
  clock_.Advance(options.stalled_worker_hold);
  ASSERT_TRUE(testing::PollUntil(
      [&] { return InRotation("decode-0") && InRotation("decode-1") && InRotation("prefill-0"); },
      kDeadline));
  EXPECT_TRUE(ServedBy("decode-0"));
}

// A stalled decode worker's stream moves to the other decode worker at the
// progress deadline and ends exactly as an undisturbed seeded run does.
TEST_F(RequestPathGrayFailureTest, StalledDecodeWorkersStreamMovesToAnotherAndMatchesAnUndisturbedRun) {
  router::RouterOptions options;
  options.stream_stall_timeout = kStall;
  StartRouter(options);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  tandem::v1::GenerateRequest request = Request(300);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_top_p(0.9f);
  request.mutable_sampling()->set_seed(17);
  const std::vector<int32_t> undisturbed = Reference(request);
  ASSERT_EQ(undisturbed.size(), 300u);
  auto hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_on_exit{hold};
  std::unique_ptr<LiveStream> stream;
  const size_t produced = StartStalledStream(decode, &stream, hold, request);
  ASSERT_GT(produced, 0u);
  ASSERT_LT(produced, 300u) << "the stream ended before it could be stalled";
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  clock_.Advance(kStall + absl::Milliseconds(200));
  std::optional<absl::Time> ended = stream->AwaitEnd();
  ASSERT_TRUE(ended.has_value()) << "the stream did not end";
  const Outcome outcome = stream->outcome();
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.summary.migrations(), 1);
  EXPECT_EQ(outcome.summary.decode_worker(), "decode-1");
  EXPECT_EQ(outcome.tokens, undisturbed) << "moved after " << produced << " tokens";
  EXPECT_FALSE(InRotation("decode-0"));
  // The stalled worker, released, frees the stream's blocks (the router's
  // cancel reached it).
  hold->release.Notify();
  EXPECT_TRUE(testing::PollUntil([&] { return decode->engine_runner().load().used_blocks == 0; }, kDeadline));
}

// The router sends the prefill worker's first token as the Prefill answers,
// without waiting for the decode worker: with the decode worker's engine
// thread held (a long step of a full batch) the client has its first token,
// and only it; released, the stream goes on with the decode worker's tokens,
// the first one (which the decode worker sends again) not repeated, and ends
// as an undisturbed run does, text included.
TEST_F(RequestPathGrayFailureTest, FirstTokenReachesTheClientWhileTheDecodeWorkerIsBusy) {
  StartRouter(router::RouterOptions{});
  WorkerProcess* prefill = AddWorker(WorkerProcess::Role::kPrefill, "prefill-0");
  ASSERT_NE(prefill, nullptr);
  WorkerProcess* decode = AddWorker(WorkerProcess::Role::kDecode, "decode-0");
  ASSERT_NE(decode, nullptr);
  tandem::v1::GenerateRequest request = Request(24);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(5);
  const Outcome undisturbed = Generate(request);
  ASSERT_TRUE(undisturbed.status.ok()) << undisturbed.status.error_message();
  ASSERT_EQ(undisturbed.tokens.size(), 24u);
  // Hold the prefill worker so the decode worker can be held after its
  // Reserve and before the Prefill answers.
  auto prefill_hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_prefill{prefill_hold};
  ASSERT_TRUE(Hold(prefill, prefill_hold));
  ASSERT_TRUE(prefill_hold->held.WaitForNotificationWithTimeout(kDeadline));
  LiveStream stream(stub_.get(), request);
  ASSERT_TRUE(testing::PollUntil([&] { return decode->engine_runner().load().reserved == 1; }, kDeadline));
  auto decode_hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_decode{decode_hold};
  ASSERT_TRUE(Hold(decode, decode_hold));
  ASSERT_TRUE(decode_hold->held.WaitForNotificationWithTimeout(kDeadline));
  prefill_hold->release.Notify();
  ASSERT_TRUE(stream.AwaitTokens(1)) << "the first token waited for the decode worker";
  EXPECT_EQ(stream.outcome().tokens, std::vector<int32_t>{undisturbed.tokens[0]});
  decode_hold->release.Notify();
  ASSERT_TRUE(stream.AwaitEnd().has_value());
  const Outcome outcome = stream.outcome();
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.tokens, undisturbed.tokens);
  EXPECT_EQ(outcome.text, undisturbed.text);
  EXPECT_EQ(outcome.summary.usage().completion_tokens(), 24);
}

// A prefill worker whose device hangs (its engine thread held) heartbeats on
// and finishes nothing: past its allowance (here the kStall floor: one
// predicted TTFT of the tiny model is far below it) the router abandons the
// Prefill, holds the worker out and the request is prefilled elsewhere.
TEST_F(RequestPathGrayFailureTest, StalledPrefillWorkersRequestIsPrefilledElsewhere) {
  router::RouterOptions options;
  options.stream_stall_timeout = kStall;
  options.prefill_stall_factor = 1;  // the clock may move less than the heartbeat deadline here
  StartRouter(options);
  WorkerProcess* prefill = AddWorker(WorkerProcess::Role::kPrefill, "prefill-0");
  ASSERT_NE(prefill, nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  // One prefill done: the router has seen this worker make progress (its
  // deadline applies only then).
  const std::vector<int32_t> undisturbed = Reference(Request(24));
  ASSERT_EQ(undisturbed.size(), 24u);
  auto hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_on_exit{hold};
  ASSERT_TRUE(Hold(prefill, hold));
  ASSERT_TRUE(hold->held.WaitForNotificationWithTimeout(kDeadline));
  tandem::v1::GenerateRequest request = Request(24);
  request.mutable_prompt_token_ids()->set_ids(0, 7);  // another prompt: no cached prefix to skip the wait
  LiveStream stream(stub_.get(), request);
  // The Prefill is in flight on prefill-0 (the router counts it there).
  ASSERT_TRUE(testing::PollUntil(
      [&] {
        int inflight = 0;
        router_->registry().ForEachHealthy(tandem::v1::WORKER_ROLE_PREFILL, {},
                                           [&](const router::WorkerView& w) {
                                             if (w.handle.id == "prefill-0") inflight = w.inflight_requests;
                                           });
        return inflight > 0;
      },
      kDeadline));
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-1"), nullptr);
  clock_.Advance(kStall + absl::Milliseconds(200));
  ASSERT_TRUE(stream.AwaitEnd().has_value()) << "the stream did not end";
  const Outcome outcome = stream.outcome();
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.summary.prefill_worker(), "prefill-1");
  EXPECT_EQ(outcome.tokens.size(), 24u);
  EXPECT_FALSE(InRotation("prefill-0"));
  hold->release.Notify();
}

// A request cancelled while its prefill waits: the blocks the placement
// counted as in flight to the prefill worker (KvIndex::AddInflight) are
// forgotten at once, not left for their 30 s TTL (this clock never gets
// there), so later prompts are not sent to wait for blocks nobody computes.
TEST_F(RequestPathGrayFailureTest, ACancelledPrefillsBlocksAreNoLongerCountedInFlight) {
  StartRouter({});
  WorkerProcess* prefill = AddWorker(WorkerProcess::Role::kPrefill, "prefill-0");
  ASSERT_NE(prefill, nullptr);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-0"), nullptr);
  auto hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_on_exit{hold};
  ASSERT_TRUE(Hold(prefill, hold));
  ASSERT_TRUE(hold->held.WaitForNotificationWithTimeout(kDeadline));
  const auto inflight = [&] { return router_->core().index().stats().inflight_entries; };
  {
    LiveStream stream(stub_.get(), Request(8));
    ASSERT_TRUE(testing::PollUntil([&] { return inflight() > 0; }, kDeadline))
        << "the placement recorded no block in flight";
  }  // the client cancels
  EXPECT_TRUE(testing::PollUntil([&] { return inflight() == 0; }, kDeadline))
      << inflight() << " in-flight entries left after the request was cancelled";
  EXPECT_TRUE(InRotation("prefill-0"));  // not removed with the worker: it is healthy
  hold->release.Notify();
}

TEST_F(RequestPathGrayFailureTest, DecodeWorkerThatMissesItsHeartbeatsLosesItsStreamsUntilItBeatsAgain) {
  router::RouterOptions options;
  options.stream_stall_timeout = absl::ZeroDuration();  // off: the heartbeat deadline alone acts here
  StartRouter(options);
  ASSERT_NE(AddWorker(WorkerProcess::Role::kPrefill, "prefill-0"), nullptr);
  auto mute = std::make_shared<HeartbeatMute>();
  WorkerProcess* decode = AddMutableDecodeWorker("decode-0", mute);
  ASSERT_NE(decode, nullptr);
  auto hold = std::make_shared<EngineHold>();
  ReleaseOnExit release_on_exit{hold};
  std::unique_ptr<LiveStream> stream;
  const size_t produced = StartStalledStream(decode, &stream, hold);
  ASSERT_GT(produced, 0u);
  // Frozen (SIGSTOP): no heartbeat reaches the router; on its clock, the
  // heartbeat deadline (3 x 500 ms) passes. The other workers' next
  // heartbeats bring them back.
  mute->Set(true);
  clock_.Advance(absl::Seconds(2));
  const absl::Time advanced = absl::Now();
  std::optional<absl::Time> ended = stream->AwaitEnd();
  ASSERT_TRUE(ended.has_value()) << "the stream did not end";
  const absl::Duration detection = *ended - advanced;
  RecordProperty("heartbeat_detection_ms", absl::StrCat(absl::ToInt64Milliseconds(detection)));
  std::printf("heartbeat: stream ended %s after the heartbeat deadline passed\n",
              absl::FormatDuration(detection).c_str());
  EXPECT_LT(detection, kDetectionBound);
  const Outcome outcome = stream->outcome();
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE) << outcome.status.error_message();
  for (const char* part : {"decode-0", "stopped making progress", "heartbeat"}) {
    EXPECT_TRUE(absl::StrContains(outcome.status.error_message(), part)) << outcome.status.error_message();
  }
  EXPECT_EQ(outcome.tokens.size(), produced);
  // A new request goes to the other decode worker.
  ASSERT_NE(AddWorker(WorkerProcess::Role::kDecode, "decode-1"), nullptr);
  ASSERT_TRUE(
      testing::PollUntil([&] { return InRotation("prefill-0") && InRotation("decode-1"); }, kDeadline));
  EXPECT_FALSE(InRotation("decode-0"));
  Outcome next = Generate(Request(8));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.summary.decode_worker(), "decode-1");
  // SIGCONT: it heartbeats again and re-enters the rotation; the stream the
  // router cancelled was cancelled on its side too (its blocks are free).
  hold->release.Notify();
  mute->Set(false);
  EXPECT_TRUE(testing::PollUntil([&] { return decode->engine_runner().load().used_blocks == 0; }, kDeadline));
  ASSERT_TRUE(testing::PollUntil([&] { return InRotation("decode-0"); }, kDeadline));
  EXPECT_TRUE(ServedBy("decode-0"));
}

}  // namespace
}  // namespace tandem
