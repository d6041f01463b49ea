#include "kvstore/tiered_store.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kvstore/block_format.h"

namespace tandem::kvstore {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kDram:
      return "dram";
    case Tier::kSsd:
      return "ssd";
    case Tier::kRemote:
      return "remote";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Create(const Options& options) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("TieredStore: model_id must be set");
  if (options.block_tokens <= 0 || options.payload_bytes == 0) {
    return absl::InvalidArgumentError("TieredStore: block_tokens and payload_bytes must be > 0");
  }
  if (options.write_queue_blocks < 1) {
    return absl::InvalidArgumentError("TieredStore: write_queue_blocks must be >= 1");
  }
  std::unique_ptr<TieredStore> store(new TieredStore(options));
  TANDEM_ASSIGN_OR_RETURN(
      store->dram_,
      DramTier::Create({.slot_bytes = EncodedBlockBytes(options.block_tokens, options.payload_bytes),
                        .capacity_bytes = options.dram_bytes,
                        .transfer = options.transfer}));
  if (!options.ssd_path.empty()) {
    TANDEM_ASSIGN_OR_RETURN(store->ssd_, SsdTier::Create({.path = options.ssd_path,
                                                          .capacity_bytes = options.ssd_bytes,
                                                          .model_id_hash = store->model_id_hash_,
                                                          .sync_writes = options.ssd_sync_writes}));
    store->writer_ = std::thread([s = store.get()] { s->WriterLoop(); });
  }
  return store;
}

TieredStore::TieredStore(const Options& options)
    : options_(options), model_id_hash_(ModelIdHash(options.model_id)) {}

TieredStore::~TieredStore() {
  {
    StdMutexLock lock(&queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  room_cv_.notify_all();
  if (writer_.joinable()) writer_.join();  // drains the queue first
}

void TieredStore::Emit(TierEvent::Kind kind, Tier tier, std::vector<BlockHash> hashes) {
  if (!options_.on_event || hashes.empty()) return;
  options_.on_event(TierEvent{kind, tier, std::move(hashes)});
}

absl::Status TieredStore::Put(BlockHash hash, absl::Span<const int32_t> tokens,
                              absl::Span<const uint8_t> payload) {
  if (tokens.size() != static_cast<size_t>(options_.block_tokens) ||
      payload.size() != options_.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("TieredStore::Put: %d tokens and %d bytes, the store holds blocks of %d and %d",
                        tokens.size(), payload.size(), options_.block_tokens, options_.payload_bytes));
  }
  // A read-only SSD tier (a full or failed device) is not written to; DRAM
  // and the remote tier still take the block.
  const bool write_behind = ssd_ != nullptr && ssd_->AcceptsWrites() && !ssd_->Contains(hash);
  if (write_behind) {
    // Reserve room in the write queue first, so that a rejected Put stores nothing.
    StdMutexLock lock(&queue_mu_);
    const auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
      return stop_ || static_cast<int32_t>(queue_.size()) + reserved_ < options_.write_queue_blocks;
    };
    if (!room_cv_.wait_for(lock.native(), absl::ToChronoNanoseconds(options_.put_timeout), room)) {
      lock.Unlock();
      StdMutexLock s(&stats_mu_);
      ++stats_.puts_rejected;
      return absl::ResourceExhaustedError(absl::StrFormat("KV store: SSD write queue full (%d blocks) for %s",
                                                          options_.write_queue_blocks,
                                                          absl::FormatDuration(options_.put_timeout)));
    }
    if (stop_) return absl::FailedPreconditionError("KV store is shutting down");
    ++reserved_;
  }
  const BlockContents contents{model_id_hash_, hash, tokens, payload};
  std::string value;
  std::vector<BlockHash> evicted;
  absl::Status put;
  bool was_in_dram = false;
  {
    StdMutexLock events(&dram_events_mu_);
    was_in_dram = dram_->Contains(hash);
    if (write_behind) {
      value = EncodeBlock(contents);
      put = dram_->Put(
          hash, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()), value.size()), &evicted);
    } else {
      put = dram_->PutWith(
          hash, EncodedBlockBytes(tokens.size(), payload.size()),
          [&](absl::Span<uint8_t> slot) { EncodeBlockInto(contents, slot); }, &evicted);
    }
    if (put.ok()) {
      Emit(TierEvent::Kind::kRemoved, Tier::kDram, std::move(evicted));
      if (!was_in_dram) Emit(TierEvent::Kind::kStored, Tier::kDram, {hash});
    }
  }
  if (put.ok() && !was_in_dram && options_.remote != nullptr) {
    options_.remote->Offer(hash, write_behind ? value : EncodeBlock(contents));
  }
  if (write_behind) {
    {
      StdMutexLock lock(&queue_mu_);
      --reserved_;
      if (put.ok()) queue_.push_back(Pending{hash, std::move(value)});
    }
    queue_cv_.notify_one();
    room_cv_.notify_one();
    drained_cv_.notify_all();
  }
  if (put.ok()) {
    StdMutexLock s(&stats_mu_);
    ++stats_.puts;
  }
  return put;
}

void TieredStore::WriterLoop() {
  StdMutexLock lock(&queue_mu_);
  while (true) {
    // Deadline so that the loop re-checks its state even if a wakeup is lost.
    queue_cv_.wait_for(lock.native(), std::chrono::milliseconds(100),
                       [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) { return stop_ || !queue_.empty(); });
    if (queue_.empty()) {
      if (stop_) return;  // drained
      continue;
    }
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.Unlock();
    room_cv_.notify_one();
    absl::Status st;
    {
      StdMutexLock events(&ssd_events_mu_);
      const bool was_on_ssd = ssd_->Contains(p.hash);
      std::vector<BlockHash> evicted;
      st = ssd_->Put(p.hash,
                     absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(p.value.data()), p.value.size()),
                     &evicted);
      if (st.ok()) {
        Emit(TierEvent::Kind::kRemoved, Tier::kSsd, std::move(evicted));
        if (!was_on_ssd) Emit(TierEvent::Kind::kStored, Tier::kSsd, {p.hash});
      }
    }
    {
      StdMutexLock s(&stats_mu_);
      ++(st.ok() ? stats_.ssd_writes : stats_.ssd_write_errors);
    }
    lock.Lock();
    writing_ = false;
    if (queue_.empty()) drained_cv_.notify_all();
  }
}

absl::StatusOr<Tier> TieredStore::Get(BlockHash hash, absl::Span<const int32_t> tokens,
                                      absl::Span<uint8_t> payload_out) {
  if (tokens.size() != static_cast<size_t>(options_.block_tokens) ||
      payload_out.size() != options_.payload_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("TieredStore::Get: %d tokens and %d bytes, the store holds blocks of %d and %d",
                        tokens.size(), payload_out.size(), options_.block_tokens, options_.payload_bytes));
  }
  bool copied = false;
  const bool in_dram = dram_->Get(hash, [&](absl::Span<const uint8_t> value) {
    // DRAM is not re-verified on every read (the checksum is for media and
    // remote readers); the header must still agree.
    absl::StatusOr<BlockView> view = DecodeBlock(value, /*verify_checksum=*/false);
    if (!view.ok() || view->block_hash != hash || !view->TokensEqual(tokens) ||
        view->payload.size() != payload_out.size()) {
      return;
    }
    std::memcpy(payload_out.data(), view->payload.data(), payload_out.size());
    copied = true;
  });
  if (copied) {
    StdMutexLock s(&stats_mu_);
    ++stats_.dram_hits;
    return Tier::kDram;
  }
  if (ssd_ != nullptr && !in_dram) {
    absl::StatusOr<std::string> value = ReadSsd(hash);
    if (value.status().code() == absl::StatusCode::kDataLoss) return CountMiss(value.status());
    if (value.ok()) {
      TANDEM_ASSIGN_OR_RETURN(BlockView view, DecodeBlock(*value, /*verify_checksum=*/false));
      if (view.TokensEqual(tokens) && view.payload.size() == payload_out.size()) {
        std::memcpy(payload_out.data(), view.payload.data(), payload_out.size());
        PromoteToDram(hash, *value);
        StdMutexLock s(&stats_mu_);
        ++stats_.ssd_hits;
        return Tier::kSsd;
      }
    } else if (value.status().code() != absl::StatusCode::kNotFound) {
      return value.status();
    }
  }
  if (options_.remote != nullptr && FetchRemote(hash, tokens, payload_out).ok()) return Tier::kRemote;
  StdMutexLock s(&stats_mu_);
  ++stats_.misses;
  return absl::NotFoundError(absl::StrFormat("block %016x not in the KV store", hash));
}

absl::Status TieredStore::FetchRemote(BlockHash hash, absl::Span<const int32_t> tokens,
                                      absl::Span<uint8_t> payload_out) {
  absl::StatusOr<std::string> value = options_.remote->Fetch(hash);
  if (!value.ok()) return value.status();
  return AcceptRemote(hash, tokens, *value, payload_out);
}

absl::Status TieredStore::AcceptRemote(BlockHash hash, absl::Span<const int32_t> tokens,
                                       const std::string& value, absl::Span<uint8_t> payload_out) {
  absl::StatusOr<BlockView> view = DecodeBlock(value, /*verify_checksum=*/true);
  if (!view.ok() || view->model_id_hash != model_id_hash_ || view->block_hash != hash ||
      view->payload.size() != options_.payload_bytes || view->num_tokens != tokens.size()) {
    StdMutexLock s(&stats_mu_);
    ++stats_.remote_rejected;
    return view.ok() ? absl::DataLossError("remote KV block: header does not match") : view.status();
  }
  if (!view->TokensEqual(tokens)) return absl::NotFoundError("remote KV block: other tokens");
  if (!payload_out.empty()) std::memcpy(payload_out.data(), view->payload.data(), payload_out.size());
  {
    StdMutexLock events(&dram_events_mu_);
    std::vector<BlockHash> evicted;
    const bool was_in_dram = dram_->Contains(hash);
    if (dram_
            ->Put(hash, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()), value.size()),
                  &evicted)
            .ok()) {
      Emit(TierEvent::Kind::kRemoved, Tier::kDram, std::move(evicted));
      if (!was_in_dram) Emit(TierEvent::Kind::kStored, Tier::kDram, {hash});
    }
  }
  StdMutexLock s(&stats_mu_);
  ++(payload_out.empty() ? stats_.remote_promotions : stats_.remote_hits);
  return absl::OkStatus();
}

std::vector<absl::StatusOr<Tier>> TieredStore::PromoteMany(absl::Span<const BlockHash> hashes,
                                                           absl::Span<const int32_t> tokens) {
  const size_t bt = static_cast<size_t>(options_.block_tokens);
  std::vector<absl::StatusOr<Tier>> out(hashes.size(), absl::NotFoundError("not asked"));
  if (tokens.size() < hashes.size() * bt) {
    for (auto& o : out) o = absl::InvalidArgumentError("TieredStore::PromoteMany: fewer tokens than blocks");
    return out;
  }
  auto block_tokens = [&](size_t i) { return tokens.subspan(i * bt, bt); };
  // Local tiers first, one block at a time (no round trip to save); the
  // rest from the remote tier in one batch.
  std::vector<size_t> remote;
  for (size_t i = 0; i < hashes.size(); ++i) {
    const bool local = dram_->Contains(hashes[i]) || (ssd_ != nullptr && ssd_->Contains(hashes[i]));
    if (local || options_.remote == nullptr) {
      out[i] = Promote(hashes[i], block_tokens(i));
    } else {
      remote.push_back(i);
    }
  }
  if (remote.empty()) return out;
  std::vector<BlockHash> asked;
  asked.reserve(remote.size());
  for (size_t i : remote) asked.push_back(hashes[i]);
  std::vector<absl::StatusOr<std::string>> values = options_.remote->FetchMany(asked);
  for (size_t k = 0; k < remote.size() && k < values.size(); ++k) {
    const size_t i = remote[k];
    if (!values[k].ok()) {
      out[i] = values[k].status();
      continue;
    }
    const absl::Status accepted = AcceptRemote(hashes[i], block_tokens(i), *values[k], {});
    out[i] = accepted.ok() ? absl::StatusOr<Tier>(Tier::kRemote) : absl::StatusOr<Tier>(accepted);
  }
  return out;
}

absl::StatusOr<std::string> TieredStore::ReadSsd(BlockHash hash) {
  absl::StatusOr<std::string> value;
  {
    // Under the SSD events lock so that a corrupt value's Removed event is
    // ordered with the writer's Stored events.
    StdMutexLock events(&ssd_events_mu_);
    bool removed = false;
    value = ssd_->Get(hash, &removed);
    if (removed) Emit(TierEvent::Kind::kRemoved, Tier::kSsd, {hash});
  }
  if (value.status().code() == absl::StatusCode::kDataLoss) {
    StdMutexLock s(&stats_mu_);
    ++stats_.corrupt_blocks;
  }
  return value;
}

absl::Status TieredStore::CountMiss(absl::Status status) {
  StdMutexLock s(&stats_mu_);
  ++stats_.misses;
  return status;
}

void TieredStore::PromoteToDram(BlockHash hash, std::string_view value) {
  // Already on SSD: nothing to write behind.
  StdMutexLock events(&dram_events_mu_);
  std::vector<BlockHash> evicted;
  const bool was_in_dram = dram_->Contains(hash);
  if (dram_
          ->Put(hash, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()), value.size()),
                &evicted)
          .ok()) {
    Emit(TierEvent::Kind::kRemoved, Tier::kDram, std::move(evicted));
    if (!was_in_dram) Emit(TierEvent::Kind::kStored, Tier::kDram, {hash});
  }
}

absl::StatusOr<std::string> TieredStore::GetEncoded(BlockHash hash) {
  std::string out;
  if (dram_->Get(hash, [&](absl::Span<const uint8_t> value) {
        out.assign(reinterpret_cast<const char*>(value.data()), value.size());
      })) {
    StdMutexLock s(&stats_mu_);
    ++stats_.dram_hits;
    return out;
  }
  if (ssd_ != nullptr) {
    absl::StatusOr<std::string> value = ReadSsd(hash);
    if (value.ok()) {
      PromoteToDram(hash, *value);
      StdMutexLock s(&stats_mu_);
      ++stats_.ssd_hits;
      return value;
    }
    if (value.status().code() == absl::StatusCode::kDataLoss) return CountMiss(value.status());
    if (value.status().code() != absl::StatusCode::kNotFound) return value.status();
  }
  StdMutexLock s(&stats_mu_);
  ++stats_.misses;
  return absl::NotFoundError(absl::StrFormat("block %016x not in the KV store", hash));
}

absl::Status TieredStore::PutEncoded(BlockHash hash, std::string_view value) {
  TANDEM_ASSIGN_OR_RETURN(BlockView view, DecodeBlock(value, /*verify_checksum=*/true));
  if (view.model_id_hash != model_id_hash_ || view.block_hash != hash) {
    return absl::InvalidArgumentError(absl::StrFormat("KV block %016x: header names model %016x, block %016x",
                                                      hash, view.model_id_hash, view.block_hash));
  }
  const std::vector<int32_t> tokens = view.Tokens();
  return Put(hash, tokens, view.payload);
}

absl::StatusOr<Tier> TieredStore::Promote(BlockHash hash, absl::Span<const int32_t> tokens) {
  if (tokens.size() != static_cast<size_t>(options_.block_tokens)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("TieredStore::Promote: %d tokens, the store holds blocks of %d", tokens.size(),
                        options_.block_tokens));
  }
  bool matches = false;
  const bool in_dram = dram_->Get(hash, [&](absl::Span<const uint8_t> value) {
    absl::StatusOr<BlockView> view = DecodeBlock(value, /*verify_checksum=*/false);
    matches = view.ok() && view->block_hash == hash && view->TokensEqual(tokens);
  });
  if (in_dram) {
    if (matches) return Tier::kDram;
    return absl::NotFoundError(absl::StrFormat("block %016x: other tokens in the KV store", hash));
  }
  if (ssd_ == nullptr || !ssd_->Contains(hash)) {
    if (options_.remote != nullptr) {
      TANDEM_RETURN_IF_ERROR(FetchRemote(hash, tokens, {}));
      return Tier::kRemote;
    }
    return absl::NotFoundError(absl::StrFormat("block %016x not in the KV store", hash));
  }
  absl::StatusOr<std::string> value = ReadSsd(hash);
  if (value.status().code() == absl::StatusCode::kDataLoss) return value.status();
  if (!value.ok()) return value.status();
  TANDEM_ASSIGN_OR_RETURN(BlockView view, DecodeBlock(*value, /*verify_checksum=*/false));
  if (!view.TokensEqual(tokens)) {
    return absl::NotFoundError(absl::StrFormat("block %016x: other tokens in the KV store", hash));
  }
  {
    StdMutexLock events(&dram_events_mu_);
    std::vector<BlockHash> evicted;
    const bool was_in_dram = dram_->Contains(hash);
    TANDEM_RETURN_IF_ERROR(dram_->Put(
        hash, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value->data()), value->size()), &evicted));
    Emit(TierEvent::Kind::kRemoved, Tier::kDram, std::move(evicted));
    if (!was_in_dram) Emit(TierEvent::Kind::kStored, Tier::kDram, {hash});
  }
  StdMutexLock s(&stats_mu_);
  ++stats_.promotions;
  return Tier::kSsd;
}

std::optional<Tier> TieredStore::Find(BlockHash hash) const {
  if (dram_->Contains(hash)) return Tier::kDram;
  if (ssd_ != nullptr && ssd_->Contains(hash)) return Tier::kSsd;
  return std::nullopt;
}

absl::Status TieredStore::Erase(BlockHash hash) {
  {
    StdMutexLock lock(&queue_mu_);
    std::erase_if(queue_, [&](const Pending& p) { return p.hash == hash; });
  }
  room_cv_.notify_all();
  drained_cv_.notify_all();
  {
    StdMutexLock events(&dram_events_mu_);
    if (dram_->Erase(hash)) Emit(TierEvent::Kind::kRemoved, Tier::kDram, {hash});
  }
  if (ssd_ != nullptr) {
    StdMutexLock events(&ssd_events_mu_);
    bool removed = false;
    TANDEM_RETURN_IF_ERROR(ssd_->Erase(hash, &removed));
    if (removed) Emit(TierEvent::Kind::kRemoved, Tier::kSsd, {hash});
  }
  return absl::OkStatus();
}

std::vector<std::pair<BlockHash, Tier>> TieredStore::Snapshot() const {
  std::vector<std::pair<BlockHash, Tier>> out;
  for (BlockHash h : dram_->Keys()) out.emplace_back(h, Tier::kDram);
  if (ssd_ != nullptr) {
    for (BlockHash h : ssd_->Keys()) out.emplace_back(h, Tier::kSsd);
  }
  return out;
}

absl::Status TieredStore::Flush(absl::Time deadline) {
  StdMutexLock lock(&queue_mu_);
  const auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
    return queue_.empty() && reserved_ == 0 && !writing_;
  };
  if (!drained_cv_.wait_for(lock.native(),
                            absl::ToChronoNanoseconds(std::max(deadline - absl::Now(), absl::ZeroDuration())),
                            idle)) {
    return absl::DeadlineExceededError(
        absl::StrFormat("KV store: %d blocks still queued for SSD", queue_.size()));
  }
  return absl::OkStatus();
}

TieredStore::Stats TieredStore::stats() const {
  StdMutexLock s(&stats_mu_);
  return stats_;
}

absl::StatusOr<engine::KvTierSource> TieredStore::Load(BlockHash hash, absl::Span<const int32_t> tokens,
                                                       absl::Span<uint8_t> payload_out) {
  TANDEM_ASSIGN_OR_RETURN(const Tier tier, Get(hash, tokens, payload_out));
  switch (tier) {
    case Tier::kDram:
      return engine::KvTierSource::kDram;
    case Tier::kSsd:
      return engine::KvTierSource::kSsd;
    case Tier::kRemote:
      return engine::KvTierSource::kRemote;
  }
  return absl::InternalError("TieredStore::Get returned an unknown tier");
}

}  // namespace tandem::kvstore
