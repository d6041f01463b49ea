// The KV tiers below HBM for one model: a DramTier in front of an optional
// SsdTier, with write-behind from DRAM to SSD, promotion of SSD hits into
// DRAM, and KV events for every block that enters or leaves a tier.
//
//   TieredStore::Options options;
//   options.model_id = llama->config().model_id;
//   options.block_tokens = layout.block_size;
//   options.payload_bytes = layout.BlockBytes();
//   options.dram_bytes = size_t{8} << 30;
//   options.ssd_path = "/nvme/tandem-kv";
//   options.ssd_bytes = size_t{200} << 30;
//   options.on_event = [&](const TierEvent& e) { publisher.Enqueue(e); };
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<TieredStore> store, TieredStore::Create(options));
//   TANDEM_RETURN_IF_ERROR(store->Put(hash, tokens, kv_bytes));  // HBM eviction
//   absl::StatusOr<Tier> from = store->Get(hash, tokens, block_memory);  // promotion
//
// Write path. Put encodes the block straight into a DRAM slot (LRU victims
// are dropped from DRAM: they were written behind to SSD already) and, with
// an SSD tier, queues a copy of the value for the store's one writer thread,
// which puts it into RocksDB. The queue holds at most write_queue_blocks
// values. Back-pressure: when it is full, Put waits up to put_timeout for
// room and then fails with ResourceExhausted having stored nothing (the
// caller, e.g. the engine's eviction hook, drops the block: it is only a
// cache). A block already on SSD is not queued again, nor any block once the
// SSD tier is read-only (SsdTier::writable(): a full or failed device).
//
// Read path. Get looks in DRAM, then on SSD (checksum verified there); an SSD
// hit is promoted into DRAM. A block whose tokens differ from the caller's
// (a hash collision) is a miss. A block still in the write queue and already
// evicted from DRAM is a miss too (rare; the caller recomputes it).
//
// Events. on_event receives Stored{hashes, tier} when blocks enter a tier and
// Removed{hashes, tier} when they leave it (eviction, Erase, a corrupt SSD
// value). Events of one tier are delivered in the order the changes happened
// (the sink runs under a per-tier lock), from whichever thread made the change
// (a Put/Get caller, or the writer thread for SSD). The sink must be quick and
// must not call into the store.
//
// Shutdown. The destructor stops accepting work, drains the write queue into
// SSD, and joins the writer thread (every queued block is written).
//
// Thread safety: all methods may be called from any thread. StdMutex
// (common/mutex.h) and std::condition_variable, not absl::Mutex: see
// dram_tier.h (TSan).
#ifndef TANDEM_KVSTORE_TIERED_STORE_H_
#define TANDEM_KVSTORE_TIERED_STORE_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/block_hash.h"
#include "common/mutex.h"
#include "engine/kv_tiers.h"
#include "kvstore/dram_tier.h"
#include "kvstore/remote_tier.h"
#include "kvstore/ssd_tier.h"

namespace tandem::kvstore {

// kRemote: the shared store behind Options::remote (never in events or
// Snapshot: those describe this process's own tiers).
enum class Tier { kDram, kSsd, kRemote };
const char* TierName(Tier tier);  // "dram", "ssd", "remote"

struct TierEvent {
  enum class Kind { kStored, kRemoved };
  Kind kind = Kind::kStored;
  Tier tier = Tier::kDram;
  std::vector<BlockHash> hashes;
};

// The engine reaches the store through engine::KvTiers (engine/kv_tiers.h):
// Offload is Put, Load is Get, HoldsLocally is Find.
class TieredStore : public engine::KvTiers {
 public:
  struct Options {
    // Names the model in every value header and SSD key. Default: "" (must
    // be set). Fixed.
    std::string model_id;
    // Tokens per block (KvLayout::block_size) and KV bytes per block
    // (KvLayout::BlockBytes()); every Put and Get uses exactly these.
    // Default: 0 (must be set). Fixed.
    int32_t block_tokens = 0;
    size_t payload_bytes = 0;

    // DRAM tier budget; must hold at least one block. Default: 1 GiB. Fixed.
    size_t dram_bytes = size_t{1} << 30;
    // Borrowed: register the DRAM pool with this transfer engine (see
    // DramTier::Options::transfer). Default: null.
    transfer::TransferEngine* transfer = nullptr;

    // RocksDB directory of the SSD tier; empty = no SSD tier. Default: "".
    std::string ssd_path;
    // SSD tier budget (value bytes). Default: 10 GiB. Fixed.
    size_t ssd_bytes = size_t{10} << 30;
    // See SsdTier::Options::sync_writes. Default: false.
    bool ssd_sync_writes = false;

    // Most values waiting for the SSD writer. Must be >= 1. Default: 64.
    int32_t write_queue_blocks = 64;
    // How long Put waits for room in a full write queue. Default: 100 ms.
    absl::Duration put_timeout = absl::Milliseconds(100);

    // Borrowed: a tier in another process (the shared store) below SSD.
    // Get and Promote fall through to it on a local miss (a hit is verified
    // with its checksum and put into DRAM, not written to SSD); Put offers
    // every new block to it. Default: null.
    RemoteTier* remote = nullptr;

    // KV event sink (see the file comment). Default: empty (no events).
    std::function<void(const TierEvent&)> on_event;
  };

  struct Stats {
    int64_t puts = 0;
    int64_t puts_rejected = 0;  // ResourceExhausted: write queue full
    int64_t dram_hits = 0;
    int64_t ssd_hits = 0;
    int64_t misses = 0;
    int64_t ssd_writes = 0;
    int64_t ssd_write_errors = 0;
    int64_t corrupt_blocks = 0;     // SSD values that failed verification (deleted)
    int64_t promotions = 0;         // Promote calls that moved an SSD block into DRAM
    int64_t remote_hits = 0;        // Get calls served by Options::remote
    int64_t remote_promotions = 0;  // Promote calls served by Options::remote
    int64_t remote_rejected = 0;    // remote values that failed verification
  };

  static absl::StatusOr<std::unique_ptr<TieredStore>> Create(const Options& options);
  ~TieredStore() override;
  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;

  // Stores a block (see "Write path"). InvalidArgument on wrong sizes;
  // ResourceExhausted when the write queue stayed full for put_timeout;
  // FailedPrecondition after shutdown began.
  absl::Status Put(BlockHash hash, absl::Span<const int32_t> tokens, absl::Span<const uint8_t> payload);

  // Copies the block's KV bytes into `payload_out` (payload_bytes long) and
  // says where it was found. `tokens` (block_tokens long) must equal the
  // stored tokens. NotFound on a miss (collisions included); DataLoss for a
  // corrupt SSD value (deleted, never copied out); InvalidArgument on wrong sizes.
  absl::StatusOr<Tier> Get(BlockHash hash, absl::Span<const int32_t> tokens, absl::Span<uint8_t> payload_out);

  // Makes the block DRAM-resident without copying it out (prefetch ahead of
  // a Get): a DRAM block stays (and becomes most recently used), an SSD block
  // is read, verified and put into DRAM. Says where it was. NotFound when
  // neither tier holds it or the stored tokens differ from `tokens`; DataLoss
  // for a corrupt SSD value (deleted). Counted in Stats::promotions, not in
  // the hit counters.
  absl::StatusOr<Tier> Promote(BlockHash hash, absl::Span<const int32_t> tokens);

  // Promote of consecutive blocks (block i's tokens are
  // tokens[i * block_tokens, (i + 1) * block_tokens)), parallel to `hashes`:
  // the blocks neither DRAM nor SSD holds are asked of Options::remote in
  // one RemoteTier::FetchMany instead of one round trip each.
  std::vector<absl::StatusOr<Tier>> PromoteMany(absl::Span<const BlockHash> hashes,
                                                absl::Span<const int32_t> tokens);

  // The stored value of `hash` as encoded (kvstore/block_format.h), from
  // DRAM or SSD (an SSD hit is verified, and promoted into DRAM); never from
  // Options::remote. For the shared store's server. NotFound on a miss.
  absl::StatusOr<std::string> GetEncoded(BlockHash hash);

  // Stores an encoded value received from elsewhere: verifies its checksum,
  // model, hash and sizes (DataLoss / InvalidArgument otherwise), then Put.
  absl::Status PutEncoded(BlockHash hash, std::string_view value);

  // Where a block is now (DRAM first), without touching LRU order.
  std::optional<Tier> Find(BlockHash hash) const;

  // Whether Get may find the block: a local tier holds it, or Options::remote
  // is set (only a Get asks it). No I/O.
  bool MayHold(BlockHash hash) const override { return options_.remote != nullptr || Find(hash).has_value(); }

  // Removes a block from both tiers and from the write queue.
  absl::Status Erase(BlockHash hash);

  // Every (hash, tier) held now; a block in both tiers appears twice.
  std::vector<std::pair<BlockHash, Tier>> Snapshot() const;

  // Waits until the write queue is empty and the writer idle, or the deadline.
  // DeadlineExceeded when it passed first.
  absl::Status Flush(absl::Time deadline);

  Stats stats() const;
  DramTier& dram() { return *dram_; }
  // Null without an SSD tier.
  SsdTier* ssd() { return ssd_.get(); }
  const Options& options() const { return options_; }

  // engine::KvTiers.
  const std::string& model_id() const override { return options_.model_id; }
  int32_t block_tokens() const override { return options_.block_tokens; }
  size_t payload_bytes() const override { return options_.payload_bytes; }
  absl::Status Offload(BlockHash hash, absl::Span<const int32_t> tokens,
                       absl::Span<const uint8_t> payload) override {
    return Put(hash, tokens, payload);
  }
  absl::StatusOr<engine::KvTierSource> Load(BlockHash hash, absl::Span<const int32_t> tokens,
                                            absl::Span<uint8_t> payload_out) override;
  bool HoldsLocally(BlockHash hash) const override { return Find(hash).has_value(); }

 private:
  struct Pending {
    BlockHash hash = 0;
    std::string value;
  };

  explicit TieredStore(const Options& options);
  void WriterLoop();
  void Emit(TierEvent::Kind kind, Tier tier, std::vector<BlockHash> hashes);
  // The SSD tier's value (a corrupt one is dropped there: Removed event,
  // counted corrupt, DATA_LOSS).
  absl::StatusOr<std::string> ReadSsd(BlockHash hash);
  // Counts a miss; returns `status`.
  absl::Status CountMiss(absl::Status status);
  // Copies an SSD hit into DRAM, with its Stored and evicted blocks' Removed events.
  void PromoteToDram(BlockHash hash, std::string_view value);
  // A local miss: ask Options::remote; on a verified hit put the value into
  // DRAM and copy the payload into `payload_out` when it is not empty (a
  // Get; empty: a Promote, counted apart).
  absl::Status FetchRemote(BlockHash hash, absl::Span<const int32_t> tokens, absl::Span<uint8_t> payload_out);
  // Verifies a value fetched from Options::remote, copies its payload out
  // (unless payload_out is empty) and keeps it in DRAM.
  absl::Status AcceptRemote(BlockHash hash, absl::Span<const int32_t> tokens, const std::string& value,
                            absl::Span<uint8_t> payload_out);

  const Options options_;
  const uint64_t model_id_hash_;
  std::unique_ptr<DramTier> dram_;
  std::unique_ptr<SsdTier> ssd_;

  // Serialize each tier's changes with their events, so events of one tier
  // arrive in order.
  StdMutex dram_events_mu_;
  StdMutex ssd_events_mu_;

  mutable StdMutex queue_mu_;
  std::condition_variable queue_cv_;    // writer: work or stop
  std::condition_variable room_cv_;     // Put: room in the queue
  std::condition_variable drained_cv_;  // Flush: queue empty, writer idle
  std::deque<Pending> queue_ ABSL_GUARDED_BY(queue_mu_);
  int32_t reserved_ ABSL_GUARDED_BY(queue_mu_) = 0;  // slots promised to Puts in progress
  bool writing_ ABSL_GUARDED_BY(queue_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(queue_mu_) = false;

  mutable StdMutex stats_mu_;
  Stats stats_ ABSL_GUARDED_BY(stats_mu_);

  std::thread writer_;  // joined by the destructor
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_TIERED_STORE_H_
