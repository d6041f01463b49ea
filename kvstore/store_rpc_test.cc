// The shared store over gRPC in one process: StoreService on a loopback
// server, TieredStores of two "workers" whose lookups fall through to it.
#include <memory>
#include <string>
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

class StoreRpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto shared = TieredStore::Create(StoreOptions(dir_.path() + "/store", nullptr));
    ASSERT_OK(shared.status());
    shared_ = std::move(*shared);
    service_ = std::make_unique<StoreService>(StoreServiceOptions{.model_id = kModel}, shared_.get());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  }

  std::unique_ptr<StoreClient> Client() {
    auto client = StoreClient::Create({.model_id = kModel}, channel_);
    EXPECT_OK(client.status());
    return client.ok() ? std::move(*client) : nullptr;
  }

  TempDir dir_;
  std::unique_ptr<TieredStore> shared_;
  std::unique_ptr<StoreService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(StoreRpcTest, WorkerAPutsWorkerBGetsTheSameBytes) {
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
  // Now in B's own DRAM.
  EXPECT_EQ((*worker_b)->Find(hash), Tier::kDram);
  // Other tokens under the same hash: a miss, not the stored bytes.
  EXPECT_THAT((*worker_b)->Get(hash, TokensFor(2, kTokens), absl::MakeSpan(out)).status(),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(StoreRpcTest, CorruptOrForeignValuesAreRefused) {
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

TEST_F(StoreRpcTest, AStoreThatIsDownIsAMiss) {
  std::unique_ptr<StoreClient> client = Client();
  ASSERT_NE(client, nullptr);
  auto worker = TieredStore::Create(StoreOptions("", client.get()));
  ASSERT_OK(worker.status());
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  server_.reset();
  std::vector<uint8_t> out(kPayload);
  EXPECT_THAT((*worker)->Get(5, TokensFor(5, kTokens), absl::MakeSpan(out)).status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(client->stats().fetch_errors, 1);
  // Offers to a dead store are dropped, never block the Put.
  ASSERT_OK((*worker)->Put(5, TokensFor(5, kTokens), PayloadFor(5, kPayload)));
  EXPECT_TRUE(client->Flush(absl::Now() + absl::Seconds(10)));
}

}  // namespace
}  // namespace tandem::kvstore
