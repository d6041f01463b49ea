// The shared store's data paths against each other and against memcpy, in
// the same run: a StoreService (DRAM tier) on a loopback gRPC server with its
// own transfer engine, and StoreClients moving the same blocks
//   - in the gRPC messages (Get / Put), and
//   - over UCX (GetInto into registered landing slots; ReservePut, one write
//     into the store's staging slots, CommitPut),
// one block per Fetch (what the engine asks for) from 1 and 4 threads, and
// Offer batches of 16 (what the worker's sender thread sends).
// Store and clients share one process; UCX then uses the same shared-memory
// transports it uses between processes on one host, gRPC its loopback TCP.
// Prints one JSON object. See docs/PERFORMANCE.md, "KV tiers".
//
//   store_transport_bench --blocks 512 --block-kib 256
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "kvstore/block_format.h"
#include "kvstore/store_client.h"
#include "kvstore/store_service.h"
#include "kvstore/tiered_store.h"
#include "nlohmann/json.hpp"
#include "transfer/transfer_engine.h"

namespace {

using namespace tandem::kvstore;
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

constexpr char kModel[] = "bench-model";

std::vector<int32_t> Tokens(uint64_t i, int n) {
  std::vector<int32_t> t(n);
  for (int k = 0; k < n; ++k) t[k] = static_cast<int32_t>((i * 131 + k) % 32000);
  return t;
}

std::string Value(uint64_t hash, int tokens, size_t payload_bytes) {
  std::vector<uint8_t> payload(payload_bytes);
  for (size_t k = 0; k < payload_bytes; ++k) payload[k] = static_cast<uint8_t>(hash * 7 + k);
  return EncodeBlock({.model_id_hash = ModelIdHash(kModel),
                      .block_hash = hash,
                      .tokens = Tokens(hash, tokens),
                      .payload = payload});
}

void Check(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::cerr << what << ": " << s << "\n";
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Shared KV store: gRPC bytes vs UCX, against memcpy");
  int blocks = 512;
  int block_kib = 256;
  int tokens = 16;
  int rounds = 3;
  app.add_option("--blocks", blocks, "Blocks per pass")->capture_default_str();
  app.add_option("--block-kib", block_kib, "KV payload per block in KiB")->capture_default_str();
  app.add_option("--rounds", rounds, "Passes per figure (the best is reported)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const size_t payload = static_cast<size_t>(block_kib) << 10;
  const size_t value_bytes = EncodedBlockBytes(tokens, payload);

  auto store_engine = tandem::transfer::TransferEngine::Create({.name = "store"});
  auto worker_engine = tandem::transfer::TransferEngine::Create({.name = "worker"});
  Check(store_engine.status(), "transfer engine");
  Check(worker_engine.status(), "transfer engine");
  TieredStore::Options store_options;
  store_options.model_id = kModel;
  store_options.block_tokens = tokens;
  store_options.payload_bytes = payload;
  store_options.dram_bytes = (static_cast<size_t>(blocks) * 3 + 8) * value_bytes;  // every pass's blocks fit
  store_options.transfer = store_engine->get();
  auto store = TieredStore::Create(store_options);
  Check(store.status(), "store");
  auto service = StoreService::Create(
      {.model_id = kModel, .transfer = store_engine->get(), .staging_bytes = 64 * value_bytes}, store->get());
  Check(service.status(), "service");
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  builder.RegisterService(service->get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return 1;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                           grpc::InsecureChannelCredentials(), args);

  auto make_client = [&](bool ucx) {
    StoreClient::Options o{.model_id = kModel,
                           .fetch_timeout = absl::Seconds(10),
                           .offer_queue_blocks = blocks + 1,
                           .put_timeout = absl::Seconds(10)};
    if (ucx) {
      o.transfer = worker_engine->get();
      o.slot_bytes = value_bytes;
      o.landing_slots = 8;
    }
    auto c = StoreClient::Create(o, channel);
    Check(c.status(), "client");
    return std::move(*c);
  };

  // memcpy of the same values: the bound both paths copy at least once.
  std::vector<std::string> values;
  for (int i = 0; i < blocks; ++i) values.push_back(Value(1'000'000 + i, tokens, payload));
  double memcpy_gbps = 0;
  {
    std::vector<char> dst(value_bytes);
    for (int r = 0; r < rounds; ++r) {
      const auto t0 = Clock::now();
      for (const std::string& v : values) std::memcpy(dst.data(), v.data(), v.size());
      const auto t1 = Clock::now();
      memcpy_gbps = std::max(memcpy_gbps, blocks * static_cast<double>(value_bytes) / Seconds(t0, t1) / 1e9);
    }
  }

  nlohmann::json out{{"bench", "store_transport"},
                     {"blocks", blocks},
                     {"value_bytes", value_bytes},
                     {"memcpy_gbps", memcpy_gbps}};
  uint64_t next_hash = 1;
  for (const bool ucx : {false, true}) {
    const std::string name = ucx ? "ucx" : "grpc";
    std::unique_ptr<StoreClient> client = make_client(ucx);
    // Put: offer a fresh set of blocks, flush; best of `rounds`.
    double put_gbps = 0;
    std::vector<uint64_t> stored_hashes;
    for (int r = 0; r < rounds; ++r) {
      std::vector<std::string> batch;
      std::vector<uint64_t> hashes;
      for (int i = 0; i < blocks; ++i) {
        hashes.push_back(next_hash);
        batch.push_back(Value(next_hash++, tokens, payload));
      }
      const auto t0 = Clock::now();
      for (int i = 0; i < blocks; ++i) client->Offer(hashes[i], std::move(batch[i]));
      if (!client->Flush(absl::Now() + absl::Seconds(120))) return 1;
      const auto t1 = Clock::now();
      put_gbps = std::max(put_gbps, blocks * static_cast<double>(value_bytes) / Seconds(t0, t1) / 1e9);
      stored_hashes = hashes;
      for (uint64_t h : hashes) {
        if (!(*store)->Find(h).has_value()) {
          std::cerr << name << ": block " << h << " not stored\n";
          return 1;
        }
      }
    }
    // Fetch: the last pass's blocks, one per call, from 1 and 4 threads.
    nlohmann::json fetch;
    for (const int threads : {1, 4}) {
      double best = 0;
      for (int r = 0; r < rounds; ++r) {
        std::vector<std::thread> pool;
        std::atomic<int64_t> bytes{0};
        const auto t0 = Clock::now();
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            for (int i = t; i < blocks; i += threads) {
              absl::StatusOr<std::string> v = client->Fetch(stored_hashes[i]);
              if (v.ok()) bytes += static_cast<int64_t>(v->size());
            }
          });
        }
        for (std::thread& th : pool) th.join();
        const auto t1 = Clock::now();
        if (bytes.load() != static_cast<int64_t>(blocks) * static_cast<int64_t>(value_bytes)) {
          std::cerr << name << ": fetched " << bytes.load() << " bytes\n";
          return 1;
        }
        best = std::max(best, bytes.load() / Seconds(t0, t1) / 1e9);
      }
      fetch[std::to_string(threads) + "_threads_gbps"] = best;
    }
    const StoreClient::Stats s = client->stats();
    out[name] = {{"put_gbps", put_gbps},
                 {"fetch", fetch},
                 {"transport", client->transport()},
                 {"ucx_fetch_bytes", s.ucx_fetch_bytes},
                 {"grpc_fetch_bytes", s.grpc_fetch_bytes},
                 {"fetch_slot_fallbacks", s.fetch_slot_fallbacks},
                 {"put_errors", s.put_errors}};
  }
  for (const char* k : {"put_gbps"}) {
    out["ratio_ucx_vs_grpc"][k] = out["ucx"][k].get<double>() / out["grpc"][k].get<double>();
  }
  for (const char* k : {"1_threads_gbps", "4_threads_gbps"}) {
    out["ratio_ucx_vs_grpc"][std::string("fetch_") + k] =
        out["ucx"]["fetch"][k].get<double>() / out["grpc"]["fetch"][k].get<double>();
  }
  std::cout << out.dump(2) << std::endl;
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  return 0;
}
