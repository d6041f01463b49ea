#include "engine/pool_copier.h"

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace tandem::engine {

absl::StatusOr<std::unique_ptr<PoolCopier>> PoolCopier::Create(kernels::Backend* backend, size_t block_bytes,
                                                               int32_t staging_blocks) {
  if (staging_blocks < 1) return absl::InvalidArgumentError("pool copier: staging_blocks must be >= 1");
  std::unique_ptr<PoolCopier> copier(new PoolCopier(backend, block_bytes, staging_blocks));
  if (backend == nullptr || backend->host_accessible()) return copier;
  TANDEM_ASSIGN_OR_RETURN(copier->stream_, backend->CreateCopyStream());
  TANDEM_ASSIGN_OR_RETURN(void* staging, backend->AllocatePinnedHost(block_bytes * staging_blocks));
  copier->staging_ = static_cast<uint8_t*>(staging);
  return copier;
}

PoolCopier::~PoolCopier() {
  if (stream_ != nullptr) (void)stream_->Synchronize(absl::Now() + kCopyTimeout);
  if (staging_ != nullptr) backend_->FreePinnedHost(staging_);
}

absl::Status PoolCopier::Write(absl::Span<uint8_t> dst,
                               absl::FunctionRef<absl::Status(absl::Span<uint8_t>)> fill) {
  if (dst.size() != block_bytes_) {
    return absl::InternalError(
        absl::StrFormat("pool copier: %d-byte block, want %d", dst.size(), block_bytes_));
  }
  if (direct()) return fill(dst);
  TANDEM_RETURN_IF_ERROR(fill(absl::MakeSpan(staging_, block_bytes_)));
  stream_->FromHost(staging_, block_bytes_, dst.data());
  // The staging block is reused by the next call: wait for this copy.
  return stream_->Synchronize(absl::Now() + kCopyTimeout);
}

absl::StatusOr<absl::Span<const uint8_t>> PoolCopier::Read(absl::Span<const uint8_t> src) {
  TANDEM_ASSIGN_OR_RETURN(std::vector<absl::Span<const uint8_t>> host, ReadBlocks({&src, 1}));
  return host[0];
}

absl::StatusOr<std::vector<absl::Span<const uint8_t>>> PoolCopier::ReadBlocks(
    absl::Span<const absl::Span<const uint8_t>> srcs) {
  if (static_cast<int64_t>(srcs.size()) > capacity()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("pool copier: %d blocks at once, capacity %d", srcs.size(), capacity()));
  }
  std::vector<absl::Span<const uint8_t>> out;
  out.reserve(srcs.size());
  for (size_t i = 0; i < srcs.size(); ++i) {
    if (srcs[i].size() != block_bytes_) {
      return absl::InternalError(
          absl::StrFormat("pool copier: %d-byte block, want %d", srcs[i].size(), block_bytes_));
    }
    if (direct()) {
      out.push_back(srcs[i]);
      continue;
    }
    uint8_t* slot = staging_ + i * block_bytes_;
    stream_->ToHost(srcs[i].data(), block_bytes_, slot);
    out.emplace_back(slot, block_bytes_);
  }
  if (!direct()) TANDEM_RETURN_IF_ERROR(stream_->Synchronize(absl::Now() + kCopyTimeout));
  return out;
}

}  // namespace tandem::engine
