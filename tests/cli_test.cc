// End to end through the real `tandem` binary: flags, JSON output, errors.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace {

struct Result {
  int exit_code;
  std::string out;  // stdout and stderr
};

Result RunTandem(const std::string& args, bool with_stderr = false) {
  const std::string cmd = absl::StrCat(TANDEM_BINARY, " ", args, with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(CliTest, HelpListsEverySubcommand) {
  Result r = RunTandem("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* cmd : {"generate", "router", "prefill", "decode", "store", "up", "bench"}) {
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  }
  EXPECT_EQ(RunTandem("generate --help").exit_code, 0);
  EXPECT_EQ(RunTandem("store --help").exit_code, 0);
}

TEST(CliTest, GenerateJsonOnDefaultModel) {
  Result r = RunTandem("generate --prompt 'the little dog' --max-tokens 7 --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_token_ids"][0], 1);  // BOS
  EXPECT_EQ(j["generated_token_ids"].size(), 7u);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_TRUE(j["text"].is_string());
  // Greedy is deterministic.
  EXPECT_EQ(RunTandem("generate --prompt 'the little dog' --max-tokens 7 --json").out, r.out);
}

TEST(CliTest, SeededSamplingIsReproducible) {
  const std::string args = "generate --max-tokens 12 --temperature 1.0 --top-p 0.9 --top-k 40 --json --seed ";
  EXPECT_EQ(RunTandem(args + "5").out, RunTandem(args + "5").out);
  EXPECT_NE(RunTandem(args + "5").out, RunTandem(args + "6").out);
}

TEST(CliTest, SyntheticModelSaysSo) {
  Result r = RunTandem("generate --max-tokens 2", /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("synthetic"), std::string::npos);
  EXPECT_NE(r.out.find("--model"), std::string::npos);
}

TEST(CliTest, BadInputGivesClearErrors) {
  Result r = RunTandem("generate --model /no/such.gguf", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("/no/such.gguf"), std::string::npos);
  r = RunTandem("generate --model synthetic:nope", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("unknown synthetic model"), std::string::npos);
  r = RunTandem("generate --max-tokens 5000", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("context length"), std::string::npos);
  EXPECT_NE(RunTandem("generate --top-p 2").exit_code, 0);
  EXPECT_NE(RunTandem("generate --no-such-flag").exit_code, 0);
  EXPECT_NE(RunTandem("store --no-such-flag").exit_code, 0);
  // `tandem up` refuses a router flag out of range itself, before starting
  // anything (it used to drop a negative value and run with the default).
  for (auto [flag, value] : {std::pair{"--decode-tpot-limit-ms", "-1"}, std::pair{"--slo-ttft-ms", "-5"},
                             std::pair{"--queue-ttl-ms", "-1"}, std::pair{"--max-inflight-prefills", "-2"},
                             std::pair{"--stream-stall-timeout-ms", "-1"}}) {
    r = RunTandem(absl::StrCat("up --port 0 ", flag, " ", value), true);
    EXPECT_NE(r.exit_code, 0) << flag;
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag << ": " << r.out;
  }
}

TEST(CliTest, Stories260KGreedyText) {
  const std::string model = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  if (!std::ifstream(model)) GTEST_SKIP() << model << " absent";
  Result r = RunTandem("generate --model " + model + " --prompt 'Once upon a time' --max-tokens 10 --json");
  ASSERT_EQ(r.exit_code, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_token_ids"], nlohmann::json({1, 403, 407, 261, 378}));
  EXPECT_EQ(j["text"], ", there was a little girl named Lily");
}

}  // namespace

namespace {

TEST(CliTest, PromptsFileRunsConcurrentlyInInputOrder) {
  const std::string path = ::testing::TempDir() + "/prompts.jsonl";
  {
    std::ofstream f(path);
    f << R"({"prompt": "once upon a time there was a little dog and a big cat", "max_tokens": 6})"
      << "\n"
      << R"({"prompt": "once upon a time there was a little dog and a big cat who", "max_tokens": 3})"
      << "\n"
      << "\n"
      << R"({"prompt": "the sun", "temperature": 0.9, "seed": 4, "top_k": 20})"
      << "\n";
  }
  // One sequence at a time, so the second prompt finds the first's blocks cached.
  Result r =
      RunTandem("generate --prompts-file " + path + " --max-tokens 5 --block-size 4 --max-running 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["generated_token_ids"].size(), 6u);
  EXPECT_EQ(lines[1]["generated_token_ids"].size(), 3u);
  EXPECT_EQ(lines[2]["generated_token_ids"].size(), 5u);  // the flag's default
  EXPECT_EQ(lines[0]["cached_tokens"], 0);
  EXPECT_GT(lines[1]["cached_tokens"].get<int>(), 0);
  EXPECT_EQ(lines[1]["cached_tokens"].get<int>() % 4, 0);
  // Same greedy tokens as a single-prompt run.
  Result alone = RunTandem(
      "generate --prompt 'once upon a time there was a little dog and a big cat who' --max-tokens 3 --json");
  EXPECT_EQ(nlohmann::json::parse(alone.out)["generated_token_ids"], lines[1]["generated_token_ids"]);
}

TEST(CliTest, PromptsFileErrorsNameTheLine) {
  const std::string path = ::testing::TempDir() + "/bad.jsonl";
  {
    std::ofstream f(path);
    f << R"({"prompt": "ok"})"
      << "\n"
      << R"({"prompt": 5})"
      << "\n";
  }
  Result r = RunTandem("generate --prompts-file " + path, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find(":2:"), std::string::npos) << r.out;
}

}  // namespace
