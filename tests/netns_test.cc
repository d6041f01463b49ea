// Multi-host on one machine: router, prefill and decode each in a network
// namespace of its own (scripts/netns_cluster.sh), talking over veth pairs
// and a bridge on their own addresses (10.77.0.0/24). Generates through the
// cluster, takes the decode host's link down and checks that the router
// takes it out of rotation within its heartbeat deadline — requests then fail
// cleanly with UNAVAILABLE, quickly, instead of hanging — and that the host
// serves again once its link is back. With two decode hosts: a host
// partitioned mid-stream loses no stream (they migrate), and delay and loss
// on a link (tc netem, where the kernel has it) lose none either.
//
// Needs root and `ip netns`; skips with a message otherwise. UCX runs with
// UCX_TLS=tcp here so that KV transfers use the namespaces' addresses (its
// shared-memory transports would cross namespaces on one kernel).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
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
  // `spec`: tc netem's words ("delay 20ms loss 2%") or "off".
  CommandResult Netem(const std::string& host, const std::string& spec) {
    return Shell(absl::StrCat(kScript, " netem ", prefix_, " ", host, " '", spec, "'"));
  }
  // `spec`: a whole root qdisc ("tbf rate 2mbit burst 16kb latency 200ms") or "off".
  CommandResult Qdisc(const std::string& host, const std::string& spec) {
    return Shell(absl::StrCat(kScript, " qdisc ", prefix_, " ", host, " '", spec, "'"));
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

// A cluster with two decode hosts, for the faults that meet streams: a
// router, a prefill host and decode hosts "decode" and "decode2".
class TwoDecodeHosts {
 public:
  explicit TwoDecodeHosts(Namespaces* net) : net_(net) {}

  // Starts the processes; false (with a test failure) if one is not ready.
  bool Start() {
    router_ = std::make_unique<Subprocess>(
        net_->Tandem("router", {"router", "--host", "10.77.0.1", "--port", "50051", "--heartbeat-ms",
                                absl::StrCat(kHeartbeatMs), "--heartbeat-misses", absl::StrCat(kMisses)}));
    if (!router_->ReadLine(absl::Now() + absl::Seconds(60)).has_value()) {
      ADD_FAILURE() << "router not ready";
      return false;
    }
    workers_.push_back(Worker("prefill", "prefill", "10.77.0.2"));
    workers_.push_back(Worker("decode", "decode", "10.77.0.3"));
    workers_.push_back(Worker("decode2", "decode", "10.77.0.4"));
    for (const std::unique_ptr<Subprocess>& w : workers_) {
      if (!w->ReadLine(absl::Now() + absl::Seconds(60)).has_value()) {
        ADD_FAILURE() << "worker not ready";
        return false;
      }
    }
    return true;
  }

  // kStreams concurrent `tandem generate --remote --json` clients on the
  // router host (greedy, 1,000 tokens each, distinct prompts); `during`
  // runs once `fault_after` passed since they started. Returns each
  // client's exit code and JSON line.
  std::vector<CommandResult> Streams(absl::Duration fault_after = absl::InfiniteDuration(),
                                     const std::function<void()>& during = nullptr) {
    std::vector<std::unique_ptr<Subprocess>> clients;
    for (int i = 0; i < kStreams; ++i) {
      clients.push_back(std::make_unique<Subprocess>(net_->Tandem(
          "router", {"generate", "--remote", kRouter, "--prompt", absl::StrCat("Story number ", i, ": once"),
                     "--max-tokens", "1000", "--json", "--timeout-s", "60"})));
    }
    if (during) {
      // The fault's moment, measured from the streams' start: a point in
      // their decode (the caller passes a fraction of an undisturbed run).
      absl::SleepFor(fault_after);
      during();
    }
    std::vector<CommandResult> out;
    for (std::unique_ptr<Subprocess>& c : clients) {
      CommandResult r;
      std::optional<std::string> line = c->ReadLine(absl::Now() + absl::Seconds(90));
      r.output = line.value_or("");
      std::optional<int> code = c->Wait(absl::Now() + absl::Seconds(30));
      r.exit_code = code.value_or(-1);
      out.push_back(std::move(r));
    }
    return out;
  }

  static constexpr int kStreams = 4;
  static constexpr char kRouter[] = "10.77.0.1:50051";

 private:
  std::unique_ptr<Subprocess> Worker(const std::string& host, const std::string& role,
                                     const std::string& address) {
    return std::make_unique<Subprocess>(
        net_->Tandem(host, {role, "--router", kRouter, "--host", address, "--port", "50061", "--threads", "1",
                            "--kv-cache-mb", "32", "--worker-id", host}));
  }

  Namespaces* const net_;
  std::unique_ptr<Subprocess> router_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
};

// Issue #17 item 4: a decode host partitioned from the network while streams
// run on it. Its streams move to the other decode host (live migration) and
// complete with the text of an undisturbed run; none fails or hangs. Healed,
// the host rejoins the rotation.
TEST(NetnsTest, PartitionedDecodeHostsStreamsMigrateAndTheHostRejoinsWhenHealed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for ip netns";
  if (Shell("command -v ip").exit_code != 0) GTEST_SKIP() << "iproute2 (ip) not installed";
  Namespaces net(absl::StrCat("tnp", getpid()));
  CommandResult up = net.Up();
  if (up.exit_code != 0) GTEST_SKIP() << "cannot build network namespaces here: " << up.output;
  TwoDecodeHosts cluster(&net);
  ASSERT_TRUE(cluster.Start());

  const absl::Time start = absl::Now();
  const std::vector<CommandResult> undisturbed = cluster.Streams();
  const absl::Duration took = absl::Now() - start;
  for (const CommandResult& r : undisturbed) ASSERT_EQ(r.exit_code, 0) << r.output;

  // A third of the way into the streams, the first decode host loses its
  // link (the bridge side: the host itself sees nothing).
  absl::Time down_at;
  const std::vector<CommandResult> disturbed = cluster.Streams(took / 3, [&] {
    ASSERT_EQ(net.Link("decode", "down").exit_code, 0);
    down_at = absl::Now();
  });
  const absl::Duration ended_after = absl::Now() - down_at;
  int migrated = 0;
  for (int i = 0; i < TwoDecodeHosts::kStreams; ++i) {
    ASSERT_EQ(disturbed[i].exit_code, 0) << "stream " << i << ": " << disturbed[i].output;
    const nlohmann::json got = nlohmann::json::parse(disturbed[i].output);
    const nlohmann::json want = nlohmann::json::parse(undisturbed[i].output);
    EXPECT_EQ(got["generated_token_ids"], want["generated_token_ids"]) << "stream " << i;
    migrated += got.value("migrations", 0) > 0 ? 1 : 0;
    if (got.value("migrations", 0) > 0) {
      EXPECT_EQ(got.value("decode_worker", ""), "decode2");
    }
  }
  std::cerr << "netns_test: partition " << took / 3 << " into an undisturbed run of " << took << ": "
            << migrated << " of " << TwoDecodeHosts::kStreams << " streams migrated; all ended "
            << ended_after << " after the link went down\n";
  EXPECT_GE(migrated, 1) << "no stream was on the partitioned host";

  // Healed: its heartbeats resume and it re-registers. To see that it
  // serves, the other decode host is cut off: requests then succeed only
  // through the healed one.
  ASSERT_EQ(net.Link("decode", "up").exit_code, 0);
  const absl::Time healed = absl::Now();
  ASSERT_EQ(net.Link("decode2", "down").exit_code, 0);
  CommandResult served;
  EXPECT_TRUE(PollUntil(
      [&] {
        served = Shell(
            ShellJoin(net.Tandem("router", {"generate", "--remote", TwoDecodeHosts::kRouter, "--prompt",
                                            "Once", "--max-tokens", "4", "--json", "--timeout-s", "5"})));
        return served.exit_code == 0;
      },
      absl::Seconds(30), absl::Milliseconds(100)))
      << served.output;
  std::cerr << "netns_test: the healed host served alone " << absl::Now() - healed
            << " after its link came up\n";
}

// Delay and loss on a decode host's link (tc netem): streams slow down but
// none fails, and the result is the undisturbed run's. Skips where the
// kernel has no sch_netem (this project's CI VM has none).
TEST(NetnsTest, DelayAndLossOnADecodeHostsLinkLoseNoStream) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for ip netns";
  if (Shell("command -v ip && command -v tc").exit_code != 0)
    GTEST_SKIP() << "iproute2 (ip, tc) not installed";
  Namespaces net(absl::StrCat("tnq", getpid()));
  CommandResult up = net.Up();
  if (up.exit_code != 0) GTEST_SKIP() << "cannot build network namespaces here: " << up.output;
  CommandResult probe = net.Netem("decode", "delay 1ms");
  if (probe.exit_code != 0)
    GTEST_SKIP() << "tc netem unavailable (kernel without sch_netem?): " << probe.output;
  ASSERT_EQ(net.Netem("decode", "off").exit_code, 0);
  TwoDecodeHosts cluster(&net);
  ASSERT_TRUE(cluster.Start());
  const std::vector<CommandResult> undisturbed = cluster.Streams();
  for (const CommandResult& r : undisturbed) ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(net.Netem("decode", "delay 20ms 5ms loss 2%").exit_code, 0);
  const absl::Time start = absl::Now();
  const std::vector<CommandResult> slowed = cluster.Streams();
  std::cerr << "netns_test: 4 streams with 20 ms +- 5 ms delay and 2% loss on a decode link took "
            << absl::Now() - start << "\n";
  for (int i = 0; i < TwoDecodeHosts::kStreams; ++i) {
    ASSERT_EQ(slowed[i].exit_code, 0) << "stream " << i << ": " << slowed[i].output;
    EXPECT_EQ(nlohmann::json::parse(slowed[i].output)["generated_token_ids"],
              nlohmann::json::parse(undisturbed[i].output)["generated_token_ids"])
        << "stream " << i;
  }
}

// A throttled decode link (tc tbf: 256 kbit/s, 16 KiB bursts, up to 400 ms
// of queue), which kernels without sch_netem have: the streams on that host
// slow down (the KV transfer, the tokens, the heartbeats queue behind each
// other) but none fails and each equals the undisturbed run.
TEST(NetnsTest, ThrottledDecodeHostLinkLosesNoStream) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root for ip netns";
  if (Shell("command -v ip && command -v tc").exit_code != 0)
    GTEST_SKIP() << "iproute2 (ip, tc) not installed";
  Namespaces net(absl::StrCat("tnr", getpid()));
  CommandResult up = net.Up();
  if (up.exit_code != 0) GTEST_SKIP() << "cannot build network namespaces here: " << up.output;
  constexpr char kThrottle[] = "tbf rate 256kbit burst 16kb latency 400ms";
  CommandResult probe = net.Qdisc("decode", kThrottle);
  if (probe.exit_code != 0) GTEST_SKIP() << "tc tbf unavailable: " << probe.output;
  ASSERT_EQ(net.Qdisc("decode", "off").exit_code, 0);
  TwoDecodeHosts cluster(&net);
  ASSERT_TRUE(cluster.Start());
  absl::Time start = absl::Now();
  const std::vector<CommandResult> undisturbed = cluster.Streams();
  const absl::Duration clear = absl::Now() - start;
  for (const CommandResult& r : undisturbed) ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(net.Qdisc("decode", kThrottle).exit_code, 0);
  start = absl::Now();
  const std::vector<CommandResult> throttled = cluster.Streams();
  std::cerr << "netns_test: 4 streams took " << absl::Now() - start << " with the decode link at "
            << kThrottle << " (" << clear << " unthrottled)\n";
  for (int i = 0; i < TwoDecodeHosts::kStreams; ++i) {
    ASSERT_EQ(throttled[i].exit_code, 0) << "stream " << i << ": " << throttled[i].output;
    EXPECT_EQ(nlohmann::json::parse(throttled[i].output)["generated_token_ids"],
              nlohmann::json::parse(undisturbed[i].output)["generated_token_ids"])
        << "stream " << i;
  }
}

}  // namespace
}  // namespace tandem
