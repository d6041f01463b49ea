// WorkerProcess in one test binary: a prefill and a decode worker on
// 127.0.0.1:0 with no router, driven over real gRPC the way the router
// drives them (Reserve, Prefill, Decode with kv_ready), against the decode
// worker prefilling by itself. Also Stop/Run/destruction and Create's errors.
#include "worker/worker_process.h"

#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "tests/testing/poll.h"

namespace tandem::worker {
namespace {

using Role = WorkerProcess::Role;

// Bound on every RPC and on waiting for Run to return.
constexpr auto kDeadline = std::chrono::seconds(30);

std::unique_ptr<WorkerProcess> MustCreate(Role role, MetricsRegistry* metrics, int32_t metrics_port = -1) {
  WorkerProcess::Options options;
  options.role = role;
  options.metrics = metrics;
  options.metrics_port = metrics_port;
  options.kv_cache_bytes = size_t{16} << 20;
  absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Create(options);
  EXPECT_TRUE(worker.ok()) << worker.status();
  return worker.ok() ? *std::move(worker) : nullptr;
}

std::shared_ptr<grpc::Channel> Dial(const WorkerProcess& worker) {
  return grpc::CreateChannel(worker.info().address, grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + kDeadline);
}

// Every token the Decode stream sends, or the failed status.
absl::StatusOr<std::vector<int32_t>> DecodeTokens(tandem::v1::DecodeWorker::Stub& stub,
                                                  const tandem::v1::DecodeRequest& request) {
  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<grpc::ClientReader<tandem::v1::GenerateResponse>> reader = stub.Decode(&context, request);
  std::vector<int32_t> tokens;
  tandem::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      tokens.insert(tokens.end(), response.chunk().token_ids().begin(), response.chunk().token_ids().end());
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return absl::InternalError(status.error_message());
  return tokens;
}

const std::vector<int32_t> kPrompt = {1,  17, 42, 99, 7,  23, 5,  64, 31, 8,
                                      12, 77, 3,  19, 56, 44, 21, 9,  2,  70};

TEST(WorkerProcessTest, PrefillThenDecodeMatchesTheDecodeWorkerPrefillingAlone) {
  // Two decode workers, so the disaggregated request finds nothing cached
  // and every prompt block crosses UCX.
  MetricsRegistry decode_metrics, alone_metrics, prefill_metrics;
  std::unique_ptr<WorkerProcess> decode = MustCreate(Role::kDecode, &decode_metrics, /*metrics_port=*/0);
  std::unique_ptr<WorkerProcess> decode_alone = MustCreate(Role::kDecode, &alone_metrics);
  std::unique_ptr<WorkerProcess> prefill = MustCreate(Role::kPrefill, &prefill_metrics);
  ASSERT_NE(decode, nullptr);
  ASSERT_NE(decode_alone, nullptr);
  ASSERT_NE(prefill, nullptr);
  EXPECT_EQ(decode->info().role, "decode");
  EXPECT_EQ(prefill->info().role, "prefill");
  EXPECT_GT(decode->info().grpc_port, 0);
  EXPECT_NE(decode->info().grpc_port, prefill->info().grpc_port);
  EXPECT_GT(decode->info().metrics_port, 0);
  EXPECT_EQ(prefill->info().metrics_port, -1);
  EXPECT_GT(decode->info().kv_blocks, 0);
  EXPECT_EQ(decode->info().model_id, prefill->info().model_id);
  auto decode_stub = tandem::v1::DecodeWorker::NewStub(Dial(*decode));
  auto alone_stub = tandem::v1::DecodeWorker::NewStub(Dial(*decode_alone));
  auto prefill_stub = tandem::v1::PrefillWorker::NewStub(Dial(*prefill));

  // Aggregated: the decode worker prefills the prompt itself.
  tandem::v1::DecodeRequest alone;
  alone.set_request_id("alone");
  *alone.mutable_prompt_token_ids() = {kPrompt.begin(), kPrompt.end()};
  alone.set_max_tokens(6);
  absl::StatusOr<std::vector<int32_t>> expected = DecodeTokens(*alone_stub, alone);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_EQ(expected->size(), 6u);

  // Disaggregated, as the router does it: Reserve, Prefill (KV over UCX
  // into the reservation), Decode with kv_ready.
  tandem::v1::ReserveRequest reserve;
  reserve.set_request_id("split");
  *reserve.mutable_prompt_token_ids() = {kPrompt.begin(), kPrompt.end()};
  reserve.set_max_tokens(6);
  tandem::v1::KvReservation reservation;
  grpc::ClientContext reserve_context;
  SetDeadline(&reserve_context);
  ASSERT_TRUE(decode_stub->Reserve(&reserve_context, reserve, &reservation).ok());
  EXPECT_EQ(reservation.cached_blocks(), 0);
  tandem::v1::PrefillRequest prefill_request;
  prefill_request.set_request_id("split");
  *prefill_request.mutable_prompt_token_ids() = {kPrompt.begin(), kPrompt.end()};
  *prefill_request.mutable_reservation() = reservation;
  tandem::v1::PrefillResponse prefilled;
  grpc::ClientContext prefill_context;
  SetDeadline(&prefill_context);
  const grpc::Status prefill_status = prefill_stub->Prefill(&prefill_context, prefill_request, &prefilled);
  ASSERT_TRUE(prefill_status.ok()) << prefill_status.error_message();
  EXPECT_GT(prefilled.transferred_bytes(), 0u);
  tandem::v1::DecodeRequest split = alone;
  split.set_request_id("split");
  split.set_kv_ready(true);
  split.set_first_token(prefilled.first_token());
  *split.mutable_kv_block_crc32c() = prefilled.kv_block_crc32c();
  absl::StatusOr<std::vector<int32_t>> got = DecodeTokens(*decode_stub, split);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, *expected);

  // The prefill worker's gauge says how the KV went: the decode worker's
  // pool is ordinary registered memory, so as active messages (refreshed on
  // the prefill engine's tick: polled, with a deadline).
  const std::string am_line = absl::StrCat("tandem_worker_kv_sent_bytes{op=\"active_message\"} ",
                                           prefilled.transferred_bytes(), "\n");
  EXPECT_TRUE(::tandem::testing::PollUntil(
      [&] { return prefill_metrics.RenderPrometheus().find(am_line) != std::string::npos; },
      absl::Seconds(10)))
      << prefill_metrics.RenderPrometheus();
  const std::string rendered = prefill_metrics.RenderPrometheus();
  EXPECT_NE(rendered.find("tandem_worker_kv_sent_bytes{op=\"put\"} 0\n"), std::string::npos);
  // One tenant: no prompt step had a request that goes before it.
  EXPECT_NE(rendered.find("tandem_worker_steps_stopped 0\n"), std::string::npos);

  // Each worker's gauges went to its own registry.
  EXPECT_NE(decode_metrics.RenderPrometheus().find("tandem_worker_prompt_tokens_computed"),
            std::string::npos);
  EXPECT_EQ(prefill_metrics.RenderPrometheus().find("tandem_worker_kv_pool_blocks"), std::string::npos);
}

TEST(WorkerProcessTest, StopFromAnotherThreadEndsRun) {
  MetricsRegistry metrics;
  std::unique_ptr<WorkerProcess> worker = MustCreate(Role::kDecode, &metrics);
  ASSERT_NE(worker, nullptr);
  std::future<absl::Status> run = std::async(std::launch::async, [&] { return worker->Run(); });
  EXPECT_EQ(run.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);  // serving
  std::thread stopper([&] { worker->Stop(); });
  stopper.join();
  worker->Stop();  // idempotent
  ASSERT_EQ(run.wait_for(kDeadline), std::future_status::ready);
  EXPECT_TRUE(run.get().ok());
  // The server is gone: an RPC fails instead of hanging.
  auto stub = tandem::v1::DecodeWorker::NewStub(Dial(*worker));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  tandem::v1::WorkerStatus status;
  EXPECT_FALSE(stub->Status(&context, tandem::v1::WorkerStatusRequest(), &status).ok());
}

TEST(WorkerProcessTest, StopBeforeRunMakesRunReturnAtOnce) {
  MetricsRegistry metrics;
  std::unique_ptr<WorkerProcess> worker = MustCreate(Role::kPrefill, &metrics);
  ASSERT_NE(worker, nullptr);
  worker->Stop();
  EXPECT_TRUE(worker->Run().ok());
}

TEST(WorkerProcessTest, DestroyingWithoutRunShutsDown) {
  MetricsRegistry metrics;
  std::unique_ptr<WorkerProcess> worker = MustCreate(Role::kDecode, &metrics);
  ASSERT_NE(worker, nullptr);
  auto stub = tandem::v1::DecodeWorker::NewStub(Dial(*worker));
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    tandem::v1::WorkerStatus status;
    ASSERT_TRUE(stub->Status(&context, tandem::v1::WorkerStatusRequest(), &status).ok());
    EXPECT_EQ(status.worker_id(), worker->info().worker_id);
  }
  worker.reset();  // shuts down as Run would
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  tandem::v1::WorkerStatus status;
  EXPECT_FALSE(stub->Status(&context, tandem::v1::WorkerStatusRequest(), &status).ok());
}

TEST(WorkerProcessTest, CreateErrorsNameThePart) {
  WorkerProcess::Options options;
  options.model = "synthetic:no-such-preset";
  absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Create(options);
  ASSERT_FALSE(worker.ok());
  EXPECT_NE(worker.status().message().find("cannot load model 'synthetic:no-such-preset'"), std::string::npos)
      << worker.status();

  WorkerProcess::Options ssd_without_dram;
  ssd_without_dram.kv_ssd_path = "/nonexistent";
  worker = WorkerProcess::Create(ssd_without_dram);
  ASSERT_FALSE(worker.ok());
  EXPECT_NE(worker.status().message().find("KV tiers"), std::string::npos) << worker.status();
}

}  // namespace
}  // namespace tandem::worker
