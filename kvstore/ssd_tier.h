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
// Degrading, never failing (a cache is disposable). A directory whose
// database cannot be opened or whose index cannot be read (corruption such
// as a block checksum mismatch in an .sst file, a format this RocksDB does not
// read, a permission error) is moved aside to `<path>.quarantined-<UTC time>`
// (or, when it cannot be moved, left alone and a fresh sibling
// `<path>.fresh-<UTC time>` used instead), the tier starts empty and logs one
// WARNING line; quarantined_to() says where it went. A database locked by a
// live process is never moved (Create fails). Missing directories of `path`
// are created, parents included. A write that fails on the device (ENOSPC,
// a file system turned read-only) makes the tier read-only: writable()
// turns false, Put answers Unavailable at once, Get still serves what is
// readable. Every Options::resume_interval one write is tried again (Put,
// or a caller that asked AcceptsWrites) after asking RocksDB to resume
// (DB::Resume; RocksDB also recovers by itself once it sees free space):
// once the device has room again it succeeds and the tier writes again.
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

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "common/mutex.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace tandem::kvstore {

class SsdTier {
 public:
  struct Options {
    // Directory of the RocksDB database; created if missing (parents too).
    // Default: "" (must be set). Fixed.
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

    // Move an unreadable database aside and start empty (see "Degrading,
    // never failing"); false: Create fails instead. Default: true.
    bool quarantine_unreadable = true;

    // Quarantined databases kept beside `path`, newest first: each holds a
    // whole cache's worth of disk, so a database damaged again and again
    // must not fill the device. Older ones are deleted when a new one is
    // moved aside. Default: 1.
    int keep_quarantined = 1;

    // How often a read-only tier tries to write again (see above).
    // Default: 10 s.
    absl::Duration resume_interval = absl::Seconds(10);

    // RocksDB's memtable size per column family (write_buffer_size); 0:
    // RocksDB's default (64 MiB). RocksDB recovers from a full device only
    // once about this much is free again. Default: 0. Fixed.
    size_t memtable_bytes = 0;
  };

  // Opens (or creates) the database and rebuilds the index, quarantining an
  // unreadable one (above). InvalidArgument for bad options; the RocksDB
  // error otherwise: the database is locked by another process, or neither
  // it nor a fresh directory beside it could be opened.
  static absl::StatusOr<std::unique_ptr<SsdTier>> Create(const Options& options);
  // Closes the database (flushing nothing extra: the WAL holds the rest).
  ~SsdTier();
  SsdTier(const SsdTier&) = delete;
  SsdTier& operator=(const SsdTier&) = delete;

  // Stores `value` under `hash` (a re-Put replaces it and makes it newest),
  // first deleting the oldest blocks while the budget would be exceeded;
  // their hashes (this model's only) are appended to *evicted (may be null).
  // InvalidArgument if the value is empty or larger than the whole budget;
  // Unavailable once the tier is read-only (writable() false).
  absl::Status Put(BlockHash hash, absl::Span<const uint8_t> value, std::vector<BlockHash>* evicted);

  // The verified value. NotFound if absent; DataLoss if it failed
  // verification (it has then been deleted; *removed, if not null, is set).
  absl::StatusOr<std::string> Get(BlockHash hash, bool* removed = nullptr);

  bool Contains(BlockHash hash) const;
  // OK if it was absent too. On a read-only tier the block leaves the index
  // (it is never served again by this process) but stays on the device.
  absl::Status Erase(BlockHash hash, bool* removed = nullptr);
  // This model's hashes, oldest first.
  std::vector<BlockHash> Keys() const;
  // Flushes memtables (and so blobs) to files and syncs the WAL.
  absl::Status Flush();

  size_t used_bytes() const;
  size_t capacity_bytes() const { return capacity_bytes_; }

  // The directory in use: Options::path, or the fresh sibling opened when
  // an unreadable one could not be moved aside.
  const std::string& path() const { return path_; }
  // Where the unreadable database found by Create was moved ("" when none
  // was, or when it stayed in place because it could not be moved), and the
  // error that made it unreadable ("" when it opened).
  const std::string& quarantined_to() const { return quarantined_to_; }
  const std::string& quarantine_reason() const { return quarantine_reason_; }
  bool quarantined() const { return !quarantine_reason_.empty(); }
  // False once a write failed on the device, until a resume succeeds (see
  // above).
  bool writable() const { return writable_.load(std::memory_order_relaxed); }
  // writable(), or read-only with resume_interval passed since the last
  // try: whether a Put now may find the device writable again. For a caller
  // about to write behind (a read-only tier is otherwise never asked to
  // write again).
  bool AcceptsWrites();
  // The device error that made the tier read-only ("" while writable).
  std::string read_only_reason() const;
  size_t num_blocks() const;
  // One line for an operator (a process's /ready detail): "writable", or
  // read-only with the device error, and the quarantine found at start.
  std::string HealthDetail() const;

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

  SsdTier(const Options& options, std::string path, std::unique_ptr<rocksdb::DB> db,
          std::vector<rocksdb::ColumnFamilyHandle*> cfs);
  // Opens the database at `path` and rebuilds the index (no quarantine).
  // *locked: the failure was another holder's lock on the database.
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const Options& options, const std::string& path,
                                                       bool* locked);
  // A write to RocksDB; a device failure turns the tier read-only.
  absl::Status WriteLocked(rocksdb::WriteBatch* batch, const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether to try a write now: writable, or read-only with
  // resume_interval passed since the last try (then it also asks RocksDB to
  // resume). A write that then succeeds makes the tier writable again.
  bool WriteDueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EraseKeyLocked(const std::string& key, bool* removed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::string path_;
  std::string quarantined_to_;     // set by Create before the tier is shared
  std::string quarantine_reason_;  // ditto
  std::atomic<bool> writable_{true};
  const size_t capacity_bytes_;
  const std::unique_ptr<rocksdb::DB> db_;          // closed and deleted after cfs_ by ~SsdTier
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;  // owned: [default, meta]

  mutable StdMutex mu_;
  absl::flat_hash_map<std::string, Entry> index_ ABSL_GUARDED_BY(mu_);  // key -> entry
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);          // seq -> key, oldest first
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  size_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::string read_only_reason_ ABSL_GUARDED_BY(mu_);
  absl::Time last_resume_try_ ABSL_GUARDED_BY(mu_);  // or when it turned read-only
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_SSD_TIER_H_
