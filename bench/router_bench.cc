// Routing-decision latency at scale: a KvIndex holding --blocks block hashes
// spread over --workers workers, and Placement::Place (the kv policy: prefix
// match, cost model over every worker, SLO check) timed per request.
//
//   build/bench/router_bench --workers 1000 --blocks 1000000 --json router.json
//
// Layout of the synthetic cluster: conversations are chains of
// --chain-blocks hashes; each chain lives on 1-3 random prefill workers (as
// a KV-aware router would leave it), and the first --shared-blocks of every
// chain are a system prompt held by every prefill worker, the worst case for
// the match (every worker stays a candidate through the shared part). A
// query takes a random chain's first 1..chain-blocks blocks plus a new tail.
// One in ten workers decodes. Place records each query's uncached blocks as
// in flight to the chosen worker (KvIndex::AddInflight), so later queries
// also walk in-flight entries, as in a router under a burst.
//
// Long prompts: one more chain of --long-blocks blocks (6,250 x 16 tokens =
// a 100,000-token prompt) on 1-3 workers; --long-queries decisions on its
// whole length plus a new 8-block tail, timed separately.
//
// A 1,024-token system prompt: --shared-blocks 64 --chain-blocks 128.
//
// Memory: the process's resident set before and after filling the index,
// per indexed block and per (block, worker) entry; and after the timed
// queries (their in-flight entries).
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <vector>

#include "CLI/CLI.hpp"
#include "nlohmann/json.hpp"
#include "router/kv_index.h"
#include "router/placement.h"
#include "router/worker_registry.h"

namespace {

using tandem::BlockHash;
using tandem::router::KvIndex;

// On-CPU time of this thread: excludes the time the scheduler gave other
// processes, which on a loaded 2-core machine dominates the wall-clock tail.
double ThreadCpuUs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

// Resident set size of this process, bytes (/proc/self/statm).
int64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Routing-decision latency with a large KV index");
  int workers = 1000;
  int64_t blocks = 1'000'000;
  int chain_blocks = 64;
  int shared_blocks = 4;
  int queries = 20000;
  int long_blocks = 6250;
  int long_queries = 200;
  std::string json_path;
  app.add_option("--workers", workers, "Workers (10% decode)")->capture_default_str();
  app.add_option("--blocks", blocks, "Distinct block hashes indexed")->capture_default_str();
  app.add_option("--chain-blocks", chain_blocks, "Blocks per conversation chain")->capture_default_str();
  app.add_option("--shared-blocks", shared_blocks, "Leading blocks every prefill worker holds")
      ->capture_default_str();
  app.add_option("--queries", queries, "Timed routing decisions")->capture_default_str();
  app.add_option("--long-blocks", long_blocks, "Blocks of the long prompt (6,250 x 16 = 100k tokens)")
      ->capture_default_str();
  app.add_option("--long-queries", long_queries, "Timed decisions on the long prompt")->capture_default_str();
  app.add_option("--json", json_path, "Write the result here");
  CLI11_PARSE(app, argc, argv);

  std::mt19937_64 rng(42);
  tandem::router::WorkerRegistry registry({.heartbeat_interval = absl::Hours(1), .model_id = "m"});
  std::vector<std::string> prefill_ids;
  for (int w = 0; w < workers; ++w) {
    const bool decode = w % 10 == 0;
    tandem::v1::RegisterRequest r;
    r.set_worker_id((decode ? "d" : "p") + std::to_string(w));
    r.set_role(decode ? tandem::v1::WORKER_ROLE_DECODE : tandem::v1::WORKER_ROLE_PREFILL);
    r.set_address("127.0.0.1:1");  // never dialled
    r.set_model_id("m");
    r.set_block_size(16);
    r.mutable_load()->set_queued_prefill_tokens(static_cast<int64_t>(rng() % 4096));
    r.mutable_load()->set_running(static_cast<int32_t>(rng() % 64));
    r.mutable_load()->set_free_blocks(static_cast<int32_t>(rng() % 10000));
    r.mutable_load()->set_total_blocks(10000);
    if (!registry.Register(r).ok()) return 1;
    if (!decode) prefill_ids.push_back(r.worker_id());
  }

  // Index: shared system prompt on every prefill worker, then chains.
  KvIndex index;
  std::vector<BlockHash> shared(static_cast<size_t>(shared_blocks));
  for (BlockHash& h : shared) h = rng();
  const int64_t chains = std::max<int64_t>(1, (blocks - shared_blocks) / (chain_blocks - shared_blocks));
  std::vector<std::vector<BlockHash>> chain_hashes(static_cast<size_t>(chains));
  absl::flat_hash_map<std::string, tandem::v1::KvEventBatch> batches;
  for (const std::string& id : prefill_ids) {
    tandem::v1::KvEventBatch& b = batches[id];
    b.set_worker_id(id);
    b.set_sequence_number(1);
    auto* e = b.add_events();
    e->set_kind(tandem::v1::KvEvent::KIND_STORED);
    e->set_tier(tandem::v1::KV_TIER_HBM);
    for (BlockHash h : shared) e->add_block_hashes(h);
  }
  for (auto& chain : chain_hashes) {
    chain = shared;
    for (int i = shared_blocks; i < chain_blocks; ++i) chain.push_back(rng());
    const int holders = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < holders; ++k) {
      auto* e = batches[prefill_ids[rng() % prefill_ids.size()]].add_events();
      e->set_kind(tandem::v1::KvEvent::KIND_STORED);
      e->set_tier(k == 0 ? tandem::v1::KV_TIER_HBM : tandem::v1::KV_TIER_DRAM);
      for (size_t i = static_cast<size_t>(shared_blocks); i < chain.size(); ++i)
        e->add_block_hashes(chain[i]);
    }
  }
  // The long conversation, on 1-3 workers like the others.
  std::vector<BlockHash> long_chain = shared;
  while (static_cast<int>(long_chain.size()) < long_blocks) long_chain.push_back(rng());
  for (int k = 0, holders = 1 + static_cast<int>(rng() % 3); k < holders; ++k) {
    auto* e = batches[prefill_ids[rng() % prefill_ids.size()]].add_events();
    e->set_kind(tandem::v1::KvEvent::KIND_STORED);
    e->set_tier(tandem::v1::KV_TIER_HBM);
    for (size_t i = static_cast<size_t>(shared_blocks); i < long_chain.size(); ++i)
      e->add_block_hashes(long_chain[i]);
  }
  // Everything but the index exists now: the resident set grows by the
  // index alone while the batches are applied.
  malloc_trim(0);
  const int64_t rss_before = RssBytes();
  for (auto& [id, b] : batches) {
    if (index.Apply(b) != KvIndex::Outcome::kApplied) return 1;
  }
  malloc_trim(0);
  const int64_t rss_index = RssBytes();
  batches.clear();
  const KvIndex::Stats stats = index.stats();
  std::fprintf(stderr, "index: %zu workers, %zu blocks, %zu (block, worker) entries\n", stats.workers,
               stats.blocks, stats.entries);

  tandem::router::Placement placement({.policy = tandem::router::Policy::kKv}, &registry, &index);
  // One routing decision on `prompt` (block hashes of 16 tokens): the
  // index's Match alone, then Place (wall and on-CPU time); false if Place
  // failed. *cached_blocks: the decision's predicted cached blocks.
  struct Timed {
    double match_us, place_us, place_cpu_us;
    int64_t cached_blocks;
  };
  KvIndex::SlotMatches match_scratch;
  const auto time_place = [&](const std::vector<BlockHash>& prompt, Timed* out) {
    tandem::router::PlacementRequest req;
    req.block_hashes = prompt;
    req.prompt_tokens = static_cast<int32_t>(prompt.size()) * 16;
    req.max_tokens = 256;
    req.block_size = 16;
    auto t0 = std::chrono::steady_clock::now();
    index.MatchSlots(prompt, &match_scratch);  // what Place's match costs
    auto t1 = std::chrono::steady_clock::now();
    const double c1 = ThreadCpuUs();
    absl::StatusOr<tandem::router::PlacementDecision> d = placement.Place(req);
    const double c2 = ThreadCpuUs();
    auto t2 = std::chrono::steady_clock::now();
    if (!d.ok()) return false;
    *out = Timed{std::chrono::duration<double, std::micro>(t1 - t0).count(),
                 std::chrono::duration<double, std::micro>(t2 - t1).count(), c2 - c1,
                 d->predicted_cached_tokens / 16};
    return true;
  };
  std::vector<double> place_us, match_us, place_cpu_us;
  place_us.reserve(static_cast<size_t>(queries));
  int64_t matched_blocks = 0;
  for (int q = 0; q < queries; ++q) {
    const auto& chain = chain_hashes[rng() % chain_hashes.size()];
    std::vector<BlockHash> prompt(chain.begin(),
                                  chain.begin() + 1 + static_cast<ptrdiff_t>(rng() % chain.size()));
    for (int i = 0; i < 8; ++i) prompt.push_back(rng());  // the new turn
    Timed t;
    if (!time_place(prompt, &t)) return 1;
    place_cpu_us.push_back(t.place_cpu_us);
    matched_blocks += t.cached_blocks;
    match_us.push_back(t.match_us);
    place_us.push_back(t.place_us);
  }
  const KvIndex::Stats after = index.stats();
  malloc_trim(0);
  const int64_t rss_inflight = RssBytes();

  // The 100k-token prompt: its whole chain is cached on its holders.
  std::vector<double> long_us, long_cpu_us, long_match_us;
  int64_t long_matched = 0;
  for (int q = 0; q < long_queries; ++q) {
    std::vector<BlockHash> prompt = long_chain;
    for (int i = 0; i < 8; ++i) prompt.push_back(rng());
    Timed t;
    if (!time_place(prompt, &t)) return 1;
    long_matched += t.cached_blocks;
    long_cpu_us.push_back(t.place_cpu_us);
    long_match_us.push_back(t.match_us);
    long_us.push_back(t.place_us);
  }
  nlohmann::ordered_json out;
  out["workers"] = workers;
  out["indexed_blocks"] = stats.blocks;
  out["index_entries"] = stats.entries;
  out["holder_sets"] = stats.holder_sets;  // distinct (workers, tiers) holder sets the blocks share
  out["queries"] = queries;
  out["mean_matched_blocks"] = static_cast<double>(matched_blocks) / queries;
  out["place_us"] = {{"p50", Percentile(place_us, 0.5)},
                     {"p90", Percentile(place_us, 0.9)},
                     {"p99", Percentile(place_us, 0.99)},
                     {"max", Percentile(place_us, 1.0)}};
  out["place_cpu_us"] = {{"p50", Percentile(place_cpu_us, 0.5)},
                         {"p90", Percentile(place_cpu_us, 0.9)},
                         {"p99", Percentile(place_cpu_us, 0.99)},
                         {"max", Percentile(place_cpu_us, 1.0)}};
  out["match_only_us"] = {{"p50", Percentile(match_us, 0.5)}, {"p99", Percentile(match_us, 0.99)}};
  out["target_p99_us"] = 100;
  out["inflight_entries_after_queries"] = after.inflight_entries;
  out["long_prompt"] = {
      {"blocks", long_chain.size() + 8},
      {"queries", long_queries},
      {"mean_matched_blocks", static_cast<double>(long_matched) / std::max(1, long_queries)},
      {"place_us", {{"p50", Percentile(long_us, 0.5)}, {"p99", Percentile(long_us, 0.99)}}},
      {"place_cpu_us", {{"p50", Percentile(long_cpu_us, 0.5)}, {"p99", Percentile(long_cpu_us, 0.99)}}},
      {"match_only_us", {{"p50", Percentile(long_match_us, 0.5)}, {"p99", Percentile(long_match_us, 0.99)}}},
      {"target_p99_us", 1000}};
  const double index_bytes = static_cast<double>(rss_index - rss_before);
  out["memory"] = {
      {"rss_index_bytes", index_bytes},
      {"bytes_per_indexed_block", index_bytes / static_cast<double>(std::max<size_t>(1, stats.blocks))},
      {"bytes_per_entry", index_bytes / static_cast<double>(std::max<size_t>(1, stats.entries))},
      {"rss_inflight_bytes", rss_inflight - rss_index},
      {"bytes_per_inflight_entry", static_cast<double>(rss_inflight - rss_index) /
                                       static_cast<double>(std::max<size_t>(1, after.inflight_entries))}};
  std::printf("%s\n", out.dump(2).c_str());
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
