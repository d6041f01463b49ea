// DecodeService in one process: real gRPC on 127.0.0.1:0, an EngineRunner
// on the synthetic tiny model, no UCX (the KV pool's address is all the
// service reads of its region). Covers the stream's three ends besides
// finishing: client cancel, client deadline and server shutdown, each of
// which must free the request's place in the engine; and the checksum
// fallback (a kv_ready Decode whose blocks fail their CRC32C is prefilled
// here and streams what an aggregated request streams).
#include "decode_worker/decode_service.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/loader.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"
#include "worker_common/grpc_server.h"

namespace tandem::decode_worker {
namespace {

using ::tandem::testing::PollUntil;

struct Streamed {
  std::vector<int32_t> tokens;
  std::optional<tandem::v1::GenerateSummary> summary;
  grpc::Status status;
};

class DecodeServiceTest : public ::testing::Test {
 protected:
  // 16 blocks of 4 tokens: small enough that one reservation can hold all
  // but one block, so a request that needs two waits (is live) for as long
  // as a test wants.
  static constexpr int32_t kBlockSize = 4;
  static constexpr int32_t kBlocks = 16;

  void SetUp() override {
    model_ = *model::LoadModel("synthetic:tiny");
    backend_ = kernels::CreateCpuBackend({.num_threads = 1});
    llama_ = *model::LlamaModel::Create(model_->config, model_->weights, backend_.get());
    engine_ = *engine::Engine::Create({.block_size = kBlockSize, .num_blocks = kBlocks}, llama_.get(),
                                      backend_.get(), model_->tokenizer.get());
    runner_ = std::make_unique<engine::EngineRunner>(engine_.get(), engine::EngineRunner::Options{});
    const kernels::KvCacheView& kv = engine_->kv_view();
    transfer::RegisteredRegion pool;
    pool.base_address = reinterpret_cast<uint64_t>(kv.base);
    pool.bytes = static_cast<size_t>(kv.num_blocks) * kv.layout.BlockBytes();
    service_ = std::make_unique<DecodeService>(DecodeServiceOptions{.worker_id = "decode-test",
                                                                    .model_id = "tiny",
                                                                    .kv_region = pool,
                                                                    .ucx_worker_address = "unused",
                                                                    .block_size = kBlockSize,
                                                                    .block_bytes = kv.layout.BlockBytes()},
                                               runner_.get(), model_->tokenizer.get());
    // Started as a worker process starts its server (127.0.0.1, a free port).
    absl::StatusOr<worker_common::RunningGrpcServer> server =
        worker_common::StartGrpcServer({}, {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server->server);
    stub_ = tandem::v1::DecodeWorker::NewStub(
        grpc::CreateChannel(server->address, grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    runner_->Stop();
  }

  grpc::Status Reserve(const std::string& id, std::vector<int32_t> prompt, int32_t max_tokens,
                       tandem::v1::KvReservation* reservation) {
    tandem::v1::ReserveRequest r;
    r.set_request_id(id);
    *r.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
    r.set_max_tokens(max_tokens);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return stub_->Reserve(&ctx, r, reservation);
  }

  // Holds all blocks but one: a request needing two then waits.
  void FillPool() {
    std::vector<int32_t> prompt((kBlocks - 1) * kBlockSize, 5);
    prompt[0] = 1;
    tandem::v1::KvReservation reservation;
    ASSERT_TRUE(Reserve("filler", prompt, 1, &reservation).ok());
  }

  static tandem::v1::DecodeRequest Aggregated(const std::string& id, std::vector<int32_t> prompt,
                                              int32_t max_tokens) {
    tandem::v1::DecodeRequest r;
    r.set_request_id(id);
    *r.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
    r.set_max_tokens(max_tokens);
    return r;
  }

  Streamed Decode(const tandem::v1::DecodeRequest& request) {
    Streamed out;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto reader = stub_->Decode(&ctx, request);
    tandem::v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (response.has_summary()) out.summary = response.summary();
      out.tokens.insert(out.tokens.end(), response.chunk().token_ids().begin(),
                        response.chunk().token_ids().end());
    }
    out.status = reader->Finish();
    return out;
  }

  int32_t Waiting() { return runner_->load().waiting; }

  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::EngineRunner> runner_;
  std::unique_ptr<DecodeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<tandem::v1::DecodeWorker::Stub> stub_;
};

TEST_F(DecodeServiceTest, AggregatedDecodeStreamsEveryTokenThenTheSummary) {
  const Streamed got = Decode(Aggregated("a-1", {1, 7, 8, 9, 10}, 8));
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.tokens.size(), 8u);
  ASSERT_TRUE(got.summary.has_value());
  EXPECT_EQ(got.summary->usage().completion_tokens(), 8);
  EXPECT_EQ(got.summary->finish_reason(), tandem::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(got.summary->decode_worker(), "decode-test");
  EXPECT_EQ(got.summary->request_id(), "a-1");
}

TEST_F(DecodeServiceTest, ReserveDescribesThePoolAsOneUcxRegion) {
  tandem::v1::KvReservation reservation;
  ASSERT_TRUE(Reserve("r-1", {1, 2, 3, 4, 5, 6}, 4, &reservation).ok());
  EXPECT_EQ(reservation.region().base_address(), reinterpret_cast<uint64_t>(engine_->kv_view().base));
  EXPECT_EQ(reservation.region().worker_address(), "unused");
  EXPECT_EQ(reservation.block_ids_size(), 2);
  EXPECT_EQ(reservation.model_id(), "tiny");
  tandem::v1::KvReservation again;
  EXPECT_EQ(Reserve("r-1", {1, 2}, 4, &again).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

// Blocks that fail their checksum: the reservation is dropped and the prompt
// prefilled here, so the stream is what an aggregated request gives.
// Renew moves a reservation's expiry to its TTL from now: a renewed one
// outlives the TTL it was reserved with; one nobody renews lapses; an
// unknown one is NOT_FOUND.
TEST_F(DecodeServiceTest, RenewedReservationOutlivesItsTtlAndAnUnrenewedOneLapses) {
  auto renew = [&](const std::string& id, int32_t ttl_ms) {
    tandem::v1::RenewRequest r;
    r.set_request_id(id);
    r.set_reservation_ttl_ms(ttl_ms);
    tandem::v1::RenewResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return stub_->Renew(&ctx, r, &response);
  };
  // What the engine thread's tick does in a worker (EngineRunner::Options::on_tick).
  auto expire = [&] {
    absl::Notification done;
    EXPECT_TRUE(runner_
                    ->Post(
                        [&](engine::Engine& e) {
                          service_->ExpireReservations(e);
                          return absl::OkStatus();
                        },
                        absl::Now() + absl::Seconds(10), [&](const absl::Status&) { done.Notify(); })
                    .ok());
    done.WaitForNotificationWithTimeout(absl::Seconds(10));
  };
  tandem::v1::KvReservation kept, lapsed;
  ASSERT_TRUE(Reserve("kept", {1, 2, 3, 4, 5, 6}, 2, &kept).ok());
  ASSERT_TRUE(Reserve("lapsed", {1, 7, 8, 9, 10, 11}, 2, &lapsed).ok());
  // Both now lapse 1 ms from now; "kept" is renewed for 10 minutes.
  ASSERT_TRUE(renew("kept", 1).ok());
  ASSERT_TRUE(renew("lapsed", 1).ok());
  ASSERT_TRUE(renew("kept", 600000).ok());
  EXPECT_TRUE(PollUntil(
      [&] {
        expire();
        return renew("lapsed", 1).error_code() == grpc::StatusCode::NOT_FOUND;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(renew("kept", 600000).ok());
  EXPECT_EQ(renew("unknown", 1000).error_code(), grpc::StatusCode::NOT_FOUND);
  // The kept reservation is still there to release.
  tandem::v1::ReleaseRequest release;
  release.set_request_id("kept");
  tandem::v1::ReleaseResponse released;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  EXPECT_TRUE(stub_->Release(&ctx, release, &released).ok());
}

TEST_F(DecodeServiceTest, CorruptTransferredKvIsPrefilledHere) {
  const std::vector<int32_t> prompt = {1, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  tandem::v1::KvReservation reservation;
  ASSERT_TRUE(Reserve("c-1", prompt, 6, &reservation).ok());
  tandem::v1::DecodeRequest corrupt;
  corrupt.set_request_id("c-1");
  corrupt.set_kv_ready(true);
  corrupt.set_first_token(1);
  for (int i = reservation.cached_blocks(); i < reservation.block_ids_size(); ++i) {
    corrupt.add_kv_block_crc32c(0x5eed0000u + i);
  }
  const Streamed recomputed = Decode(corrupt);
  ASSERT_TRUE(recomputed.status.ok()) << recomputed.status.error_message();
  const Streamed aggregated = Decode(Aggregated("c-2", prompt, 6));
  ASSERT_TRUE(aggregated.status.ok()) << aggregated.status.error_message();
  EXPECT_EQ(recomputed.tokens, aggregated.tokens);
  EXPECT_EQ(recomputed.tokens.size(), 6u);
}

TEST_F(DecodeServiceTest, ChecksumCountMismatchFailsAndReleasesTheReservation) {
  tandem::v1::KvReservation reservation;
  ASSERT_TRUE(Reserve("m-1", {1, 2, 3, 4, 5, 6}, 4, &reservation).ok());
  tandem::v1::DecodeRequest r;
  r.set_request_id("m-1");
  r.set_kv_ready(true);
  r.add_kv_block_crc32c(1);  // two blocks were written
  r.add_kv_block_crc32c(2);
  r.add_kv_block_crc32c(3);
  EXPECT_EQ(Decode(r).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The release was queued before the call failed; this runs after it.
  EXPECT_OK(runner_->Run(
      [](engine::Engine& e) {
        return e.num_reserved() == 0 ? absl::OkStatus() : absl::InternalError("reservation kept");
      },
      absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(Decode(r).status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DecodeServiceTest, ClientCancelEndsTheEngineRequest) {
  FillPool();
  grpc::ClientContext ctx;
  auto reader = stub_->Decode(&ctx, Aggregated("x-1", {1, 2, 3, 4, 5, 6}, 4));
  ASSERT_TRUE(PollUntil([&] { return Waiting() == 1; }, absl::Seconds(10)));
  ctx.TryCancel();
  tandem::v1::GenerateResponse response;
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(PollUntil([&] { return Waiting() == 0; }, absl::Seconds(10)))
      << "the cancelled request still waits in the engine";
}

TEST_F(DecodeServiceTest, ClientDeadlineEndsTheEngineRequest) {
  FillPool();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(300)));
  auto reader = stub_->Decode(&ctx, Aggregated("d-1", {1, 2, 3, 4, 5, 6}, 4));
  tandem::v1::GenerateResponse response;
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(PollUntil([&] { return Waiting() == 0; }, absl::Seconds(10)))
      << "the request outlived its deadline in the engine";
}

TEST_F(DecodeServiceTest, ServerShutdownEndsLiveStreams) {
  FillPool();
  grpc::ClientContext ctx;
  auto reader = stub_->Decode(&ctx, Aggregated("s-1", {1, 2, 3, 4, 5, 6}, 4));
  ASSERT_TRUE(PollUntil([&] { return Waiting() == 1; }, absl::Seconds(10)));
  // Returns once every stream has finished: its cancel reached the engine.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)));
  server_.reset();
  tandem::v1::GenerateResponse response;
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_FALSE(reader->Finish().ok());
  EXPECT_OK(runner_->Run(
      [](engine::Engine& e) {
        return e.num_waiting() == 0 ? absl::OkStatus() : absl::InternalError("request left in the engine");
      },
      absl::Now() + absl::Seconds(10)));
}

}  // namespace
}  // namespace tandem::decode_worker
