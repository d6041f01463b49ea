// The shared store in one process: StoreService on a loopback server,
// TieredStores of two "workers" whose lookups fall through to it; every case
// runs with block bytes in the gRPC messages and over UCX (a transfer engine
// for the store and one for the workers, shared memory between them).
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/store_client.h"
#include "kvstore/store_service.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"
#include "transfer/transfer_engine.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;

constexpr int32_t kTokens = 16;
constexpr size_t kPayload = 4096;
constexpr char kModel[] = "test-model";

TieredStore::Options StoreOptions(const std::string& ssd_path, RemoteTier* remote) {
  TieredStore::Options o;
  o.model_id = kModel;
  o.block_tokens = kTokens;
  o.payload_bytes = kPayload;
  o.dram_bytes = 16 * EncodedBlockBytes(kTokens, kPayload);
  o.ssd_path = ssd_path;
  o.ssd_bytes = size_t{1} << 30;
  o.remote = remote;
  return o;
}

// A StoreService on a loopback port, and a channel to it.
struct LoopbackServer {
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;

  explicit LoopbackServer(grpc::Service* service) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server = builder.BuildAndStart();
    if (server == nullptr) return;
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  }
  ~LoopbackServer() {
    if (server != nullptr) server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  }
};

class StoreRpcTest : public ::testing::TestWithParam<std::string> {
 protected:
  bool ucx() const { return GetParam() == "ucx"; }

  void SetUp() override {
    if (ucx()) {
      auto store_engine = transfer::TransferEngine::Create({.name = "store"});
      auto worker_engine = transfer::TransferEngine::Create({.name = "worker"});
      ASSERT_OK(store_engine.status());
      ASSERT_OK(worker_engine.status());
      store_engine_ = std::move(*store_engine);
      worker_engine_ = std::move(*worker_engine);
    }
    auto shared = TieredStore::Create(StoreOptions(dir_.path() + "/store", nullptr));
    ASSERT_OK(shared.status());
    shared_ = std::move(*shared);
    auto service = StoreService::Create({.model_id = kModel,
                                         .transfer = store_engine_.get(),
                                         .staging_bytes = 4 * EncodedBlockBytes(kTokens, kPayload)},
                                        shared_.get());
    ASSERT_OK(service.status());
    service_ = std::move(*service);
    loopback_ = std::make_unique<LoopbackServer>(service_.get());
    ASSERT_NE(loopback_->server, nullptr);
    channel_ = loopback_->channel;
  }

  std::unique_ptr<StoreClient> Client() {
    // Generous deadlines: a loaded test machine must not turn hits into misses.
    StoreClient::Options options{.model_id = kModel, .fetch_timeout = absl::Seconds(10)};
    if (ucx()) {
      options.transfer = worker_engine_.get();
      options.slot_bytes = EncodedBlockBytes(kTokens, kPayload);
      options.landing_slots = 2;
    }
    auto client = StoreClient::Create(options, channel_);
    EXPECT_OK(client.status());
    return client.ok() ? std::move(*client) : nullptr;
  }

  // Declared first: destroyed after everything that uses them.
  std::unique_ptr<transfer::TransferEngine> store_engine_;
  std::unique_ptr<transfer::TransferEngine> worker_engine_;
  TempDir dir_;
  std::unique_ptr<TieredStore> shared_;
  std::unique_ptr<StoreService> service_;
  std::unique_ptr<LoopbackServer> loopback_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_P(StoreRpcTest, WorkerAPutsWorkerBGetsTheSameBytes) {
  std::unique_ptr<StoreClient> client_a = Client();
  std::unique_ptr<StoreClient> client_b = Client();
  ASSERT_NE(client_a, nullptr);
  ASSERT_NE(client_b, nullptr);
  auto worker_a = TieredStore::Create(StoreOptions("", client_a.get()));
  auto worker_b = TieredStore::Create(StoreOptions("", client_b.get()));
  ASSERT_OK(worker_a.status());
  ASSERT_OK(worker_b.status());

  const BlockHash hash = 0xABCDEF;
  ASSERT_OK((*worker_a)->Put(hash, TokensFor(1, kTokens), PayloadFor(1, kPayload)));
  ASSERT_TRUE(client_a->Flush(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(client_a->stats().put_blocks, 1);
  EXPECT_TRUE(shared_->Find(hash).has_value());

  std::vector<uint8_t> out(kPayload);
  absl::StatusOr<Tier> from = (*worker_b)->Get(hash, TokensFor(1, kTokens), absl::MakeSpan(out));
  ASSERT_OK(from.status());
  EXPECT_EQ(*from, Tier::kRemote);
  EXPECT_EQ(out, PayloadFor(1, kPayload));
  EXPECT_EQ((*worker_b)->stats().remote_hits, 1);
  EXPECT_EQ((*worker_b)->stats().remote_promotions, 0);
  // The bytes went the configured way, and only that way.
  const StoreClient::Stats a = client_a->stats();
  const StoreClient::Stats b = client_b->stats();
  const int64_t value_bytes = static_cast<int64_t>(EncodedBlockBytes(kTokens, kPayload));
  EXPECT_EQ(client_b->transport(), GetParam());
  if (ucx()) {
    EXPECT_EQ(a.ucx_put_bytes, value_bytes);
    EXPECT_EQ(b.ucx_fetch_bytes, value_bytes);
    EXPECT_EQ(a.grpc_put_bytes + b.grpc_fetch_bytes, 0);
    EXPECT_EQ(service_->stats().committed_blocks, 1);
    EXPECT_EQ(service_->stats().get_into_blocks, 1);
  } else {
    EXPECT_EQ(a.grpc_put_bytes, value_bytes);
    EXPECT_EQ(b.grpc_fetch_bytes, value_bytes);
    EXPECT_EQ(a.ucx_put_bytes + b.ucx_fetch_bytes, 0);
  }
  // Now in B's own DRAM.
  EXPECT_EQ((*worker_b)->Find(hash), Tier::kDram);
  // Other tokens under the same hash: a miss, not the stored bytes.
  EXPECT_THAT((*worker_b)->Get(hash, TokensFor(2, kTokens), absl::MakeSpan(out)).status(),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StoreRpcTest, CorruptOrForeignValuesAreRefused) {
  auto stub = tandem::v1::KvStore::NewStub(channel_);
  std::string value = EncodeBlock({.model_id_hash = ModelIdHash(kModel),
                                   .block_hash = 77,
                                   .tokens = TokensFor(3, kTokens),
                                   .payload = PayloadFor(3, kPayload)});
  value[value.size() - 5] ^= 0x40;  // a flipped payload bit
  tandem::v1::StorePutRequest put;
  put.set_model_id(kModel);
  tandem::v1::StoreBlock* b = put.add_blocks();
  b->set_block_hash(77);
  b->set_value(value);
  tandem::v1::StorePutResponse put_response;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Put(&ctx, put, &put_response).ok());
  }
  EXPECT_EQ(put_response.stored(), 0);
  EXPECT_FALSE(shared_->Find(77).has_value());

  put.set_model_id("other-model");
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->Put(&ctx, put, &put_response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  tandem::v1::StoreLookupRequest lookup;
  lookup.set_model_id(kModel);
  lookup.add_block_hashes(77);
  tandem::v1::StoreLookupResponse lookup_response;
  grpc::ClientContext lookup_ctx;
  ASSERT_TRUE(stub->Lookup(&lookup_ctx, lookup, &lookup_response).ok());
  ASSERT_EQ(lookup_response.held_size(), 1);
  EXPECT_FALSE(lookup_response.held(0));
}

TEST_P(StoreRpcTest, AStoreThatIsDownIsAMiss) {
  std::unique_ptr<StoreClient> client = Client();
  ASSERT_NE(client, nullptr);
  auto worker = TieredStore::Create(StoreOptions("", client.get()));
  ASSERT_OK(worker.status());
  loopback_.reset();  // the store goes down
  std::vector<uint8_t> out(kPayload);
  EXPECT_THAT((*worker)->Get(5, TokensFor(5, kTokens), absl::MakeSpan(out)).status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(client->stats().fetch_errors, 1);
  // Offers to a dead store are dropped, never block the Put.
  ASSERT_OK((*worker)->Put(5, TokensFor(5, kTokens), PayloadFor(5, kPayload)));
  EXPECT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)));
}

// A store already holding a block reserves no slot for it; a client offering
// it again sends nothing.
TEST_P(StoreRpcTest, HeldBlocksAreNotSentAgain) {
  if (!ucx()) GTEST_SKIP() << "the reservation step exists on the UCX path only";
  std::unique_ptr<StoreClient> client = Client();
  ASSERT_NE(client, nullptr);
  auto worker = TieredStore::Create(StoreOptions("", client.get()));
  ASSERT_OK(worker.status());
  ASSERT_OK(shared_->Put(9, TokensFor(9, kTokens), PayloadFor(9, kPayload)));
  client->Offer(9, EncodeBlock({.model_id_hash = ModelIdHash(kModel),
                                .block_hash = 9,
                                .tokens = TokensFor(9, kTokens),
                                .payload = PayloadFor(9, kPayload)}));
  ASSERT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(client->stats().ucx_put_bytes, 0);
  EXPECT_EQ(client->stats().put_errors, 0);
  EXPECT_EQ(service_->stats().reserved_blocks, 0);
}

// More concurrent fetches than landing slots: the extra ones use Get, and
// every fetch returns its own block's bytes.
TEST_P(StoreRpcTest, ConcurrentFetchesGetTheirOwnBytes) {
  std::unique_ptr<StoreClient> client = Client();
  ASSERT_NE(client, nullptr);
  constexpr int kBlocks = 4;  // the store's DRAM holds 16
  for (int i = 0; i < kBlocks; ++i) {
    ASSERT_OK(shared_->Put(100 + i, TokensFor(100 + i, kTokens), PayloadFor(100 + i, kPayload)));
  }
  std::vector<std::thread> threads;
  std::vector<int> good(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        const int i = (t + round) % kBlocks;
        absl::StatusOr<std::string> value = client->Fetch(100 + i);
        if (!value.ok()) continue;
        absl::StatusOr<BlockView> view = DecodeBlock(*value, /*verify_checksum=*/true);
        if (view.ok() && view->block_hash == static_cast<BlockHash>(100 + i) &&
            std::vector<uint8_t>(view->payload.begin(), view->payload.end()) ==
                PayloadFor(100 + i, kPayload)) {
          ++good[t];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(good[t], 20) << "thread " << t;
  EXPECT_EQ(client->stats().fetch_errors, 0);
}

// A prefix's blocks from the store in batches (the prefetcher's path):
// PromoteMany asks the store once per batch (gRPC: one Get; UCX: one
// GetInto per free landing slot, two here), not once per block.
TEST_P(StoreRpcTest, PromoteManyFetchesAPrefixInBatches) {
  std::unique_ptr<StoreClient> client = Client();
  ASSERT_NE(client, nullptr);
  auto worker = TieredStore::Create(StoreOptions("", client.get()));
  ASSERT_OK(worker.status());
  constexpr int kBlocks = 6;
  std::vector<BlockHash> hashes;
  std::vector<int32_t> tokens;
  for (int i = 0; i < kBlocks; ++i) {
    hashes.push_back(200 + i);
    const std::vector<int32_t> t = TokensFor(200 + i, kTokens);
    tokens.insert(tokens.end(), t.begin(), t.end());
    if (i != 3) ASSERT_OK(shared_->Put(200 + i, t, PayloadFor(200 + i, kPayload)));  // block 3: a miss
  }
  ASSERT_OK((*worker)->Put(hashes[0], TokensFor(200, kTokens), PayloadFor(200, kPayload)));  // local already
  const std::vector<absl::StatusOr<Tier>> from = (*worker)->PromoteMany(hashes, tokens);
  ASSERT_EQ(from.size(), static_cast<size_t>(kBlocks));
  ASSERT_OK(from[0].status());
  EXPECT_EQ(*from[0], Tier::kDram);
  for (int i : {1, 2, 4, 5}) {
    ASSERT_TRUE(from[i].ok()) << i << ": " << from[i].status();
    EXPECT_EQ(*from[i], Tier::kRemote) << i;
  }
  EXPECT_THAT(from[3].status(), StatusIs(absl::StatusCode::kNotFound));
  const StoreClient::Stats s = client->stats();
  EXPECT_EQ(s.fetches, kBlocks - 1);
  EXPECT_EQ(s.fetch_hits, kBlocks - 2);
  EXPECT_EQ(s.fetch_rpcs, ucx() ? 3 : 1);
  // Promoted blocks are in the worker's DRAM with the store's bytes.
  std::vector<uint8_t> out(kPayload);
  ASSERT_OK((*worker)->Get(204, TokensFor(204, kTokens), absl::MakeSpan(out)).status());
  EXPECT_EQ(out, PayloadFor(204, kPayload));
  EXPECT_EQ((*worker)->Find(204), Tier::kDram);
}

class StoreUcxTest : public StoreRpcTest {};

// A writer that reserved slots and vanished: its reservation expires, the
// slots are handed out again, and its late commit is refused.
TEST_P(StoreUcxTest, AnUncommittedReservationExpires) {
  auto service = StoreService::Create({.model_id = kModel,
                                       .transfer = store_engine_.get(),
                                       .staging_bytes = EncodedBlockBytes(kTokens, kPayload),
                                       .reservation_ttl = absl::ZeroDuration()},
                                      shared_.get());
  ASSERT_OK(service.status());
  LoopbackServer other(service->get());
  ASSERT_NE(other.server, nullptr);
  auto stub = tandem::v1::KvStore::NewStub(other.channel);
  const size_t bytes = EncodedBlockBytes(kTokens, kPayload);
  auto reserve = [&](BlockHash hash) {
    tandem::v1::StoreReserveRequest request;
    request.set_model_id(kModel);
    request.add_block_hashes(hash);
    request.add_value_bytes(bytes);
    tandem::v1::StoreReserveResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->ReservePut(&ctx, request, &response).ok());
    return response;
  };
  const tandem::v1::StoreReserveResponse first = reserve(1);
  ASSERT_NE(first.reservation_id(), 0u);
  ASSERT_EQ(first.offsets(0), 0);
  // One slot only: the second reservation gets it because the first expired.
  const tandem::v1::StoreReserveResponse second = reserve(2);
  ASSERT_NE(second.reservation_id(), 0u);
  EXPECT_EQ(second.offsets(0), 0);
  EXPECT_EQ((*service)->stats().expired_reservations, 1);
  tandem::v1::StoreCommitRequest commit;
  commit.set_model_id(kModel);
  commit.set_reservation_id(first.reservation_id());
  tandem::v1::StorePutResponse committed;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->CommitPut(&ctx, commit, &committed).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Bytes that are not the block they claim to be (a flipped bit in transit, a
// late writer into a reused slot) are refused at commit and never stored.
TEST_P(StoreUcxTest, ACorruptStagedValueIsRefusedAtCommit) {
  auto stub = tandem::v1::KvStore::NewStub(channel_);
  std::string value = EncodeBlock({.model_id_hash = ModelIdHash(kModel),
                                   .block_hash = 31,
                                   .tokens = TokensFor(31, kTokens),
                                   .payload = PayloadFor(31, kPayload)});
  value[value.size() / 2] ^= 0x01;
  tandem::v1::StoreReserveRequest request;
  request.set_model_id(kModel);
  request.add_block_hashes(31);
  request.add_value_bytes(value.size());
  tandem::v1::StoreReserveResponse reserved;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ReservePut(&ctx, request, &reserved).ok());
  }
  ASSERT_GE(reserved.offsets(0), 0);
  const transfer::WriteRequest write{value.data(), static_cast<uint64_t>(reserved.offsets(0)), value.size()};
  ASSERT_OK(worker_engine_->Write(RegionFromProto(reserved.staging(), "store"), {&write, 1}));
  tandem::v1::StoreCommitRequest commit;
  commit.set_model_id(kModel);
  commit.set_reservation_id(reserved.reservation_id());
  tandem::v1::StorePutResponse committed;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->CommitPut(&ctx, commit, &committed).ok());
  EXPECT_EQ(committed.stored(), 0);
  EXPECT_EQ(service_->stats().refused_blocks, 1);
  EXPECT_FALSE(shared_->Find(31).has_value());
}

TEST_P(StoreUcxTest, SlotsOutsideTheDestinationAreRefused) {
  ASSERT_OK(shared_->Put(8, TokensFor(8, kTokens), PayloadFor(8, kPayload)));
  ASSERT_OK_AND_ASSIGN(transfer::RegisteredRegion landing, worker_engine_->Allocate(4096));
  auto stub = tandem::v1::KvStore::NewStub(channel_);
  tandem::v1::StoreGetIntoRequest request;
  request.set_model_id(kModel);
  request.add_block_hashes(8);
  request.add_offsets(4000);
  request.set_slot_bytes(EncodedBlockBytes(kTokens, kPayload));
  RegionToProto(worker_engine_->worker_address(), landing, request.mutable_destination());
  tandem::v1::StoreGetIntoResponse response;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub->GetInto(&ctx, request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(service_->stats().get_into_blocks, 0);
}

// A client with a transfer engine talking to a store without one: the store
// answers UNIMPLEMENTED and the client moves the bytes in gRPC messages.
TEST_P(StoreUcxTest, AStoreWithoutUcxMakesTheClientUseGrpc) {
  auto service = StoreService::Create({.model_id = kModel}, shared_.get());
  ASSERT_OK(service.status());
  LoopbackServer other(service->get());
  ASSERT_NE(other.server, nullptr);
  auto client = StoreClient::Create({.model_id = kModel,
                                     .transfer = worker_engine_.get(),
                                     .slot_bytes = EncodedBlockBytes(kTokens, kPayload)},
                                    other.channel);
  ASSERT_OK(client.status());
  EXPECT_EQ((*client)->transport(), "ucx");
  ASSERT_OK(shared_->Put(12, TokensFor(12, kTokens), PayloadFor(12, kPayload)));
  absl::StatusOr<std::string> value = (*client)->Fetch(12);
  ASSERT_OK(value.status());
  EXPECT_EQ((*client)->transport(), "grpc");
  EXPECT_GT((*client)->stats().grpc_fetch_bytes, 0);
  (*client)->Offer(13, EncodeBlock({.model_id_hash = ModelIdHash(kModel),
                                    .block_hash = 13,
                                    .tokens = TokensFor(13, kTokens),
                                    .payload = PayloadFor(13, kPayload)}));
  ASSERT_TRUE((*client)->Flush(absl::Now() + absl::Seconds(10)));
  EXPECT_TRUE(shared_->Find(13).has_value());
  (*client).reset();
}

INSTANTIATE_TEST_SUITE_P(Transports, StoreRpcTest, ::testing::Values("grpc", "ucx"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Ucx, StoreUcxTest, ::testing::Values("ucx"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace tandem::kvstore
