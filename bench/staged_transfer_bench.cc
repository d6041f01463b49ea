// The staged KV path against the direct one and against memcpy, in one run
// (JSON on stdout). Issue #15: a pool the host may not touch (a GPU's) sends
// and receives KV through pinned host memory; this measures what the staging
// costs.
//
//   build/bin/staged_transfer_bench                        # 64 blocks of 512 KiB
//   build/bin/staged_transfer_bench --block-kib 1024 --blocks 32 --trials 7
//
// Both ends live in this process: a sender and a receiver TransferEngine (UCX
// over shared memory / CMA, as between two workers on one host). Per trial,
// the same N blocks go from a sender pool to a receiver pool:
//   direct  host pools (the plain CPU backend): one TransferEngine::Write of
//           N blocks from the sender's pool into the receiver's registered pool.
//   staged  pools in the CPU backend's guarded mode with its protection off
//           (device-style memory: the host goes through copy streams; no
//           mprotect): PoolCopier::ReadBlocks (pool -> pinned staging on a
//           copy stream), one Write into a LandingArea's slots,
//           LandingArea::CopyToPool (slots -> pool) — the prefill and decode
//           workers' path, minus gRPC. On a GPU the two copies are PCIe DMA.
//   staged_guarded  the same with the protection on (cpu-guarded as the
//           workers run it): adds the cost of enforcing it (an mprotect of
//           every buffer per copy batch), which no real device pays.
//   memcpy  one memcpy of the same bytes between host buffers: the bound a
//           single copy of the data sets on this machine.
// Best of --trials for each, alternating. GB/s are 1e9 bytes/s of KV moved.
#include <algorithm>
#include <array>
#include <cstring>
#include <iostream>
#include <memory>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "decode_worker/landing_area.h"
#include "engine/pool_copier.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "transfer/transfer_engine.h"

namespace {

using tandem::decode_worker::LandingArea;
using tandem::engine::PoolCopier;
using tandem::transfer::RemoteRegion;
using tandem::transfer::TransferEngine;
using tandem::transfer::WriteRequest;

template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::cerr << "staged_transfer_bench: " << what << ": " << v.status() << "\n";
    std::exit(1);
  }
  return *std::move(v);
}

void OrDie(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::cerr << "staged_transfer_bench: " << what << ": " << s << "\n";
    std::exit(1);
  }
}

// The prefill-to-decode staged path between two device-style pools.
struct StagedPath {
  StagedPath(bool protect, size_t block, int blocks, TransferEngine* receiver)
      : device(tandem::kernels::CreateGuardedCpuBackend({.num_threads = 1, .protect = protect})),
        block(block),
        blocks(blocks) {
    const size_t bytes = block * blocks;
    send = static_cast<uint8_t*>(OrDie(device->Allocate(bytes), "device send pool"));
    recv = static_cast<uint8_t*>(OrDie(device->Allocate(bytes), "device receive pool"));
    pattern.resize(bytes);
    for (size_t i = 0; i < bytes; ++i) pattern[i] = static_cast<uint8_t>(i * 13 + 7);
    device->CopyFromHost(pattern.data(), bytes, send);
    copier = OrDie(PoolCopier::Create(device.get(), block, blocks), "pool copier");
    landing = OrDie(LandingArea::Create(device.get(), receiver, block, blocks), "landing area");
    peer = RemoteRegion::Of(receiver->worker_address(), landing->region(), "landing");
    for (int b = 0; b < blocks; ++b) {
      send_blocks.emplace_back(send + b * block, block);
      recv_blocks.emplace_back(recv + b * block, block);
    }
  }
  ~StagedPath() {
    landing.reset();
    copier.reset();
    device->Free(send);
    device->Free(recv);
  }

  // One transfer; the time of each leg in seconds.
  std::array<double, 3> Run(TransferEngine* sender) {
    const absl::Time start = absl::Now();
    auto slots = OrDie(landing->Acquire(blocks), "landing slots");
    const auto host = OrDie(copier->ReadBlocks(send_blocks), "stage out");
    const absl::Time staged = absl::Now();
    std::vector<WriteRequest> writes;
    for (int b = 0; b < blocks; ++b) writes.push_back({host[b].data(), slots.ids()[b] * block, block});
    OrDie(sender->Write(peer, writes, absl::Now() + absl::Seconds(30)), "staged write");
    const absl::Time written = absl::Now();
    OrDie(landing->CopyToPool(slots, recv_blocks), "stage in");
    const absl::Time end = absl::Now();
    return {absl::ToDoubleSeconds(staged - start), absl::ToDoubleSeconds(written - staged),
            absl::ToDoubleSeconds(end - written)};
  }

  bool Intact() {
    std::vector<uint8_t> back(pattern.size());
    device->CopyToHost(recv, back.size(), back.data());
    return back == pattern;
  }

  std::unique_ptr<tandem::kernels::Backend> device;
  const size_t block;
  const int blocks;
  uint8_t* send = nullptr;
  uint8_t* recv = nullptr;
  std::vector<uint8_t> pattern;
  std::unique_ptr<PoolCopier> copier;
  std::unique_ptr<LandingArea> landing;
  RemoteRegion peer;
  std::vector<absl::Span<const uint8_t>> send_blocks;
  std::vector<absl::Span<uint8_t>> recv_blocks;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Staged (device-style) KV transfer vs direct transfer vs memcpy"};
  int block_kib = 512, blocks = 64, trials = 5;
  app.add_option("--block-kib", block_kib, "KV block size, KiB (llama-1b: 512 in BF16, 1024 in F32)")
      ->capture_default_str();
  app.add_option("--blocks", blocks, "Blocks per transfer (a 1,024-token prompt is 64 blocks of 16)")
      ->capture_default_str();
  app.add_option("--trials", trials, "Trials per path; best kept")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const size_t block = static_cast<size_t>(block_kib) << 10;
  const size_t bytes = block * blocks;

  auto sender = OrDie(TransferEngine::Create({.name = "bench-sender"}), "sender engine");
  auto receiver = OrDie(TransferEngine::Create({.name = "bench-receiver"}), "receiver engine");

  // Direct: host pools.
  std::vector<uint8_t> send_pool(bytes, 0x5a), recv_pool(bytes, 0);
  const auto recv_region = OrDie(
      receiver->Register(recv_pool.data(), bytes, tandem::transfer::MemoryKind::kHost), "register pool");
  const RemoteRegion direct_peer = RemoteRegion::Of(receiver->worker_address(), recv_region, "receiver");
  std::vector<WriteRequest> direct_writes;
  for (int b = 0; b < blocks; ++b) direct_writes.push_back({send_pool.data() + b * block, b * block, block});

  StagedPath staged(/*protect=*/false, block, blocks, receiver.get());
  StagedPath guarded(/*protect=*/true, block, blocks, receiver.get());
  std::vector<uint8_t> copy_src(bytes, 1), copy_dst(bytes, 0);
  double best_direct = 1e30, best_memcpy = 1e30;
  std::array<double, 3> best_staged = {1e30, 0, 0}, best_guarded = {1e30, 0, 0};
  const auto total = [](const std::array<double, 3>& legs) { return legs[0] + legs[1] + legs[2]; };
  for (int t = 0; t < trials + 1; ++t) {  // trial 0 warms connections and pages
    absl::Time start = absl::Now();
    OrDie(sender->Write(direct_peer, direct_writes, absl::Now() + absl::Seconds(30)), "direct write");
    const double direct = absl::ToDoubleSeconds(absl::Now() - start);
    const std::array<double, 3> s = staged.Run(sender.get());
    const std::array<double, 3> g = guarded.Run(sender.get());
    start = absl::Now();
    std::memcpy(copy_dst.data(), copy_src.data(), bytes);
    const double copy = absl::ToDoubleSeconds(absl::Now() - start);
    if (t == 0) continue;
    best_direct = std::min(best_direct, direct);
    best_memcpy = std::min(best_memcpy, copy);
    if (total(s) < total(best_staged)) best_staged = s;
    if (total(g) < total(best_guarded)) best_guarded = g;
  }
  if (!staged.Intact() || !guarded.Intact()) {
    std::cerr << "staged_transfer_bench: the staged path corrupted the KV\n";
    return 1;
  }
  const auto gbps = [&](double s) { return static_cast<double>(bytes) / s / 1e9; };
  const auto split = [](const std::array<double, 3>& legs) {
    return nlohmann::ordered_json{
        {"pool_to_staging", legs[0] * 1e3}, {"ucx_write", legs[1] * 1e3}, {"landing_to_pool", legs[2] * 1e3}};
  };
  nlohmann::ordered_json j;
  j["block_bytes"] = block;
  j["blocks"] = blocks;
  j["bytes"] = bytes;
  j["trials"] = trials;
  j["memcpy_gbps"] = gbps(best_memcpy);
  j["direct_gbps"] = gbps(best_direct);
  j["staged_gbps"] = gbps(total(best_staged));
  j["staged_over_direct"] = gbps(total(best_staged)) / gbps(best_direct);
  j["staged_over_memcpy"] = gbps(total(best_staged)) / gbps(best_memcpy);
  j["staged_split_ms"] = split(best_staged);
  j["staged_guarded_gbps"] = gbps(total(best_guarded));
  j["staged_guarded_split_ms"] = split(best_guarded);
  std::cout << j.dump(2) << "\n";
  return 0;
}
