#include "kvstore/ssd_tier.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/test_util.h"
#include "rocksdb/db.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::FlipBytesInFiles;
using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::SmallFileSystem;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;
using ::tandem::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

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

// The siblings of `path` whose names start with `path` + `infix`.
std::vector<std::string> Siblings(const std::string& path, const std::string& infix) {
  std::vector<std::string> out;
  const std::filesystem::path p(path);
  for (const auto& e : std::filesystem::directory_iterator(p.parent_path())) {
    if (e.path().filename().string().rfind(p.filename().string() + infix, 0) == 0) out.push_back(e.path());
  }
  return out;
}

// A cache is disposable (issue #17): a database whose .sst and blob files
// were damaged is moved aside (kept for inspection), the tier opens empty on
// the same path and serves.
TEST(SsdTierTest, UnreadableDatabaseIsQuarantinedAndOpensEmpty) {
  TempDir dir;
  const std::string path = dir.path() + "/kv";
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(path)));
    for (BlockHash h = 1; h <= 8; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
    ASSERT_OK(ssd->Flush());
    EXPECT_FALSE(ssd->quarantined());
    EXPECT_EQ(ssd->quarantined_to(), "");
  }
  ASSERT_GE(FlipBytesInFiles(path, {".sst", ".blob"}), 2);
  // Without quarantine the damage is fatal: the failure `tandem store` met.
  SsdTier::Options strict = Opts(path);
  strict.quarantine_unreadable = false;
  EXPECT_THAT(SsdTier::Create(strict), StatusIs(absl::StatusCode::kDataLoss));

  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(path)));
  EXPECT_TRUE(ssd->quarantined());
  EXPECT_NE(ssd->quarantine_reason(), "");
  EXPECT_EQ(ssd->path(), path);
  EXPECT_EQ(ssd->num_blocks(), 0u);
  EXPECT_EQ(ssd->used_bytes(), 0u);
  EXPECT_TRUE(ssd->writable());
  // The damaged directory is kept beside it, files and all.
  const std::vector<std::string> kept = Siblings(path, ".quarantined-");
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(ssd->quarantined_to(), kept[0]);
  bool kept_sst = false;
  for (const auto& e : std::filesystem::directory_iterator(kept[0]))
    kept_sst |= e.path().extension() == ".sst";
  EXPECT_TRUE(kept_sst) << kept[0];
  // It serves, and what it stores now survives a reopen (no second quarantine).
  ASSERT_OK(ssd->Put(9, Bytes(Value(9)), nullptr));
  ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(9));
  EXPECT_EQ(v, Value(9));
  ssd.reset();
  ASSERT_OK_AND_ASSIGN(ssd, SsdTier::Create(Opts(path)));
  EXPECT_FALSE(ssd->quarantined());
  EXPECT_THAT(ssd->Keys(), ElementsAre(9));
  EXPECT_EQ(Siblings(path, ".quarantined-").size(), 1u);
}

// A database damaged again and again does not fill the disk with
// quarantined copies: only the newest keep_quarantined stay.
TEST(SsdTierTest, OnlyTheNewestQuarantinedDatabasesAreKept) {
  for (int keep : {1, 2}) {
    TempDir dir;
    const std::string path = dir.path() + "/kv";
    SsdTier::Options options = Opts(path);
    options.keep_quarantined = keep;
    std::string last;
    for (int round = 0; round < 3; ++round) {
      {
        ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(options));
        for (BlockHash h = 1; h <= 8; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
        ASSERT_OK(ssd->Flush());
      }
      ASSERT_GE(FlipBytesInFiles(path, {".sst", ".blob"}), 2);
      ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(options));
      ASSERT_TRUE(ssd->quarantined());
      last = ssd->quarantined_to();
    }
    std::vector<std::string> kept = Siblings(path, ".quarantined-");
    std::sort(kept.begin(), kept.end());
    ASSERT_EQ(kept.size(), static_cast<size_t>(keep)) << "keep " << keep;
    EXPECT_EQ(kept.back(), last);
  }
}

// `tandem up --kv-ssd-dir DIR` with DIR not there yet (issue #17): the
// tier creates its directory's parents, not only the last component.
TEST(SsdTierTest, MissingParentDirectoriesAreCreated) {
  TempDir dir;
  const std::string path = dir.path() + "/not/there/yet/prefill-0";
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(path)));
  EXPECT_FALSE(ssd->quarantined());
  ASSERT_OK(ssd->Put(1, Bytes(Value(1)), nullptr));
  EXPECT_TRUE(std::filesystem::exists(path + "/CURRENT"));
}

// A database in use by another holder is not damaged: never moved aside.
TEST(SsdTierTest, LockedDatabaseIsNeverQuarantined) {
  TempDir dir;
  const std::string path = dir.path() + "/kv";
  ASSERT_OK_AND_ASSIGN(auto first, SsdTier::Create(Opts(path)));
  ASSERT_OK(first->Put(1, Bytes(Value(1)), nullptr));
  EXPECT_FALSE(SsdTier::Create(Opts(path)).ok());
  EXPECT_TRUE(Siblings(path, ".quarantined-").empty());
  EXPECT_TRUE(Siblings(path, ".fresh-").empty());
  ASSERT_OK_AND_ASSIGN(std::string v, first->Get(1));
  EXPECT_EQ(v, Value(1));
}

// A value whose blob record fails RocksDB's own checksum is dropped like one
// failing the block's CRC32C: DataLoss once, then gone (not DataLoss forever).
TEST(SsdTierTest, BlobFailingItsChecksumIsDropped) {
  TempDir dir;
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
    for (BlockHash h = 1; h <= 4; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
    ASSERT_OK(ssd->Flush());
  }
  int damaged_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    if (e.path().extension() != ".blob") continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    const std::streamoff middle = static_cast<std::streamoff>(std::filesystem::file_size(e.path()) / 2);
    char c = 0;
    f.seekg(middle);
    f.get(c);
    f.seekp(middle);
    f.put(static_cast<char>(c ^ 0x20));
    damaged_files += f.good() ? 1 : 0;
  }
  ASSERT_GE(damaged_files, 1);
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(dir.path())));
  ASSERT_EQ(ssd->num_blocks(), 4u);
  int lost = 0;
  for (BlockHash h = 1; h <= 4; ++h) {
    absl::StatusOr<std::string> v = ssd->Get(h);
    if (v.ok()) {
      EXPECT_EQ(*v, Value(h));
      continue;
    }
    ++lost;
    EXPECT_THAT(v, StatusIs(absl::StatusCode::kDataLoss)) << h;
    EXPECT_FALSE(ssd->Contains(h)) << h;
    EXPECT_THAT(ssd->Get(h), StatusIs(absl::StatusCode::kNotFound)) << h;
  }
  EXPECT_GE(lost, 1);
}

// A device that fills while serving (ENOSPC): the tier stops writing (Put
// answers Unavailable at once, writable() says so) and keeps serving what it
// holds.
TEST(SsdTierTest, FullDeviceMakesTheTierReadOnlyAndItKeepsServing) {
  TempDir dir;
  const std::string mount_point = dir.path() + "/small";
  SmallFileSystem fs(mount_point, size_t{2} << 20);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(mount_point + "/kv")));
  absl::Status put;
  BlockHash filled = 0;
  while (filled < 1000 && put.ok()) {
    ++filled;
    put = ssd->Put(filled, Bytes(Value(filled)), nullptr);
  }
  ASSERT_FALSE(put.ok()) << "2 MiB never filled";
  EXPECT_FALSE(ssd->writable()) << put;
  EXPECT_FALSE(ssd->read_only_reason().empty());
  EXPECT_THAT(ssd->HealthDetail(), HasSubstr("read-only (a write failed on the device: "));
  ASSERT_GT(filled, 2u);
  EXPECT_THAT(ssd->Put(5000, Bytes(Value(5000)), nullptr), StatusIs(absl::StatusCode::kUnavailable));
  for (BlockHash h = 1; h < filled; ++h) {
    ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(h));
    EXPECT_EQ(v, Value(h)) << h;
  }
}

// A device that fills and then has room again: the tier stops writing,
// and writes again once RocksDB resumes (here every Put may try).
TEST(SsdTierTest, ReadOnlyTierWritesAgainOnceTheDeviceHasRoom) {
  TempDir dir;
  const std::string mount_point = dir.path() + "/small";
  SmallFileSystem fs(mount_point, size_t{4} << 20);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  // Room taken by someone else, freed later: more than the tier filled, so
  // that RocksDB can flush what its log holds when it recovers.
  const std::string ballast = mount_point + "/ballast";
  {
    std::ofstream out(ballast, std::ios::binary);
    out << std::string(size_t{3} << 20, 'x');
    ASSERT_TRUE(out.good());
  }
  SsdTier::Options options = Opts(mount_point + "/kv");
  options.resume_interval = absl::ZeroDuration();
  options.memtable_bytes = size_t{256} << 10;
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(options));
  absl::Status put;
  BlockHash filled = 0;
  while (filled < 1000 && put.ok()) {
    ++filled;
    put = ssd->Put(filled, Bytes(Value(filled)), nullptr);
  }
  ASSERT_FALSE(put.ok()) << "4 MiB never filled";
  ASSERT_FALSE(ssd->writable());
  // Still full: the write tried again fails and the tier stays read-only.
  EXPECT_THAT(ssd->Put(5000, Bytes(Value(5000)), nullptr), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(ssd->writable());

  std::filesystem::remove(ballast);
  // RocksDB's recovery notices the room within its own polling period.
  ASSERT_TRUE(::tandem::testing::PollUntil([&] { return ssd->Put(5000, Bytes(Value(5000)), nullptr).ok(); },
                                           absl::Seconds(60)));
  EXPECT_TRUE(ssd->writable());
  EXPECT_EQ(ssd->read_only_reason(), "");
  EXPECT_TRUE(ssd->AcceptsWrites());
  ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(5000));
  EXPECT_EQ(v, Value(5000));
  for (BlockHash h = 1; h < filled; ++h) {
    ASSERT_OK_AND_ASSIGN(std::string old, ssd->Get(h));
    EXPECT_EQ(old, Value(h)) << h;
  }
  // And what it wrote after resuming survives a reopen.
  ssd.reset();
  ASSERT_OK_AND_ASSIGN(ssd, SsdTier::Create(options));
  ASSERT_OK_AND_ASSIGN(v, ssd->Get(5000));
  EXPECT_EQ(v, Value(5000));
}

// A damaged directory that cannot be moved (here: it is a mount point,
// rename fails with EBUSY) stays where it is; a fresh sibling is used.
TEST(SsdTierTest, UnmovableUnreadableDatabaseOpensAFreshSibling) {
  TempDir dir;
  const std::string path = dir.path() + "/kv";
  SmallFileSystem fs(path, size_t{16} << 20);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  {
    ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(path)));
    for (BlockHash h = 1; h <= 8; ++h) ASSERT_OK(ssd->Put(h, Bytes(Value(h)), nullptr));
    ASSERT_OK(ssd->Flush());
  }
  ASSERT_GE(FlipBytesInFiles(path, {".sst", ".blob"}), 2);
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create(Opts(path)));
  EXPECT_TRUE(ssd->quarantined());
  EXPECT_EQ(ssd->quarantined_to(), "");
  EXPECT_THAT(ssd->HealthDetail(),
              HasSubstr(": writable, 0 blocks; started empty: the database found at start "
                        "was unreadable ("));
  const std::vector<std::string> fresh = Siblings(path, ".fresh-");
  ASSERT_EQ(fresh.size(), 1u);
  EXPECT_EQ(ssd->path(), fresh[0]);
  EXPECT_EQ(ssd->num_blocks(), 0u);
  ASSERT_OK(ssd->Put(9, Bytes(Value(9)), nullptr));
  ASSERT_OK_AND_ASSIGN(std::string v, ssd->Get(9));
  EXPECT_EQ(v, Value(9));
  EXPECT_TRUE(std::filesystem::exists(path + "/CURRENT")) << "the damaged database was not left in place";
}

}  // namespace
}  // namespace tandem::kvstore
