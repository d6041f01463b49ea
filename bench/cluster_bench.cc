// Client-side load against a running cluster: TTFT split into queue, prefill
// and transfer (from the router's summaries), TPOT, and throughput.
//
//   build/bin/tandem up --model ../shared/models/stories260K.gguf --prefill 1 --decode 1 --port 50051 &
//   build/bin/cluster_bench --router 127.0.0.1:50051 --requests 64 --concurrency 8
//
// bench/cluster_ttft.sh runs it against a disaggregated and an aggregated
// cluster in one go (the comparison docs/PERFORMANCE.md reports).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/tandem.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
  double queue_ms, prefill_ms, transfer_ms, router_ttft_ms, client_ttft_ms, total_ms, tpot_ms;
  int32_t tokens;
};

nlohmann::json Stats(std::vector<double> v) {
  if (v.empty()) return nullptr;
  std::sort(v.begin(), v.end());
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  auto pct = [&](double p) { return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))]; };
  return {{"mean", mean}, {"p50", pct(0.5)}, {"p90", pct(0.9)}, {"max", v.back()}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Load a Tandem cluster and report TTFT (queue / prefill / transfer) and TPOT"};
  std::string router = "127.0.0.1:50051";
  int requests = 64, concurrency = 8, prompt_words = 60, max_tokens = 32;
  std::string label;
  app.add_option("--router", router, "Router address")->capture_default_str();
  app.add_option("--requests", requests, "Requests in all")->capture_default_str();
  app.add_option("--concurrency", concurrency, "Requests in flight")->capture_default_str();
  app.add_option("--prompt-words", prompt_words, "Words per prompt (distinct per request)")
      ->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "Tokens to generate per request")->capture_default_str();
  app.add_option("--label", label, "Label echoed in the JSON");
  CLI11_PARSE(app, argc, argv);

  auto stub = tandem::v1::Tandem::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  static const char* kWords[] = {"the", "little", "dog", "saw", "a", "big", "red", "ball", "and", "Lily"};
  std::mutex mu;
  std::vector<Sample> samples;
  int failures = 0;
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < requests; i = next++) {
        std::string prompt = "Request " + std::to_string(i) + ":";
        for (int w = 0; w < prompt_words; ++w) prompt += std::string(" ") + kWords[(i * 7 + w * 3) % 10];
        tandem::v1::GenerateRequest req;
        req.set_prompt(prompt);
        req.set_max_tokens(max_tokens);
        req.set_stop_at_eos(false);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        const auto t0 = Clock::now();
        auto reader = stub->Generate(&ctx, req);
        tandem::v1::GenerateResponse resp;
        double first = -1;
        tandem::v1::GenerateSummary summary;
        while (reader->Read(&resp)) {
          if (resp.has_chunk() && first < 0 && resp.chunk().token_ids_size() > 0) {
            first = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
          }
          if (resp.has_summary()) summary = resp.summary();
        }
        const double total = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        grpc::Status s = reader->Finish();
        std::lock_guard<std::mutex> lock(mu);
        if (!s.ok()) {
          ++failures;
          std::cerr << "request " << i << ": " << s.error_message() << "\n";
          continue;
        }
        const int32_t n = summary.usage().completion_tokens();
        samples.push_back({summary.timings().queue_ms(), summary.timings().prefill_ms(),
                           summary.timings().transfer_ms(), summary.timings().first_token_ms(), first, total,
                           n > 1 ? (total - first) / (n - 1) : 0.0, n});
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  auto column = [&](double Sample::*field) {
    std::vector<double> v;
    for (const Sample& s : samples) v.push_back(s.*field);
    return Stats(v);
  };
  int64_t tokens = 0;
  for (const Sample& s : samples) tokens += s.tokens;
  nlohmann::json out = {{"label", label},
                        {"router", router},
                        {"requests", requests},
                        {"concurrency", concurrency},
                        {"failures", failures},
                        {"max_tokens", max_tokens},
                        {"queue_ms", column(&Sample::queue_ms)},
                        {"prefill_ms", column(&Sample::prefill_ms)},
                        {"transfer_ms", column(&Sample::transfer_ms)},
                        {"ttft_router_ms", column(&Sample::router_ttft_ms)},
                        {"ttft_client_ms", column(&Sample::client_ttft_ms)},
                        {"tpot_ms", column(&Sample::tpot_ms)},
                        {"total_ms", column(&Sample::total_ms)},
                        {"output_tokens_per_s", tokens / wall_s}};
  std::cout << out.dump() << "\n";
  return failures == 0 ? 0 : 1;
}
