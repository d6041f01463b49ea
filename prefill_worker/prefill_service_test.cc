// PrefillService in one process: real gRPC on 127.0.0.1:0, an EngineRunner on
// the synthetic tiny model, and two transfer engines (the service's, and a
// stand-in decode worker's with a registered pool). Checks what lands where
// with which checksums, that a failed transfer answers ABORTED, and that the
// prefill's held blocks are released either way.
#include "prefill_worker/prefill_service.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kvstore/block_format.h"
#include "model/loader.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"
#include "transfer/ucx_region_proto.h"
#include "worker_common/grpc_server.h"

namespace tandem::prefill_worker {
namespace {

constexpr int32_t kBlockSize = 4;
constexpr int32_t kBlocks = 64;

class PrefillServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = *model::LoadModel("synthetic:tiny");
    backend_ = kernels::CreateCpuBackend({.num_threads = 1});
    llama_ = *model::LlamaModel::Create(model_->config, model_->weights, backend_.get());
    engine_ = *engine::Engine::Create(
        {.block_size = kBlockSize, .num_blocks = kBlocks, .max_prefill_chunk = prefill_chunk_}, llama_.get(),
        backend_.get(), model_->tokenizer.get());
    runner_ = std::make_unique<engine::EngineRunner>(engine_.get(), engine::EngineRunner::Options{});
    const kernels::KvCacheView& kv = engine_->kv_view();
    block_bytes_ = kv.layout.BlockBytes();
    auto sender = transfer::TransferEngine::Create({.name = "prefill-test"});
    auto receiver = transfer::TransferEngine::Create({.name = "decode-test"});
    ASSERT_OK(sender.status());
    ASSERT_OK(receiver.status());
    sender_ = *std::move(sender);
    receiver_ = *std::move(receiver);
    decode_pool_.assign(static_cast<size_t>(kBlocks) * block_bytes_, 0);
    auto region = receiver_->Register(decode_pool_.data(), decode_pool_.size(), transfer::MemoryKind::kHost);
    ASSERT_OK(region.status());
    decode_region_ = *region;
    service_ = std::make_unique<PrefillService>(
        PrefillServiceOptions{.worker_id = "prefill-test",
                              .model_id = "tiny",
                              .block_size = kBlockSize,
                              .block_bytes = block_bytes_,
                              .kv_base = reinterpret_cast<const uint8_t*>(kv.base)},
        runner_.get(), sender_.get());
    // Started as a worker process starts its server (127.0.0.1, a free port).
    absl::StatusOr<worker_common::RunningGrpcServer> server =
        worker_common::StartGrpcServer({}, {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server->server);
    stub_ = tandem::v1::PrefillWorker::NewStub(
        grpc::CreateChannel(server->address, grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    service_.reset();
    runner_->Stop();
  }

  // A request for `prompt` whose reservation is blocks `block_ids` of the
  // stand-in decode worker's pool, the first `cached` of them held there.
  tandem::v1::PrefillRequest Request(const std::vector<int32_t>& prompt,
                                     const std::vector<int32_t>& block_ids, int32_t cached) {
    tandem::v1::PrefillRequest r;
    r.set_request_id("p-1");
    *r.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
    tandem::v1::KvReservation* res = r.mutable_reservation();
    transfer::RegionToProto(receiver_->worker_address(), decode_region_, res->mutable_region());
    res->set_block_size(kBlockSize);
    res->set_block_bytes(block_bytes_);
    res->set_model_id("tiny");
    *res->mutable_block_ids() = {block_ids.begin(), block_ids.end()};
    res->set_cached_blocks(cached);
    return r;
  }

  grpc::Status Prefill(const tandem::v1::PrefillRequest& r, tandem::v1::PrefillResponse* response) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return stub_->Prefill(&ctx, r, response);
  }

  // A Prefill in flight (the reservation follows it), and its answer.
  struct PendingPrefill {
    grpc::ClientContext ctx;
    tandem::v1::PrefillRequest request;
    tandem::v1::PrefillResponse response;
    absl::Notification done;
    grpc::Status status;
  };
  // Sends `r` without its reservation (reservation_follows, attempt 1) and
  // returns at once; the reservation it carried is `*reservation`.
  std::unique_ptr<PendingPrefill> PrefillWithout(tandem::v1::PrefillRequest r,
                                                 tandem::v1::KvReservation* reservation) {
    auto p = std::make_unique<PendingPrefill>();
    *reservation = r.reservation();
    r.clear_reservation();
    r.set_reservation_follows(true);
    r.set_attempt(1);
    p->request = std::move(r);
    p->ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    stub_->async()->Prefill(&p->ctx, &p->request, &p->response, [raw = p.get()](grpc::Status s) {
      raw->status = std::move(s);
      raw->done.Notify();
    });
    return p;
  }
  grpc::Status Provide(const std::string& request_id, const tandem::v1::KvReservation& reservation) {
    tandem::v1::ProvideReservationRequest r;
    r.set_request_id(request_id);
    r.set_attempt(1);
    *r.mutable_reservation() = reservation;
    tandem::v1::ProvideReservationResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return stub_->ProvideReservation(&ctx, r, &response);
  }
  // The prompt computed: its blocks are held for the send.
  bool Computed() {
    return ::tandem::testing::PollUntil(
        [&] {
          return runner_
              ->Run(
                  [](engine::Engine& e) {
                    return e.num_reserved() == 1 ? absl::OkStatus() : absl::NotFoundError("");
                  },
                  absl::Now() + absl::Seconds(10))
              .ok();
        },
        absl::Seconds(20));
  }
  // The decode pool's blocks `ids` hold the bytes whose CRC32Cs the response lists, in order.
  void ExpectLanded(absl::Span<const int32_t> ids, const tandem::v1::PrefillResponse& response) {
    ASSERT_EQ(response.kv_block_crc32c_size(), static_cast<int>(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint8_t* landed = decode_pool_.data() + static_cast<size_t>(ids[i]) * block_bytes_;
      EXPECT_EQ(kvstore::Crc32c(absl::MakeConstSpan(landed, block_bytes_)), response.kv_block_crc32c(i))
          << "block " << ids[i];
    }
  }
  bool Untouched(int32_t id) {
    const uint8_t* block = decode_pool_.data() + static_cast<size_t>(id) * block_bytes_;
    return std::count(block, block + block_bytes_, 0) == static_cast<int64_t>(block_bytes_);
  }

  int32_t prefill_chunk_ = 0;  // EngineOptions::max_prefill_chunk

  // Held blocks are released on the engine thread before the reply is sent,
  // so a command queued after the reply runs after the release.
  absl::Status NothingHeld() {
    return runner_->Run(
        [](engine::Engine& e) {
          return e.num_reserved() == 0 ? absl::OkStatus() : absl::InternalError("blocks still held");
        },
        absl::Now() + absl::Seconds(10));
  }

  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<engine::EngineRunner> runner_;
  uint64_t block_bytes_ = 0;
  std::unique_ptr<transfer::TransferEngine> sender_;
  std::unique_ptr<transfer::TransferEngine> receiver_;
  std::vector<uint8_t> decode_pool_;
  transfer::RegisteredRegion decode_region_;
  std::unique_ptr<PrefillService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<tandem::v1::PrefillWorker::Stub> stub_;
};

TEST_F(PrefillServiceTest, WritesTheBlocksTheDecodeSideLacksWithTheirChecksums) {
  // 10 tokens: 3 blocks; the decode side holds the first.
  const std::vector<int32_t> blocks = {5, 9, 2};
  tandem::v1::PrefillResponse response;
  const grpc::Status s = Prefill(Request({1, 21, 22, 23, 24, 25, 26, 27, 28, 29}, blocks, 1), &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.transferred_bytes(), 2 * block_bytes_);
  ExpectLanded({blocks[1], blocks[2]}, response);
  // The block the decode side holds was not written.
  EXPECT_TRUE(Untouched(blocks[0]));
  EXPECT_OK(NothingHeld());
}

TEST_F(PrefillServiceTest, AFailedTransferIsAbortedAndReleasesTheBlocks) {
  tandem::v1::PrefillRequest r = Request({1, 31, 32, 33, 34, 35}, {0, 1}, 0);
  // The decode worker's region is gone by the time the blocks are sent.
  ASSERT_OK(receiver_->Unregister(decode_region_.region_id));
  tandem::v1::PrefillResponse response;
  EXPECT_EQ(Prefill(r, &response).error_code(), grpc::StatusCode::ABORTED);
  EXPECT_OK(NothingHeld());
}

TEST_F(PrefillServiceTest, AReservationOfAnotherLayoutIsRefused) {
  tandem::v1::PrefillRequest r = Request({1, 2, 3}, {0}, 0);
  r.mutable_reservation()->set_block_bytes(block_bytes_ * 2);
  tandem::v1::PrefillResponse response;
  EXPECT_EQ(Prefill(r, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  r = Request({1, 2, 3, 4, 5}, {0}, 0);  // two blocks, one reserved
  EXPECT_EQ(Prefill(r, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// The engine computes the prompt a block per step, so its blocks are
// streamed (copied and queued per chunk) before the reservation is known.
class ChunkedPrefillServiceTest : public PrefillServiceTest {
 protected:
  void SetUp() override {
    prefill_chunk_ = kBlockSize;
    PrefillServiceTest::SetUp();
  }
};

// The reservation follows the request: the prompt computes at once, its
// streamed chunks and final send wait for the reservation, then write the
// blocks the decode side lacks (the cached one, known only now, skipped).
TEST_F(ChunkedPrefillServiceTest, AReservationThatFollowsIsWaitedForThenWritten) {
  tandem::v1::KvReservation reservation;
  std::unique_ptr<PendingPrefill> p =
      PrefillWithout(Request({1, 21, 22, 23, 24, 25, 26, 27, 28, 29}, {5, 9, 2}, 1), &reservation);
  ASSERT_TRUE(Computed());
  EXPECT_FALSE(p->done.HasBeenNotified());  // waits for its reservation
  EXPECT_EQ(service_->AwaitingReservations(), 1);
  EXPECT_TRUE(Untouched(9) && Untouched(2));
  ASSERT_TRUE(Provide("p-1", reservation).ok());
  ASSERT_TRUE(p->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(p->status.ok()) << p->status.error_message();
  EXPECT_EQ(p->response.transferred_bytes(), 2 * block_bytes_);
  ExpectLanded({9, 2}, p->response);
  EXPECT_TRUE(Untouched(5));
  EXPECT_GT(p->response.reservation_wait_ms(), 0);
  EXPECT_EQ(service_->AwaitingReservations(), 0);
  EXPECT_OK(NothingHeld());
}

// ProvideReservation may overtake its Prefill (two RPCs): kept for it.
TEST_F(PrefillServiceTest, AReservationThatArrivesBeforeItsPrefillIsKeptForIt) {
  tandem::v1::PrefillRequest r = Request({1, 41, 42, 43, 44, 45}, {3, 4}, 0);
  ASSERT_TRUE(Provide("p-1", r.reservation()).ok());
  EXPECT_EQ(service_->EarlyReservations(), 1);
  tandem::v1::KvReservation reservation;
  std::unique_ptr<PendingPrefill> p = PrefillWithout(r, &reservation);
  ASSERT_TRUE(p->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_TRUE(p->status.ok()) << p->status.error_message();
  ExpectLanded({3, 4}, p->response);
  EXPECT_EQ(service_->EarlyReservations(), 0);
  // Another attempt's reservation is not this call's: kept until it expires.
  ASSERT_TRUE(Provide("p-2", r.reservation()).ok());
  service_->ExpireReservationWaits(absl::Now() + absl::Seconds(31));
  EXPECT_EQ(service_->EarlyReservations(), 0);
  EXPECT_OK(NothingHeld());
}

// Every wait ends: a cancelled call, one past reservation_wait, and one
// handed a reservation that does not fit release their blocks.
TEST_F(ChunkedPrefillServiceTest, AWaitEndsWhenCancelledTimedOutOrGivenABadReservation) {
  tandem::v1::KvReservation reservation;
  std::unique_ptr<PendingPrefill> cancelled =
      PrefillWithout(Request({1, 51, 52, 53, 54, 55}, {0, 1}, 0), &reservation);
  ASSERT_TRUE(Computed());
  cancelled->ctx.TryCancel();
  ASSERT_TRUE(cancelled->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(cancelled->status.error_code(), grpc::StatusCode::CANCELLED);
  // The client learns of its cancel at once; the worker releases after.
  EXPECT_TRUE(::tandem::testing::PollUntil([&] { return NothingHeld().ok(); }, absl::Seconds(20)));
  EXPECT_EQ(service_->AwaitingReservations(), 0);

  tandem::v1::PrefillRequest r = Request({1, 61, 62, 63, 64, 65}, {0, 1}, 0);
  r.set_request_id("p-2");
  std::unique_ptr<PendingPrefill> expired = PrefillWithout(r, &reservation);
  ASSERT_TRUE(Computed());
  service_->ExpireReservationWaits(absl::Now() + absl::Seconds(1));  // not yet
  EXPECT_FALSE(expired->done.HasBeenNotified());
  service_->ExpireReservationWaits(absl::Now() + absl::Seconds(31));
  ASSERT_TRUE(expired->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(expired->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_OK(NothingHeld());
  EXPECT_TRUE(Untouched(0) && Untouched(1));

  r.set_request_id("p-3");
  std::unique_ptr<PendingPrefill> bad = PrefillWithout(r, &reservation);
  reservation.mutable_block_ids()->RemoveLast();  // two blocks, one reserved
  ASSERT_TRUE(
      ::tandem::testing::PollUntil([&] { return service_->AwaitingReservations() == 1; }, absl::Seconds(20)));
  EXPECT_EQ(Provide("p-3", reservation).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(bad->done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(bad->status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_OK(NothingHeld());
  EXPECT_EQ(service_->AwaitingReservations(), 0);
}

// A request that says its reservation follows must not carry one.
TEST_F(PrefillServiceTest, AReservationBothCarriedAndFollowingIsRefused) {
  tandem::v1::PrefillRequest r = Request({1, 2, 3}, {0}, 0);
  r.set_reservation_follows(true);
  tandem::v1::PrefillResponse response;
  EXPECT_EQ(Prefill(r, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace tandem::prefill_worker
