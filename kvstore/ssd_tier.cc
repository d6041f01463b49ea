#include "kvstore/ssd_tier.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace tandem::kvstore {
namespace {

// RocksDB errors enter here and leave as absl::Status.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrFormat("SSD tier: %s: %s", what, s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError()) return absl::UnavailableError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

void PutBe64(char* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}
uint64_t GetBe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string EncodeMeta(uint64_t bytes, uint64_t seq) {
  std::string meta(16, '\0');
  std::memcpy(meta.data(), &bytes, 8);  // little-endian hosts only (block_format.cc)
  std::memcpy(meta.data() + 8, &seq, 8);
  return meta;
}

// RocksDB's own log, errors only, into glog instead of a LOG file inside
// the tier's directory: on a full device a LOG file whose write failed once
// aborts the process on its next line (Debian's librocksdb 7.8 keeps its
// asserts: WritableFileWriter's `sync_without_flush_called_`), and the
// directory then holds only the cache.
class RocksLogToGlog : public rocksdb::Logger {
 public:
  RocksLogToGlog() : rocksdb::Logger(rocksdb::InfoLogLevel::ERROR_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    std::vsnprintf(line, sizeof(line), format, ap);
#pragma GCC diagnostic pop
    LOG(WARNING) << "rocksdb: " << line;
  }
};

// Whether RocksDB refused the database because another holder has its LOCK
// (env/fs_posix.cc: "lock hold by current process" within this process,
// "While lock file" from fcntl for another one): the database is in use,
// not damaged, and must not be moved.
bool IsLockHeld(const rocksdb::Status& s) {
  const std::string text = s.ToString();
  return absl::StrContains(text, "lock hold by current process") ||
         absl::StrContains(text, "While lock file");
}

// A write failure of the device or the database's state (ENOSPC, a
// read-only file system, RocksDB's background error), as opposed to a
// refused request: after one, the tier stops writing.
bool IsDeviceFailure(const rocksdb::Status& s) {
  return s.IsIOError() || s.IsCorruption() || s.IsNoSpace() || s.IsIncomplete();
}

// `path` + `infix` + the UTC time to the microsecond (so that name order is
// age order, which PruneQuarantined relies on), with a counter appended
// while that name exists already.
std::string UnusedSibling(const std::string& path, const char* infix) {
  const std::string base =
      absl::StrCat(path, infix, absl::FormatTime("%Y%m%dT%H%M%E6SZ", absl::Now(), absl::UTCTimeZone()));
  std::string candidate = base;
  std::error_code ec;
  for (int i = 1; std::filesystem::exists(candidate, ec) || ec; ++i) candidate = absl::StrCat(base, "-", i);
  return candidate;
}

// Deletes all but the newest `keep` of `path`'s quarantined siblings (their
// names end in the UTC time they were moved aside, so name order is age).
void PruneQuarantined(const std::string& path, int keep) {
  const std::filesystem::path p(path);
  const std::string prefix = p.filename().string() + ".quarantined-";
  std::vector<std::filesystem::path> found;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(p.parent_path(), ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(prefix, 0) == 0) found.push_back(it->path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + static_cast<size_t>(std::max(keep, 0)) < found.size(); ++i) {
    std::error_code removed;
    std::filesystem::remove_all(found[i], removed);
    if (removed) {
      LOG(WARNING) << "could not delete the old quarantined KV SSD tier " << found[i] << ": "
                   << removed.message();
    } else {
      LOG(INFO) << "deleted the old quarantined KV SSD tier " << found[i];
    }
  }
}

}  // namespace

std::string SsdTier::SsdKey(uint64_t model_id_hash, BlockHash hash) {
  std::string key(16, '\0');
  PutBe64(key.data(), model_id_hash);
  PutBe64(key.data() + 8, hash);
  return key;
}

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(const Options& options, const std::string& path,
                                                       bool* locked) {
  *locked = false;
  // RocksDB creates the last directory only (create_if_missing).
  std::error_code mkdir_error;
  std::filesystem::create_directories(path, mkdir_error);
  if (mkdir_error) {
    return absl::UnavailableError(
        absl::StrFormat("SSD tier: cannot create directory %s: %s", path, mkdir_error.message()));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.info_log = std::make_shared<RocksLogToGlog>();
  rocksdb::ColumnFamilyOptions values;
  values.enable_blob_files = true;
  values.min_blob_size = options.min_blob_size;
  values.enable_blob_garbage_collection = true;
  values.blob_compression_type = rocksdb::kNoCompression;  // F32 KV barely compresses
  values.compression = rocksdb::kNoCompression;
  rocksdb::ColumnFamilyOptions meta;
  if (options.memtable_bytes > 0) values.write_buffer_size = meta.write_buffer_size = options.memtable_bytes;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {{rocksdb::kDefaultColumnFamilyName, values},
                                                              {kMetaColumnFamily, meta}};
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  rocksdb::DB* db = nullptr;
  {
    const rocksdb::Status s = rocksdb::DB::Open(db_options, path, descriptors, &cfs, &db);
    if (!s.ok()) {
      *locked = IsLockHeld(s);
      return FromRocks(s, "open " + path);
    }
  }
  std::unique_ptr<SsdTier> tier(new SsdTier(options, path, std::unique_ptr<rocksdb::DB>(db), std::move(cfs)));
  // Nobody else sees the tier yet; the lock is for the analysis (uncontended).
  StdMutexLock lock(&tier->mu_);
  // Rebuild the FIFO index from the small "meta" column family.
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), tier->cfs_[1]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice v = it->value();
    if (v.size() != 16 || it->key().size() != 16) continue;  // not ours; leave it alone
    uint64_t bytes = 0, seq = 0;
    std::memcpy(&bytes, v.data(), 8);
    std::memcpy(&seq, v.data() + 8, 8);
    std::string key = it->key().ToString();
    tier->order_.emplace(seq, key);
    tier->index_.emplace(std::move(key), Entry{static_cast<size_t>(bytes), seq});
    tier->used_bytes_ += bytes;
    tier->next_seq_ = std::max(tier->next_seq_, seq + 1);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan index of " + path);
  it.reset();
  // A database written with a larger budget: trim to this one.
  while (tier->used_bytes_ > tier->capacity_bytes_ && !tier->order_.empty()) {
    TANDEM_RETURN_IF_ERROR(tier->EraseKeyLocked(std::string(tier->order_.begin()->second), nullptr));
  }
  return tier;
}

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Create(const Options& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("SsdTier: path must be set");
  if (options.capacity_bytes == 0) return absl::InvalidArgumentError("SsdTier: capacity_bytes must be > 0");
  bool locked = false;
  absl::StatusOr<std::unique_ptr<SsdTier>> tier = Open(options, options.path, &locked);
  if (tier.ok() || locked || !options.quarantine_unreadable) return tier;
  const absl::Status unreadable = tier.status();
  // A cache is disposable: keep the damaged directory for inspection, start
  // empty. A path that cannot be moved (its parent is read-only, ...) stays
  // and a fresh sibling is used.
  std::string quarantined_to = UnusedSibling(options.path, ".quarantined-");
  std::error_code rename_error;
  std::filesystem::rename(options.path, quarantined_to, rename_error);
  std::string path = options.path;
  if (rename_error) {
    quarantined_to.clear();
    path = UnusedSibling(options.path, ".fresh-");
  } else {
    PruneQuarantined(options.path, options.keep_quarantined);
  }
  tier = Open(options, path, &locked);
  if (!tier.ok()) {
    return absl::Status(tier.status().code(),
                        absl::StrFormat("%s (after: %s)", tier.status().message(), unreadable.message()));
  }
  (*tier)->quarantined_to_ = quarantined_to;
  (*tier)->quarantine_reason_ = std::string(unreadable.message());
  LOG(WARNING) << "KV SSD tier at " << options.path << " was unreadable (" << unreadable.message() << "); "
               << (quarantined_to.empty()
                       ? absl::StrCat("it could not be moved (", rename_error.message(), "): using ", path)
                       : absl::StrCat("moved to ", quarantined_to))
               << ", starting empty";
  return tier;
}

SsdTier::SsdTier(const Options& options, std::string path, std::unique_ptr<rocksdb::DB> db,
                 std::vector<rocksdb::ColumnFamilyHandle*> cfs)
    : options_(options),
      path_(std::move(path)),
      capacity_bytes_(options.capacity_bytes),
      db_(std::move(db)),
      cfs_(std::move(cfs)) {}

SsdTier::~SsdTier() {
  for (rocksdb::ColumnFamilyHandle* cf : cfs_) (void)db_->DestroyColumnFamilyHandle(cf);
  (void)db_->Close();  // db_ itself is deleted after this body
}

absl::Status SsdTier::WriteLocked(rocksdb::WriteBatch* batch, const char* what) {
  const bool was_read_only = !writable();
  if (!WriteDueLocked()) return absl::UnavailableError(absl::StrFormat("SSD tier %s is read-only", path_));
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  const rocksdb::Status s = db_->Write(wo, batch);
  if (s.ok() && was_read_only) {
    LOG(INFO) << "KV SSD tier at " << path_ << " writes again (it stopped on: " << read_only_reason_ << ")";
    read_only_reason_.clear();
    writable_ = true;
  }
  if (!s.ok() && IsDeviceFailure(s)) {
    last_resume_try_ = absl::Now();
    if (writable_.exchange(false)) {
      read_only_reason_ = s.ToString();
      LOG(WARNING) << "KV SSD tier at " << path_ << " stops writing (" << s.ToString()
                   << "); it keeps serving what it holds";
    }
  }
  // A read-only tier's refused write stays Unavailable.
  if (!s.ok() && was_read_only) {
    return absl::UnavailableError(absl::StrFormat("SSD tier %s is read-only (%s)", path_, s.ToString()));
  }
  return FromRocks(s, what);
}

bool SsdTier::WriteDueLocked() {
  if (writable()) return true;
  const absl::Time now = absl::Now();
  if (now - last_resume_try_ < options_.resume_interval) return false;
  last_resume_try_ = now;
  // Busy when RocksDB's own recovery (its SstFileManager polls for free
  // space) is under way; either may clear the error. The write itself says.
  (void)db_->Resume();
  return true;
}

bool SsdTier::AcceptsWrites() {
  if (writable()) return true;
  StdMutexLock lock(&mu_);
  return WriteDueLocked();
}

absl::Status SsdTier::EraseKeyLocked(const std::string& key, bool* removed) {
  auto it = index_.find(key);
  if (it == index_.end()) return absl::OkStatus();
  rocksdb::WriteBatch batch;
  batch.Delete(cfs_[0], key);
  batch.Delete(cfs_[1], key);
  // A read-only tier forgets the block all the same: it is never served
  // again by this process (a reopen verifies it again).
  if (absl::Status s = WriteLocked(&batch, "delete"); !s.ok() && writable()) return s;
  order_.erase(it->second.seq);
  used_bytes_ -= it->second.bytes;
  index_.erase(it);
  if (removed != nullptr) *removed = true;
  return absl::OkStatus();
}

absl::Status SsdTier::Put(BlockHash hash, absl::Span<const uint8_t> value, std::vector<BlockHash>* evicted) {
  if (value.empty() || value.size() > capacity_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("SsdTier: value of %d bytes (budget %d bytes)", value.size(), capacity_bytes_));
  }
  const std::string key = SsdKey(options_.model_id_hash, hash);
  StdMutexLock lock(&mu_);
  rocksdb::WriteBatch batch;
  // Victims, oldest first, until the new value fits (a replaced value frees
  // its own bytes).
  size_t freed = 0;
  if (auto it = index_.find(key); it != index_.end()) freed = it->second.bytes;
  std::vector<std::map<uint64_t, std::string>::iterator> victims;
  for (auto o = order_.begin(); used_bytes_ - freed + value.size() > capacity_bytes_ && o != order_.end();
       ++o) {
    if (o->second == key) continue;
    victims.push_back(o);
    freed += index_.at(o->second).bytes;
    batch.Delete(cfs_[0], o->second);
    batch.Delete(cfs_[1], o->second);
  }
  const uint64_t seq = next_seq_++;
  batch.Put(cfs_[0], key, rocksdb::Slice(reinterpret_cast<const char*>(value.data()), value.size()));
  batch.Put(cfs_[1], key, EncodeMeta(value.size(), seq));
  TANDEM_RETURN_IF_ERROR(WriteLocked(&batch, "put"));
  for (auto o : victims) {
    auto e = index_.find(o->second);
    used_bytes_ -= e->second.bytes;
    if (evicted != nullptr && GetBe64(o->second.data()) == options_.model_id_hash) {
      evicted->push_back(GetBe64(o->second.data() + 8));
    }
    index_.erase(e);
    order_.erase(o);
  }
  if (auto it = index_.find(key); it != index_.end()) {
    used_bytes_ -= it->second.bytes;
    order_.erase(it->second.seq);
    index_.erase(it);
  }
  index_.emplace(key, Entry{value.size(), seq});
  order_.emplace(seq, key);
  used_bytes_ += value.size();
  return absl::OkStatus();
}

absl::StatusOr<std::string> SsdTier::Get(BlockHash hash, bool* removed) {
  const std::string key = SsdKey(options_.model_id_hash, hash);
  uint64_t seq = 0;
  {
    StdMutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return absl::NotFoundError(absl::StrFormat("block %016x not on SSD", hash));
    seq = it->second.seq;
  }
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cfs_[0], key, &value);
  absl::Status bad;
  if (s.ok()) {
    absl::StatusOr<BlockView> view = DecodeBlock(value, /*verify_checksum=*/true);
    if (!view.ok()) {
      bad = view.status();
    } else if (view->block_hash != hash || view->model_id_hash != options_.model_id_hash) {
      bad = absl::DataLossError(
          absl::StrFormat("SSD value under block %016x names block %016x", hash, view->block_hash));
    } else {
      return value;
    }
  } else if (s.IsNotFound()) {
    bad = absl::DataLossError(absl::StrFormat("block %016x indexed but missing on SSD", hash));
  } else if (s.IsCorruption()) {
    bad = FromRocks(s, "get");  // RocksDB's own checksum (blob record, SST block) failed
  } else {
    return FromRocks(s, "get");
  }
  // Never serve it; drop it unless a new Put replaced it meanwhile.
  StdMutexLock lock(&mu_);
  if (auto it = index_.find(key); it != index_.end() && it->second.seq == seq) {
    TANDEM_RETURN_IF_ERROR(EraseKeyLocked(key, removed));
  }
  return absl::DataLossError(absl::StrFormat("SSD tier: %s (deleted)", bad.message()));
}

bool SsdTier::Contains(BlockHash hash) const {
  StdMutexLock lock(&mu_);
  return index_.contains(SsdKey(options_.model_id_hash, hash));
}

absl::Status SsdTier::Erase(BlockHash hash, bool* removed) {
  StdMutexLock lock(&mu_);
  return EraseKeyLocked(SsdKey(options_.model_id_hash, hash), removed);
}

std::vector<BlockHash> SsdTier::Keys() const {
  StdMutexLock lock(&mu_);
  std::vector<BlockHash> keys;
  keys.reserve(order_.size());
  for (const auto& [seq, key] : order_) {
    if (GetBe64(key.data()) == options_.model_id_hash) keys.push_back(GetBe64(key.data() + 8));
  }
  return keys;
}

absl::Status SsdTier::Flush() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  TANDEM_RETURN_IF_ERROR(FromRocks(db_->Flush(fo, cfs_), "flush"));
  return FromRocks(db_->SyncWAL(), "sync WAL");
}

size_t SsdTier::used_bytes() const {
  StdMutexLock lock(&mu_);
  return used_bytes_;
}

size_t SsdTier::num_blocks() const {
  StdMutexLock lock(&mu_);
  return index_.size();
}

std::string SsdTier::read_only_reason() const {
  StdMutexLock lock(&mu_);
  return read_only_reason_;
}

std::string SsdTier::HealthDetail() const {
  std::string detail;
  {
    StdMutexLock lock(&mu_);
    detail = read_only_reason_.empty()
                 ? absl::StrFormat("kv ssd %s: writable, %d blocks", path_, index_.size())
                 : absl::StrFormat(
                       "kv ssd %s: read-only (a write failed on the device: %s); serving the %d "
                       "blocks it holds",
                       path_, read_only_reason_, index_.size());
  }
  if (quarantined()) {
    absl::StrAppendFormat(&detail, "; started empty: the database found at start was unreadable (%s)%s",
                          quarantine_reason_,
                          quarantined_to_.empty() ? "" : absl::StrCat(", moved to ", quarantined_to_));
  }
  return detail;
}

}  // namespace tandem::kvstore
