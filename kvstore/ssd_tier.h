// The SSD tier (G3): encoded KV block values (kvstore/block_format.h) in
// RocksDB with BlobDB, size-bounded, surviving restarts and process crashes.
//
//   SsdTier::Options options;
//   options.path = "/var/lib/tandem/kv";
//   options.capacity_bytes = size_t{100} << 30;
//   options.model_id_hash = ModelIdHash(model_id);
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<SsdTier> ssd, SsdTier::Create(options));
//   std::vector<BlockHash> evicted;
//   TANDEM_RETURN_IF_ERROR(ssd->Put(hash, value, &evicted));
//   absl::StatusOr<std::string> value = ssd->Get(hash);  // checksum verified
//
// Storage. Column family "default": key = SsdKey(model_id_hash, hash) (16
// bytes: both big-endian), value = the encoded block; BlobDB
// (enable_blob_files, min_blob_size) puts block values into blob files so
// the LSM tree holds only small blob references, and blob garbage collection
// reclaims the space of deleted values during compaction. Column family
// "meta": the same key -> le64 value bytes ‖ le64 insertion sequence, a few
// bytes per block, written in the same WriteBatch as the value. Open scans
// only "meta" to rebuild the in-memory FIFO index, so opening never reads
// block values.
//
// Budget. used_bytes() is the sum of stored value lengths (every model's
// blocks in the database count); a Put that would pass capacity_bytes first
// deletes the oldest blocks (insertion order, in the same WriteBatch), so
// used_bytes() <= capacity_bytes() always. Disk usage runs above it by the
// LSM/blob overhead and by deleted values not yet garbage-collected.
//
// Integrity. Get verifies the checksum and that the header names this key's
// model and block; a value that fails is deleted, reported as Removed by the
// caller, and answered with DataLoss: it is never served.
//
// Durability contract:
//   - Process crash (kill -9, abort): every Put that returned OK is served
//     after reopening, whatever sync_writes is: the WAL is on, and RocksDB
//     hands each write's WAL record to the OS before the write returns.
//   - OS crash or power loss: with sync_writes = true a Put is durable once
//     it returns (the WAL is fsync'ed per write); with false (the default)
//     only what a later flush, sync'ed write or clean close persisted.
//   The crash test (ssd_tier_crash_test) kills a writer with SIGKILL in both
//   modes and checks every acknowledged block.
//
// Thread safety: all methods may be called from any thread. Writes are
// serialized by the tier's lock (index and database stay in step); Get reads
// RocksDB without it. StdMutex, not absl::Mutex: see dram_tier.h.
#ifndef TANDEM_KVSTORE_SSD_TIER_H_
#define TANDEM_KVSTORE_SSD_TIER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "common/mutex.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace tandem::kvstore {

class SsdTier {
 public:
  struct Options {
    // Directory of the RocksDB database; created if missing. Default: ""
    // (must be set). Fixed.
    std::string path;

    // Byte budget over stored value lengths. Must be > 0. Default: 0 (must be
    // set). Fixed.
    size_t capacity_bytes = 0;

    // Names the model in keys; Get checks it against the value's header.
    // Default: 0. Fixed.
    uint64_t model_id_hash = 0;

    // fsync the WAL on every Put (see the durability contract above).
    // Default: false.
    bool sync_writes = false;

    // Values at least this long go to blob files. Default: 4096 (a KV block
    // is far larger). Fixed.
    uint64_t min_blob_size = 4096;
  };

  // Opens (or creates) the database and rebuilds the index. InvalidArgument
  // for bad options; Internal / IOError text from RocksDB otherwise (e.g. the
  // database is locked by another process).
  static absl::StatusOr<std::unique_ptr<SsdTier>> Create(const Options& options);
  // Closes the database (flushing nothing extra: the WAL holds the rest).
  ~SsdTier();
  SsdTier(const SsdTier&) = delete;
  SsdTier& operator=(const SsdTier&) = delete;

  // Stores `value` under `hash` (a re-Put replaces it and makes it newest),
  // first deleting the oldest blocks while the budget would be exceeded;
  // their hashes (this model's only) are appended to *evicted (may be null).
  // InvalidArgument if the value is empty or larger than the whole budget.
  absl::Status Put(BlockHash hash, absl::Span<const uint8_t> value, std::vector<BlockHash>* evicted);

  // The verified value. NotFound if absent; DataLoss if it failed
  // verification (it has then been deleted; *removed, if not null, is set).
  absl::StatusOr<std::string> Get(BlockHash hash, bool* removed = nullptr);

  bool Contains(BlockHash hash) const;
  // OK if it was absent too.
  absl::Status Erase(BlockHash hash, bool* removed = nullptr);
  // This model's hashes, oldest first.
  std::vector<BlockHash> Keys() const;
  // Flushes memtables (and so blobs) to files and syncs the WAL.
  absl::Status Flush();

  size_t used_bytes() const;
  size_t capacity_bytes() const { return capacity_bytes_; }
  size_t num_blocks() const;

  // The RocksDB key of a block: model_id_hash then hash, both big-endian.
  static std::string SsdKey(uint64_t model_id_hash, BlockHash hash);
  // The column family names, for tools and tests that open the database
  // with RocksDB directly.
  static constexpr const char* kMetaColumnFamily = "meta";

 private:
  struct Entry {
    size_t bytes = 0;
    uint64_t seq = 0;
  };

  SsdTier(const Options& options, std::unique_ptr<rocksdb::DB> db,
          std::vector<rocksdb::ColumnFamilyHandle*> cfs);
  absl::Status EraseKeyLocked(const std::string& key, bool* removed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const size_t capacity_bytes_;
  const std::unique_ptr<rocksdb::DB> db_;          // closed and deleted after cfs_ by ~SsdTier
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;  // owned: [default, meta]

  mutable StdMutex mu_;
  absl::flat_hash_map<std::string, Entry> index_ ABSL_GUARDED_BY(mu_);  // key -> entry
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);          // seq -> key, oldest first
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  size_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_SSD_TIER_H_
