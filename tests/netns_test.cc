// Multi-host on one machine: router, prefill and decode each in a network
// namespace of its own (scripts/netns_cluster.sh), talking over veth pairs
// and a bridge on their own addresses (10.77.0.0/24). Generates through the
// cluster, takes the decode host's link down and checks that the router
// takes it out of rotation within its heartbeat deadline — requests then fail
// cleanly with UNAVAILABLE, quickly, instead of hanging — and that the host
// serves again once its link is back.
//
// Needs root and `ip netns`; skips with a message otherwise. UCX runs with
// UCX_TLS=tcp here so that KV transfers use the namespaces' addresses (its
// shared-memory transports would cross namespaces on one kernel).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/testing/poll.h"
#include "tests/testing/shell.h"
#include "tests/testing/subprocess.h"

namespace tandem {
namespace {

using ::tandem::testing::CommandResult;
using ::tandem::testing::PollUntil;
using ::tandem::testing::Shell;
using ::tandem::testing::Subprocess;

const std::string kBinary = TANDEM_BINARY;
const std::string kScript = TANDEM_SOURCE_DIR "/scripts/netns_cluster.sh";

// The router's heartbeat settings: a worker that misses kMisses beats of
// kHeartbeatMs leaves the rotation.
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 3;
constexpr absl::Duration kHeartbeatDeadline = absl::Milliseconds(kHeartbeatMs * kMisses);

// The namespaces of one test run; removed (processes in them killed) on
// destruction, whatever happened.
class Namespaces {
 public:
  explicit Namespaces(std::string prefix) : prefix_(std::move(prefix)) {}
  ~Namespaces() { Shell(absl::StrCat(kScript, " down ", prefix_)); }
  CommandResult Up() { return Shell(absl::StrCat(kScript, " up ", prefix_)); }
  CommandResult Link(const std::string& host, const std::string& state) {
    return Shell(absl::StrCat(kScript, " link ", prefix_, " ", host, " ", state));
  }
  std::string ns(const std::string& host) const { return absl::StrCat(prefix_, "-", host); }

  // argv running `tandem args...` in `host`'s namespace with UCX on TCP.
  std::vector<std::string> Tandem(const std::string& host, std::vector<std::string> args) const {
    std::vector<std::string> argv = {"/usr/bin/env", "ip",  "netns",       "exec",
                                     ns(host),       "env", "UCX_TLS=tcp", kBinary};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

 private:
  std::string prefix_;
};

std::string ShellJoin(const std::vector<std::string>& argv) {
  std::string out;
  for (const std::string& a : argv) absl::StrAppend(&out, out.empty() ? "" : " ", "'", a, "'");
  return out;
}

TEST(NetnsTest, DecodeHostLinkDownLeavesRotationWithinHeartbeatDeadline) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for ip netns";
  if (Shell("command -v ip").exit_code != 0) GTEST_SKIP() << "iproute2 (ip) not installed";
  Namespaces net(absl::StrCat("tnt", getpid()));
  CommandResult up = net.Up();
  if (up.exit_code != 0) GTEST_SKIP() << "cannot build network namespaces here: " << up.output;

  const std::string router_address = "10.77.0.1:50051";
  Subprocess router(
      net.Tandem("router", {"router", "--host", "10.77.0.1", "--port", "50051", "--heartbeat-ms",
                            absl::StrCat(kHeartbeatMs), "--heartbeat-misses", absl::StrCat(kMisses)}));
  ASSERT_TRUE(router.ReadLine(absl::Now() + absl::Seconds(60)).has_value()) << "router not ready";
  Subprocess prefill(net.Tandem("prefill", {"prefill", "--router", router_address, "--host", "10.77.0.2",
                                            "--port", "50061", "--threads", "1", "--kv-cache-mb", "32"}));
  Subprocess decode(net.Tandem("decode", {"decode", "--router", router_address, "--host", "10.77.0.3",
                                          "--port", "50061", "--threads", "1", "--kv-cache-mb", "32"}));
  for (Subprocess* w : {&prefill, &decode}) {
    auto line = w->ReadLine(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(line.has_value()) << "worker not ready";
    EXPECT_TRUE(absl::StrContains(*line, "10.77.0.")) << *line;
  }

  // A client on the router host, through the namespaces' addresses.
  const auto generate = [&](int timeout_s) {
    return Shell(ShellJoin(
        net.Tandem("router", {"generate", "--remote", router_address, "--prompt", "Once upon a time",
                              "--max-tokens", "8", "--json", "--timeout-s", absl::StrCat(timeout_s)})));
  };
  CommandResult ok = generate(60);
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(absl::StrContains(ok.output, "\"finish_reason\":\"length\"")) << ok.output;

  // The decode host drops off the network.
  ASSERT_EQ(net.Link("decode", "down").exit_code, 0);
  const absl::Time down_at = absl::Now();
  // The router must have taken it out of rotation by its heartbeat deadline
  // (the last beat got through at most one beat before the link went down).
  // A request sent then fails fast with UNAVAILABLE instead of hanging on
  // the unreachable host until its own deadline. This wait is what the test
  // checks (the router's deadline), not a synchronisation: nothing to poll.
  absl::SleepFor(down_at + kHeartbeatDeadline + absl::Milliseconds(kHeartbeatMs) - absl::Now());
  const absl::Time sent = absl::Now();
  CommandResult failed = generate(10);
  const absl::Duration took = absl::Now() - sent;
  std::cerr << "netns_test: request sent " << (sent - down_at) << " after link down (heartbeat deadline "
            << kHeartbeatDeadline << ") answered in " << took << ": " << failed.output;
  EXPECT_NE(failed.exit_code, 0) << failed.output;
  EXPECT_TRUE(absl::StrContains(failed.output, "UNAVAILABLE")) << failed.output;
  EXPECT_TRUE(absl::StrContains(failed.output, "no healthy decode")) << failed.output;
  EXPECT_LT(took, absl::Seconds(3)) << "the failure was not prompt";

  // Back on the network: its heartbeats resume and it serves again.
  ASSERT_EQ(net.Link("decode", "up").exit_code, 0);
  CommandResult again;
  EXPECT_TRUE(PollUntil(
      [&] {
        again = generate(10);
        return again.exit_code == 0;
      },
      absl::Seconds(20), absl::Milliseconds(200)))
      << again.output;
}

}  // namespace
}  // namespace tandem
