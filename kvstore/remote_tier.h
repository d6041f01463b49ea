// A KV tier in another process (the shared `tandem store`), as seen by a
// TieredStore: lookups that miss DRAM and SSD fall through to it, and blocks
// put into the store are offered to it. Values are whole encoded blocks
// (kvstore/block_format.h) with their checksum, so the receiving side
// verifies them.
//
//   class MyRemote : public RemoteTier { ... };
//   TieredStore::Options options;
//   options.remote = &my_remote;  // borrowed; outlives the TieredStore
//
// Implementations: kvstore/store_client.h (gRPC to `tandem store`).
// Thread safety: implementations must allow calls from any thread.
#ifndef TANDEM_KVSTORE_REMOTE_TIER_H_
#define TANDEM_KVSTORE_REMOTE_TIER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/block_hash.h"

namespace tandem::kvstore {

class RemoteTier {
 public:
  virtual ~RemoteTier() = default;

  // The encoded value of `hash` (not yet verified: the caller decodes it
  // with the checksum). NotFound on a miss; other errors (unreachable,
  // deadline) are misses to the caller too. Must return within the
  // implementation's own deadline.
  virtual absl::StatusOr<std::string> Fetch(BlockHash hash) = 0;

  // Fetch of several blocks (a prompt's prefix), parallel to `hashes`.
  // Implementations batch them into fewer round trips; this default asks
  // one at a time.
  virtual std::vector<absl::StatusOr<std::string>> FetchMany(absl::Span<const BlockHash> hashes) {
    std::vector<absl::StatusOr<std::string>> out;
    out.reserve(hashes.size());
    for (BlockHash h : hashes) out.push_back(Fetch(h));
    return out;
  }

  // Offers an encoded value; best effort, never blocks (an implementation
  // may drop it, e.g. when its queue is full).
  virtual void Offer(BlockHash hash, std::string value) = 0;
};

}  // namespace tandem::kvstore

#endif  // TANDEM_KVSTORE_REMOTE_TIER_H_
