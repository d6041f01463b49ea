#include "kvstore/ssd_tier.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "rocksdb/db.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;

constexpr uint64_t kModel = 0xABCDEF;

std::string Value(BlockHash h, size_t payload = 8192) {
  const std::vector<int32_t> tokens = TokensFor(h, 16);
  const std::vector<uint8_t> bytes = PayloadFor(h, payload);
  return EncodeBlock({.model_id_hash = kModel, .block_hash = h, .tokens = tokens, .payload = bytes});
}
absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

SsdTier::Options Opts(const std::string& path, size_t capacity = size_t{1} << 30) {
  return {.path = path, .capacity_bytes = capacity, .model_id_hash = kModel};
}

// Rewrites the stored value of `hash` with RocksDB directly.
void Tamper(const std::string& path, BlockHash hash, const std::function<void(std::string*)>& edit) {
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {SsdTier::kMetaColumnFamily, rocksdb::ColumnFamilyOptions()}};
  rocksdb::ColumnFamilyOptions blob;
  blob.enable_blob_files = true;
  blob.min_blob_size = 4096;
  cfs[0].options = blob;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(db_options, path, cfs, &handles, &db).ok());
  const std::string key = SsdTier::SsdKey(kModel, hash);
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), handles[0], key, &value).ok());
  edit(&value);
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[0], key, value).ok());
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  ASSERT_TRUE(db->Close().ok());
  delete db;
}

TEST(SsdTierTest, RoundTripsAndSurvivesReopen) {
  TempDir dir;
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
    for (BlockHash h = 1; h <= 5; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
    ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(3));
    EXPECT_EQ(v, Value(3));
    EXPECT_THAT(ssd->Get(99), StatusIs(absl::StatusCode::kNotFound));
    ASSERT_OK(ssd->Flush());  // half the blocks in blob files, half only in the WAL
    for (BlockHash h = 6; h <= 8; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
  }
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
  EXPECT_THAT(ssd->Keys(), ElementsAre(1, 2, 3, 4, 5, 6, 7, 8));
  EXPECT_EQ(ssd->used_bytes(), 8 * Value(1).size());
  for (BlockHash h = 1; h <= 8; ++h) {
    ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(h));
    EXPECT_EQ(v, Value(h)) << h;
  }
  // Values go to blob files: a flushed database has some.
  ASSERT_OK(ssd->Flush());
  bool has_blob = false;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    has_blob |= e.path().extension() == ".blob";
  }
  EXPECT_TRUE(has_blob);
}

TEST(SsdTierTest, EvictsOldestToStayWithinBudget) {
  TempDir dir;
  const size_t one = Value(1).size();
  std::vector<BlockHash> evicted;
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path(), 3 * one + 10)));
    for (BlockHash h = 1; h <= 5; ++h) {
      ASSERT_OK(ssd->Put(h, Bytes(Value(h)), &evicted));
      EXPECT_LE(ssd->used_bytes(), ssd->capacity_bytes());
    }
    EXPECT_THAT(evicted, ElementsAre(1, 2));
    EXPECT_THAT(ssd->Keys(), ElementsAre(3, 4, 5));
    EXPECT_THAT(ssd->Get(1), StatusIs(absl::StatusCode::kNotFound));
    EXPECT_THAT(ssd->Put(9, Bytes(std::string(4 * one, 'x')), nullptr),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // Reopened with a smaller budget: trimmed, oldest first.
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path(), 2 * one)));
  EXPECT_THAT(ssd->Keys(), ElementsAre(4, 5));
  EXPECT_LE(ssd->used_bytes(), 2 * one);
}

TEST(SsdTierTest, CorruptValueIsDetectedDeletedAndNeverServed) {
  TempDir dir;
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
    for (BlockHash h = 1; h <= 3; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
    ASSERT_OK(ssd->Flush());
  }
  Tamper(dir.path(), 2, [](std::string* v) { (*v)[v->size() / 2] ^= 0x01; });  // one payload bit
  Tamper(dir.path(), 3, [](std::string* v) { *v = Value(1); });  // a valid value under the wrong key
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
    bool removed = false;
    EXPECT_THAT(ssd->Get(2, &removed), StatusIs(absl::StatusCode::kDataLoss));
    EXPECT_TRUE(removed);
    EXPECT_FALSE(ssd->Contains(2));
    EXPECT_THAT(ssd->Get(2), StatusIs(absl::StatusCode::kNotFound));
    EXPECT_THAT(ssd->Get(3), StatusIs(absl::StatusCode::kDataLoss));
    ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(1));
    EXPECT_EQ(v, Value(1));
  }
  // The deletion is persistent.
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
  EXPECT_THAT(ssd->Keys(), ElementsAre(1));
  EXPECT_EQ(ssd->used_bytes(), Value(1).size());
}

}  // namespace
}  // namespace tandem::kvstore
