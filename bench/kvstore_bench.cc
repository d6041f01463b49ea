// KV tier throughput against the bounds measured in the same run:
//   DRAM tier Put/Get (DramTier alone, and TieredStore with encode + CRC32C)
//     vs memcpy of the same block-sized buffers;
//   SSD tier Put (+ final flush) / Get (checksum verified) vs dd sequential
//     write (conv=fdatasync) and read (iflag=direct) on the same directory.
// Prints one JSON object. See docs/PERFORMANCE.md, "KV tiers".
//
//   kvstore_bench --dir /path/on/the/disk --blocks 2000 --block-kib 256
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "kvstore/block_format.h"
#include "kvstore/dram_tier.h"
#include "kvstore/ssd_tier.h"
#include "kvstore/tiered_store.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
double GBps(double bytes, double s) { return bytes / s / 1e9; }

// Runs `cmd` (a dd), returns the seconds dd reports, or -1.
double RunDd(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  pclose(p);
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(copied, ([0-9.eE+-]+) s)"))) return std::stod(m[1]);
  std::cerr << "dd: " << out;
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tandem::kvstore;
  CLI::App app("KV tier throughput vs memcpy and dd");
  std::string dir = "/tmp/kvstore_bench";
  int blocks = 2000;
  int block_kib = 256;
  int tokens = 16;
  app.add_option("--dir", dir, "Directory on the disk to measure (created, then removed)")
      ->capture_default_str();
  app.add_option("--blocks", blocks, "Blocks per pass")->capture_default_str();
  app.add_option("--block-kib", block_kib, "KV payload per block in KiB")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const size_t payload_bytes = static_cast<size_t>(block_kib) << 10;
  const size_t value_bytes = EncodedBlockBytes(tokens, payload_bytes);
  std::vector<uint8_t> payload(payload_bytes);
  std::mt19937_64 rng(1);
  for (auto& b : payload) b = static_cast<uint8_t>(rng());
  std::vector<int32_t> toks(tokens, 7);
  const double total = static_cast<double>(blocks) * payload_bytes;
  nlohmann::json j;
  j["blocks"] = blocks;
  j["payload_bytes_per_block"] = payload_bytes;

  // memcpy bound: the same number of block copies between two pools of the
  // DRAM tier's size (so caches do not hold them).
  {
    std::vector<uint8_t> src(static_cast<size_t>(blocks) * payload_bytes), dst(src.size());
    std::memset(src.data(), 1, src.size());
    std::memset(dst.data(), 2, dst.size());
    auto t0 = Clock::now();
    for (int i = 0; i < blocks; ++i) {
      std::memcpy(dst.data() + i * payload_bytes, src.data() + i * payload_bytes, payload_bytes);
    }
    auto t1 = Clock::now();
    j["memcpy_gbps"] = GBps(total, Seconds(t0, t1));
  }
  // DramTier alone (pre-encoded values: one memcpy into a slot under a lock).
  {
    auto dram = DramTier::Create({.slot_bytes = value_bytes, .capacity_bytes = value_bytes * blocks});
    const std::string value =
        EncodeBlock({.model_id_hash = 1, .block_hash = 0, .tokens = toks, .payload = payload});
    const auto span = absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(value.data()), value.size());
    auto t0 = Clock::now();
    for (int i = 0; i < blocks; ++i) (void)(*dram)->Put(i, span, nullptr);
    auto t1 = Clock::now();
    j["dram_tier_put_gbps"] = GBps(total, Seconds(t0, t1));
    std::vector<uint8_t> out(value.size() * blocks);
    std::memset(out.data(), 3, out.size());  // fault the destination in first, as memcpy's
    t1 = Clock::now();
    for (int i = 0; i < blocks; ++i) {
      (*dram)->Get(i, [&](absl::Span<const uint8_t> v) {
        std::memcpy(out.data() + i * value.size(), v.data(), v.size());
      });
    }
    auto t2 = Clock::now();
    j["dram_tier_get_gbps"] = GBps(total, Seconds(t1, t2));
  }
  // TieredStore, DRAM only: Put encodes + CRC32C into the slot; Get decodes,
  // checks tokens and copies the payload out.
  {
    TieredStore::Options o;
    o.model_id = "bench";
    o.block_tokens = tokens;
    o.payload_bytes = payload_bytes;
    o.dram_bytes = value_bytes * blocks;
    auto store = TieredStore::Create(o);
    auto t0 = Clock::now();
    for (int i = 0; i < blocks; ++i) (void)(*store)->Put(i, toks, payload);
    auto t1 = Clock::now();
    j["tiered_dram_put_gbps"] = GBps(total, Seconds(t0, t1));
    std::vector<uint8_t> out(payload_bytes * blocks);
    std::memset(out.data(), 3, out.size());
    t1 = Clock::now();
    for (int i = 0; i < blocks; ++i) {
      (void)(*store)->Get(i, toks, absl::MakeSpan(out).subspan(i * payload_bytes, payload_bytes));
    }
    auto t2 = Clock::now();
    j["tiered_dram_get_gbps"] = GBps(total, Seconds(t1, t2));
  }
  // SSD tier: Puts then Flush (blobs written and synced), then verified Gets
  // after reopening (RocksDB reads through the page cache).
  {
    const std::string path = dir + "/ssd";
    {
      auto ssd =
          SsdTier::Create({.path = path, .capacity_bytes = value_bytes * (blocks + 1), .model_id_hash = 1});
      if (!ssd.ok()) {
        std::cerr << ssd.status() << "\n";
        return 1;
      }
      auto t0 = Clock::now();
      for (int i = 0; i < blocks; ++i) {
        std::string v = EncodeBlock(
            {.model_id_hash = 1, .block_hash = static_cast<uint64_t>(i), .tokens = toks, .payload = payload});
        (void)(*ssd)->Put(i, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(v.data()), v.size()),
                          nullptr);
      }
      (void)(*ssd)->Flush();
      auto t1 = Clock::now();
      j["ssd_tier_put_gbps"] = GBps(total, Seconds(t0, t1));
    }
    auto ssd =
        SsdTier::Create({.path = path, .capacity_bytes = value_bytes * (blocks + 1), .model_id_hash = 1});
    auto t0 = Clock::now();
    int ok = 0;
    for (int i = 0; i < blocks; ++i) ok += (*ssd)->Get(i).ok();
    auto t1 = Clock::now();
    j["ssd_tier_get_gbps"] = GBps(total, Seconds(t0, t1));
    j["ssd_tier_get_ok"] = ok;
  }
  // dd on the same directory, same byte count.
  {
    const int mib = static_cast<int>(total / (1 << 20));
    const std::string file = dir + "/dd.bin";
    const double w =
        RunDd("dd if=/dev/zero of=" + file + " bs=1M count=" + std::to_string(mib) + " conv=fdatasync");
    const double r = RunDd("dd if=" + file + " of=/dev/null bs=1M iflag=direct");
    const double bytes = static_cast<double>(mib) * (1 << 20);
    j["dd_write_fdatasync_gbps"] = w > 0 ? GBps(bytes, w) : -1;
    j["dd_read_direct_gbps"] = r > 0 ? GBps(bytes, r) : -1;
  }
  j["ratio_dram_tier_put_vs_memcpy"] = j["dram_tier_put_gbps"].get<double>() / j["memcpy_gbps"].get<double>();
  j["ratio_dram_tier_get_vs_memcpy"] = j["dram_tier_get_gbps"].get<double>() / j["memcpy_gbps"].get<double>();
  j["ratio_tiered_dram_put_vs_memcpy"] =
      j["tiered_dram_put_gbps"].get<double>() / j["memcpy_gbps"].get<double>();
  j["ratio_tiered_dram_get_vs_memcpy"] =
      j["tiered_dram_get_gbps"].get<double>() / j["memcpy_gbps"].get<double>();
  j["ratio_ssd_put_vs_dd_write"] =
      j["ssd_tier_put_gbps"].get<double>() / j["dd_write_fdatasync_gbps"].get<double>();
  j["ratio_ssd_get_vs_dd_read"] =
      j["ssd_tier_get_gbps"].get<double>() / j["dd_read_direct_gbps"].get<double>();
  std::filesystem::remove_all(dir);
  std::cout << j.dump(2) << "\n";
  return 0;
}
