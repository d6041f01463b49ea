// `tandem up`: the process supervisor on its own (with /bin/sh children), then
// the real binary end to end: readiness, remote generate, SIGTERM, a dead
// worker, and SIGKILL of `up` itself (children follow through PDEATHSIG).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/up_command.h"
#include "gtest/gtest.h"
#include "http/test_client.h"
#include "nlohmann/json.hpp"
#include "tests/testing/poll.h"
#include "tests/testing/temp_dir.h"

extern char** environ;

namespace tandem::cli {
namespace {

using nlohmann::ordered_json;
using ::tandem::testing::PollUntil;
using ::tandem::testing::TempDir;

// ---------------------------------------------------------------------------
// Pieces

TEST(ParseReadyLineTest, AcceptsTheContractAndFillsGaps) {
  auto j = ParseReadyLine(R"({"role":"router","pid":7,"grpc":"127.0.0.1:5","extra":1})", "router", 99);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->dump(), R"({"role":"router","pid":7,"grpc":"127.0.0.1:5","extra":1})");  // untouched
  j = ParseReadyLine(R"({"grpc":"h:1"})", "decode", 42);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ((*j)["role"], "decode");
  EXPECT_EQ((*j)["pid"], 42);
}

TEST(ParseReadyLineTest, RejectsBrokenLines) {
  EXPECT_TRUE(absl::IsNotFound(ParseReadyLine("listening...", "router", 1).status()));
  EXPECT_TRUE(absl::IsNotFound(ParseReadyLine("[1,2]", "router", 1).status()));
  EXPECT_TRUE(absl::IsNotFound(ParseReadyLine("", "router", 1).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(ParseReadyLine(R"({"role":"prefill","grpc":"h:1"})", "decode", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseReadyLine(R"({"role":"decode"})", "decode", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseReadyLine(R"({"grpc":""})", "decode", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseReadyLine(R"({"grpc":"h:1","pid":"x"})", "decode", 1).status()));
}

TEST(DescribeWaitStatusTest, ExitAndSignal) {
  EXPECT_EQ(DescribeWaitStatus(1 << 8), "exit 1");  // Linux encoding of wait statuses
  EXPECT_EQ(DescribeWaitStatus(0), "exit 0");
  EXPECT_EQ(DescribeWaitStatus(SIGKILL), "signal 9");
}

TEST(DialableAddressTest, WildcardsBecomeLoopback) {
  EXPECT_EQ(DialableAddress("127.0.0.1:5"), "127.0.0.1:5");
  EXPECT_EQ(DialableAddress("0.0.0.0:5"), "127.0.0.1:5");
  EXPECT_EQ(DialableAddress("[::]:5"), "[::1]:5");
  EXPECT_EQ(DialableAddress("host.example:5"), "host.example:5");
}

// ---------------------------------------------------------------------------
// Supervisor with fake children

// Whether `pid` is gone: no process, or a zombie nobody has reaped yet (an
// orphan waits for init, which in a container may never reap it).
bool ProcessGone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

ChildSpec Shell(const std::string& role, const std::string& script, bool essential = false) {
  return {.role = role,
          .name = role,
          .executable = "/bin/sh",
          .argv = {"sh", "-c", script},
          .essential = essential};
}

// Prints a ready line for `role`, then becomes `sleep` (same pid).
std::string ReadyThenSleep(const std::string& role) {
  return absl::StrCat("echo '{\"role\":\"", role, "\",\"grpc\":\"127.0.0.1:1\"}'; exec sleep 100");
}

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Supervisor::Create({.out = &out_, .log_prefix = "test", .stop_timeout = absl::Seconds(5)});
    ASSERT_TRUE(s.ok()) << s.status();
    sup_ = *std::move(s);
  }
  std::vector<std::string> OutLines() const {
    std::vector<std::string> lines;
    std::istringstream in(out_.str());
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  std::ostringstream out_;
  std::unique_ptr<Supervisor> sup_;
};

TEST_F(SupervisorTest, WaitsForEveryReadyLineAndStops) {
  auto ready = sup_->StartAndWaitReady({Shell("router", "echo 'warming up'; " + ReadyThenSleep("router")),
                                        Shell("decode", ReadyThenSleep("decode"))},
                                       absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->size(), 2u);
  EXPECT_EQ((*ready)[0]["role"], "router");
  EXPECT_EQ((*ready)[1]["role"], "decode");
  const std::vector<pid_t> pids = sup_->live_pids();
  ASSERT_EQ(pids.size(), 2u);
  EXPECT_EQ((*ready)[0]["pid"], pids[0]);  // filled in: the line lacked it
  EXPECT_EQ(OutLines().size(), 2u);        // the stray line went to stderr
  const absl::Time start = absl::Now();
  sup_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));  // SIGTERM was enough
  EXPECT_TRUE(sup_->live_pids().empty());
  for (pid_t pid : pids) {
    EXPECT_EQ(kill(pid, 0), -1);
    EXPECT_EQ(errno, ESRCH);
  }
}

TEST_F(SupervisorTest, ChildDyingBeforeReadyIsNamed) {
  auto ready =
      sup_->StartAndWaitReady({Shell("router", ReadyThenSleep("router")), Shell("prefill", "exit 3")},
                              absl::Now() + absl::Seconds(20));
  ASSERT_FALSE(ready.ok());
  EXPECT_TRUE(absl::IsUnavailable(ready.status())) << ready.status();
  EXPECT_TRUE(absl::StrContains(ready.status().message(), "prefill")) << ready.status();
  EXPECT_TRUE(absl::StrContains(ready.status().message(), "exit 3")) << ready.status();
  sup_->Stop();
  EXPECT_TRUE(sup_->live_pids().empty());
}

TEST_F(SupervisorTest, BadReadyLineFails) {
  auto ready =
      sup_->StartAndWaitReady({Shell("decode", ReadyThenSleep("prefill"))}, absl::Now() + absl::Seconds(20));
  EXPECT_TRUE(absl::IsInvalidArgument(ready.status())) << ready.status();
}

TEST_F(SupervisorTest, TimeoutNamesWhoIsNotReady) {
  const absl::Time start = absl::Now();
  auto ready =
      sup_->StartAndWaitReady({Shell("router", ReadyThenSleep("router")), Shell("decode", "exec sleep 100")},
                              absl::Now() + absl::Milliseconds(300));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  ASSERT_TRUE(absl::IsDeadlineExceeded(ready.status())) << ready.status();
  EXPECT_TRUE(absl::StrContains(ready.status().message(), "decode")) << ready.status();
  EXPECT_FALSE(absl::StrContains(ready.status().message(), "router")) << ready.status();
  EXPECT_EQ(OutLines().size(), 1u);  // the router's line was printed as it came
}

TEST_F(SupervisorTest, DeadWorkerIsReportedAndTheRestKeepServing) {
  ASSERT_TRUE(sup_->StartAndWaitReady({Shell("router", ReadyThenSleep("router"), /*essential=*/true),
                                       Shell("decode", ReadyThenSleep("decode"))},
                                      absl::Now() + absl::Seconds(20))
                  .ok());
  const pid_t decode = sup_->live_pids()[1];
  ASSERT_EQ(kill(decode, SIGKILL), 0);
  absl::Status watched;
  ASSERT_TRUE(PollUntil(
      [&] {
        watched = sup_->Watch(absl::Now() + absl::Milliseconds(50));
        return OutLines().size() == 3;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(absl::IsDeadlineExceeded(watched)) << watched;  // still serving
  auto exited = nlohmann::json::parse(OutLines()[2]);
  EXPECT_EQ(exited["event"], "exited");
  EXPECT_EQ(exited["role"], "decode");
  EXPECT_EQ(exited["pid"], decode);
  EXPECT_EQ(exited["status"], "signal 9");
  EXPECT_EQ(sup_->live_pids().size(), 1u);
}

TEST_F(SupervisorTest, DeadEssentialChildEndsWatch) {
  ASSERT_TRUE(sup_->StartAndWaitReady({Shell("router", ReadyThenSleep("router"), /*essential=*/true),
                                       Shell("decode", ReadyThenSleep("decode"))},
                                      absl::Now() + absl::Seconds(20))
                  .ok());
  ASSERT_EQ(kill(sup_->live_pids()[0], SIGKILL), 0);
  const absl::Status watched = sup_->Watch(absl::Now() + absl::Seconds(20));
  EXPECT_TRUE(absl::IsUnavailable(watched)) << watched;
  EXPECT_TRUE(absl::StrContains(out_.str(), R"("role":"router")")) << out_.str();
}

TEST_F(SupervisorTest, SigtermEndsWatch) {
  ASSERT_TRUE(
      sup_->StartAndWaitReady({Shell("router", ReadyThenSleep("router"))}, absl::Now() + absl::Seconds(20))
          .ok());
  ASSERT_EQ(raise(SIGTERM), 0);  // blocked: lands in the supervisor's signalfd
  EXPECT_TRUE(sup_->Watch(absl::Now() + absl::Seconds(20)).ok());
}

TEST(SupervisorStopTest, SigkillsWhatIgnoresSigterm) {
  std::ostringstream out;
  auto sup = Supervisor::Create({.out = &out, .log_prefix = "test", .stop_timeout = absl::Milliseconds(300)});
  ASSERT_TRUE(sup.ok());
  // exec keeps an ignored disposition, so `sleep` ignores SIGTERM.
  ASSERT_TRUE((*sup)
                  ->StartAndWaitReady({Shell("decode", "trap '' TERM; " + ReadyThenSleep("decode"))},
                                      absl::Now() + absl::Seconds(20))
                  .ok());
  const pid_t pid = (*sup)->live_pids()[0];
  const absl::Time start = absl::Now();
  (*sup)->Stop();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE((*sup)->live_pids().empty());
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST(SupervisorStopTest, DestructorReapsAndRestoresTheSignalMask) {
  pid_t pid;
  {
    std::ostringstream out;
    auto sup = Supervisor::Create({.out = &out});
    ASSERT_TRUE(sup.ok());
    ASSERT_TRUE(
        (*sup)
            ->StartAndWaitReady({Shell("decode", ReadyThenSleep("decode"))}, absl::Now() + absl::Seconds(20))
            .ok());
    pid = (*sup)->live_pids()[0];
  }
  EXPECT_EQ(kill(pid, 0), -1);
  sigset_t mask;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  EXPECT_FALSE(sigismember(&mask, SIGTERM));
  EXPECT_FALSE(sigismember(&mask, SIGCHLD));
}

// ---------------------------------------------------------------------------
// The real binary

struct ExitResult {
  int exit_code;
  std::string out;
};

ExitResult RunTandem(const std::string& args) {
  const std::string cmd = absl::StrCat(TANDEM_BINARY, " ", args, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// `tandem generate --remote ROUTER` prints the same JSON line as a local
// `tandem generate` (the local run's stderr note is not in its stdout).
void ExpectRemoteGenerationMatchesLocal(const std::string& router) {
  ExitResult remote =
      RunTandem(absl::StrCat("generate --remote ", router, " --json --max-tokens 8 --timeout-s 60"));
  ASSERT_EQ(remote.exit_code, 0) << remote.out;
  ExitResult local = RunTandem("generate --json --max-tokens 8");
  ASSERT_EQ(local.exit_code, 0) << local.out;
  const auto last_line = [](const std::string& s) {
    std::istringstream in(s);
    std::string line, last;
    while (std::getline(in, line)) {
      if (!line.empty() && line[0] == '{') last = line;
    }
    return last;
  };
  EXPECT_EQ(last_line(remote.out), last_line(local.out));
  EXPECT_FALSE(last_line(remote.out).empty()) << remote.out;
}

// `tandem up ARGS` with its stdout on a pipe (stderr inherited, for the log).
class UpProcess {
 public:
  explicit UpProcess(const std::vector<std::string>& args) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t empty;
    sigemptyset(&empty);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    std::vector<std::string> argv = {TANDEM_BINARY, "up"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, TANDEM_BINARY, &actions, &attr, cargv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(fds[1]);
    fd_ = fds[0];
  }
  ~UpProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }

  pid_t pid() const { return pid_; }

  // The next stdout line; nullopt at EOF or when `timeout` passes first.
  std::optional<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      if (size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return std::nullopt;
      pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
      const int n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) continue;  // re-check the deadline
      char buf[4096];
      const ssize_t got = read(fd_, buf, sizeof(buf));
      if (got <= 0) return std::nullopt;
      buffer_.append(buf, static_cast<size_t>(got));
    }
  }

  // Reads lines until one parses as a JSON object with "event" == `event`.
  // Every line read is appended to `seen`.
  std::optional<nlohmann::json> ReadUntilEvent(const std::string& event, absl::Duration timeout,
                                               std::vector<nlohmann::json>* seen) {
    const absl::Time deadline = absl::Now() + timeout;
    while (auto line = ReadLine(deadline - absl::Now())) {
      nlohmann::json j = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
      EXPECT_TRUE(j.is_object()) << "not a JSON line on up's stdout: " << *line;
      if (!j.is_object()) continue;
      seen->push_back(j);
      if (j.value("event", "") == event) return j;
    }
    return std::nullopt;
  }

  // The exit code (-signal when killed); nullopt if still running at `timeout`.
  std::optional<int> WaitExit(absl::Duration timeout) {
    int status = 0;
    if (!PollUntil([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, timeout)) return std::nullopt;
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  std::string buffer_;
};

struct Cluster {
  std::unique_ptr<UpProcess> up;
  std::string router;                       // host:port from the ready event
  std::vector<nlohmann::json> ready_lines;  // one per process
  pid_t Pid(const std::string& role) const {
    for (const auto& j : ready_lines) {
      if (j["role"] == role) return j["pid"].get<pid_t>();
    }
    return -1;
  }
};

// Starts a 1 prefill + 1 decode cluster on an ephemeral port and waits for its
// ready event; fails the test (and returns nullopt) otherwise.
std::optional<Cluster> StartCluster() {
  Cluster c;
  c.up = std::make_unique<UpProcess>(std::vector<std::string>{"--model", "synthetic:tiny", "--prefill", "1",
                                                              "--decode", "1", "--port", "0",
                                                              "--ready-timeout-s", "60"});
  std::vector<nlohmann::json> seen;
  auto ready = c.up->ReadUntilEvent("ready", absl::Seconds(90), &seen);
  EXPECT_TRUE(ready.has_value()) << "no ready event from tandem up";
  if (!ready.has_value()) return std::nullopt;
  seen.pop_back();
  c.ready_lines = seen;
  c.router = (*ready)["router"].get<std::string>();
  return c;
}

TEST(UpTest, StartsServesAndMatchesLocalGenerate) {
  auto c = StartCluster();
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->ready_lines.size(), 3u);
  EXPECT_EQ(c->ready_lines[0]["role"], "router");  // the router first
  std::vector<std::string> roles;
  for (const auto& j : c->ready_lines) {
    roles.push_back(j["role"]);
    EXPECT_TRUE(j["pid"].is_number_integer()) << j;
    EXPECT_TRUE(j["grpc"].is_string()) << j;
    EXPECT_GT(j["pid"].get<int>(), 0);
  }
  std::sort(roles.begin() + 1, roles.end());
  EXPECT_EQ(roles, (std::vector<std::string>{"router", "decode", "prefill"}));
  EXPECT_EQ(c->router, c->ready_lines[0]["grpc"]);
  EXPECT_FALSE(absl::EndsWith(c->router, ":0"));

  ExpectRemoteGenerationMatchesLocal(c->router);

  ASSERT_EQ(kill(c->up->pid(), SIGTERM), 0);
  EXPECT_EQ(c->up->WaitExit(absl::Seconds(10)), 0);
}

TEST(UpTest, RemoteGenerateErrorsAreClear) {
  ExitResult r = RunTandem("generate --remote 127.0.0.1:1 --timeout-s 5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.out, "127.0.0.1:1")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "UNAVAILABLE")) << r.out;
  const std::string prompts = ::testing::TempDir() + "/up_test_prompts.jsonl";
  std::ofstream(prompts) << R"({"prompt":"a"})"
                         << "\n";
  r = RunTandem("generate --remote 127.0.0.1:1 --prompts-file " + prompts);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.out, "--prompts-file")) << r.out;
}

TEST(UpTest, SigtermStopsEveryProcess) {
  auto c = StartCluster();
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->ready_lines.size(), 3u);
  const absl::Time start = absl::Now();
  ASSERT_EQ(kill(c->up->pid(), SIGTERM), 0);
  // up waits up to 5 s before SIGKILL; the children should need far less.
  EXPECT_EQ(c->up->WaitExit(absl::Seconds(7)), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (const auto& j : c->ready_lines) {
    const pid_t pid = j["pid"].get<pid_t>();
    EXPECT_EQ(kill(pid, 0), -1) << j;  // up reaped it
    EXPECT_EQ(errno, ESRCH) << j;
  }
}

TEST(UpTest, DeadDecodeWorkerIsReportedAndUpKeepsRunning) {
  auto c = StartCluster();
  ASSERT_TRUE(c.has_value());
  const pid_t decode = c->Pid("decode");
  ASSERT_GT(decode, 0);
  ASSERT_EQ(kill(decode, SIGKILL), 0);
  std::vector<nlohmann::json> seen;
  auto exited = c->up->ReadUntilEvent("exited", absl::Seconds(10), &seen);
  ASSERT_TRUE(exited.has_value());
  EXPECT_EQ((*exited)["role"], "decode");
  EXPECT_EQ((*exited)["pid"], decode);
  EXPECT_EQ((*exited)["status"], "signal 9");
  // Still up, and so is the router.
  EXPECT_FALSE(c->up->WaitExit(absl::Milliseconds(500)).has_value());
  EXPECT_EQ(kill(c->Pid("router"), 0), 0);
  ASSERT_EQ(kill(c->up->pid(), SIGTERM), 0);
  EXPECT_EQ(c->up->WaitExit(absl::Seconds(10)), 0);
  EXPECT_TRUE(ProcessGone(c->Pid("router")));
  EXPECT_TRUE(ProcessGone(c->Pid("prefill")));
}

TEST(UpTest, ChildrenDieWithUp) {
  auto c = StartCluster();
  ASSERT_TRUE(c.has_value());
  ASSERT_EQ(c->ready_lines.size(), 3u);
  ASSERT_EQ(kill(c->up->pid(), SIGKILL), 0);
  EXPECT_EQ(c->up->WaitExit(absl::Seconds(5)), -SIGKILL);
  for (const auto& j : c->ready_lines) {
    const pid_t pid = j["pid"].get<pid_t>();
    EXPECT_TRUE(PollUntil([&] { return ProcessGone(pid); }, absl::Seconds(10))) << j;
  }
}

// The value of the sample `series` (name and labels exactly as rendered) in
// a Prometheus text body; nullopt when absent.
std::optional<double> Sample(const std::string& body, const std::string& series) {
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, series + " ")) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

// GET `path` from 127.0.0.1:`port`; the body, or "" without a 200.
std::string HttpGet(int port, const std::string& path) {
  http::testing::TestClient c(port);
  if (!c.ok() || !c.Send(absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: t\r\n\r\n"))) return "";
  std::optional<http::testing::ParsedResponse> r = c.ReadResponse(absl::Seconds(10));
  return r.has_value() && r->status == 200 ? r->body : "";
}

int PortOf(const std::string& address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return 0;
  return port;
}

// `up --store`: a shared KV store starts after the router, registers with
// it (the router counts it among its healthy workers), every worker gets
// --kv-store with its address (and a DRAM tier in front of it), and
// requests through the cluster give what a local generate gives.
TEST(UpTest, StoreRegistersWithTheRouterAndWorkersUseIt) {
  TempDir temp("up_store_");
  const std::string& dir = temp.path();
  ASSERT_FALSE(dir.empty());
  UpProcess up({"--model", "synthetic:tiny", "--prefill", "1", "--decode", "1", "--port", "0", "--http-port",
                "0", "--store", "--store-dram-bytes", "16777216", "--kv-ssd-dir", dir, "--ready-timeout-s",
                "60"});
  std::vector<nlohmann::json> seen;
  auto ready = up.ReadUntilEvent("ready", absl::Seconds(90), &seen);
  ASSERT_TRUE(ready.has_value()) << "no ready event from tandem up --store";
  seen.pop_back();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0]["role"], "router");
  const nlohmann::json& store = seen[1];  // after the router, before the workers
  ASSERT_EQ(store["role"], "store");
  const std::string router = (*ready)["router"].get<std::string>();
  EXPECT_EQ(store["router"], router);
  EXPECT_EQ(store["worker_id"], "store-0");
  EXPECT_EQ(store["ssd"], true);  // DIR/store under --kv-ssd-dir
  EXPECT_EQ((*ready)["store"], store["grpc"]);
  EXPECT_TRUE(std::ifstream(dir + "/store/CURRENT").good()) << "no RocksDB at " << dir << "/store";
  for (size_t i = 2; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i]["kv_store"], store["grpc"]) << seen[i];
    EXPECT_EQ(seen[i]["kv_tiers"], true) << seen[i];  // the default DRAM tier in front of the store
  }

  // The router lists the store as a healthy worker of role store (beside
  // the two workers; its gauges follow registrations within a sweep).
  const int http_port = PortOf((*ready)["http"].get<std::string>());
  ASSERT_GT(http_port, 0) << *ready;
  std::string metrics;
  EXPECT_TRUE(PollUntil(
      [&] {
        metrics = HttpGet(http_port, "/metrics");
        return Sample(metrics, R"(tandem_router_workers{role="store"})") == 1.0 &&
               Sample(metrics, R"(tandem_router_workers{role="prefill"})") == 1.0 &&
               Sample(metrics, R"(tandem_router_workers{role="decode"})") == 1.0;
      },
      absl::Seconds(10)))
      << "router's /metrics:\n"
      << metrics;

  ExpectRemoteGenerationMatchesLocal(router);

  ASSERT_EQ(kill(up.pid(), SIGTERM), 0);
  EXPECT_EQ(up.WaitExit(absl::Seconds(10)), 0);
  EXPECT_TRUE(ProcessGone(store["pid"].get<pid_t>()));
}

TEST(UpTest, RouterThatCannotStartFailsUp) {
  ExitResult r = RunTandem("up --model /no/such.gguf --port 0 --ready-timeout-s 30");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "router")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "before it was ready")) << r.out;
}

}  // namespace
}  // namespace tandem::cli
