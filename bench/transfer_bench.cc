// KV transfer throughput: TransferEngine::Write between two processes against
// ucx_perftest on the same transports, in one run (JSON on stdout).
//
//   build/bin/transfer_bench                       # 1, 4, 16 MiB; default + tcp
//   build/bin/transfer_bench --sizes-mib 4 --transports tcp --trials 5
//
// For each transport setting ("default": UCX's choice, shared memory on one
// host; "tcp": UCX_TLS=tcp) the benchmark re-executes itself as a sender with
// that UCX_TLS, and the sender starts (fork + exec) a receiver with the same
// environment. The receiver allocates its region with TransferEngine::Allocate
// (UCX-allocated memory, as ucx_perftest uses) and also registers ordinary
// heap memory (reported at the middle size only). The sender times Write calls
// of `--batch` blocks (WriteRequests) each, for kPut and kActiveMessage and
// each block size; a Write returns only after the receiver confirmed every
// byte. Like ucx_perftest, every request copies the same source block to the
// same remote block (--distinct-blocks spreads them), so that both measure the
// transport rather than the cache.
//
// Each point runs `--trials` times, alternating a Tandem trial with a
// ucx_perftest trial (server `ucx_perftest -p PORT`, client
// `ucx_perftest 127.0.0.1 -p PORT -t ucp_put_bw|ucp_am_bw -s SIZE -n N`, same
// UCX_TLS, same bytes), and keeps the best of each: the machine may be shared.
// ratio = tandem / perftest. GB/s are 1e9 bytes/s (ucx_perftest's MB/s are
// MiB/s and are converted).
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "transfer/pipe_messages.h"
#include "transfer/transfer_engine.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using tandem::transfer::MemoryKind;
using tandem::transfer::ReceiveMessage;
using tandem::transfer::RegisteredRegion;
using tandem::transfer::RemoteRegion;
using tandem::transfer::SendMessage;
using tandem::transfer::TransferEngine;
using tandem::transfer::TransferOptions;
using tandem::transfer::WriteOp;
using tandem::transfer::WriteRequest;

constexpr size_t kMiB = 1 << 20;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---------------------------------------------------------------------------
// Processes and pipes.

// A child process with its stdout (and, for our own children, fds 3 and 4)
// connected to pipes.
struct Process {
  pid_t pid = -1;
  int out = -1;         // its stdout
  int from_child = -1;  // its fd 3
  int to_child = -1;    // its fd 4

  ~Process() { Kill(); }
  void Kill() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    for (int* fd : {&out, &from_child, &to_child}) {
      if (*fd >= 0) close(*fd);
      *fd = -1;
    }
  }
  // Waits for exit until `deadline`, then kills. Returns the exit status.
  int Wait(absl::Time deadline) {
    int status = -1;
    while (pid > 0) {
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      if (absl::Now() >= deadline) {
        Kill();
        return -1;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return status;
  }
  // Reads stdout until EOF or `deadline`.
  std::string ReadOutput(absl::Time deadline) {
    std::string all;
    char buf[4096];
    while (out >= 0) {
      pollfd pfd{out, POLLIN, 0};
      int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      if (poll(&pfd, 1, ms) <= 0) break;
      ssize_t r = ::read(out, buf, sizeof(buf));
      if (r <= 0) break;
      all.append(buf, r);
    }
    return all;
  }
};

// Spawns `argv` with UCX_TLS set to `tls` (unset when empty). `with_fds`
// connects pipes to the child's fds 3 and 4; `capture_stdout` its stdout.
std::unique_ptr<Process> Spawn(const std::vector<std::string>& argv, const std::string& tls, bool with_fds,
                               bool capture_stdout, bool quiet_stderr = false) {
  auto proc = std::make_unique<Process>();
  int up[2] = {-1, -1}, down[2] = {-1, -1}, out[2] = {-1, -1};
  if (with_fds && (pipe(up) != 0 || pipe(down) != 0)) return nullptr;
  if (capture_stdout && pipe(out) != 0) return nullptr;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (capture_stdout) posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  if (quiet_stderr) posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  if (with_fds) {
    posix_spawn_file_actions_adddup2(&actions, up[1], 3);
    posix_spawn_file_actions_adddup2(&actions, down[0], 4);
  }
  posix_spawn_file_actions_addclosefrom_np(&actions, with_fds ? 5 : 3);

  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "UCX_TLS=", 8) != 0) env.emplace_back(*e);
  }
  if (!tls.empty()) env.push_back("UCX_TLS=" + tls);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  int rc = posix_spawnp(&proc->pid, cargv[0], &actions, nullptr, cargv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (with_fds) {
    close(up[1]);
    close(down[0]);
    proc->from_child = up[0];
    proc->to_child = down[1];
  }
  if (capture_stdout) {
    close(out[1]);
    proc->out = out[0];
  }
  if (rc != 0) {
    proc->pid = -1;
    return nullptr;
  }
  return proc;
}

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : "/proc/self/exe";
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 13337;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// ---------------------------------------------------------------------------
// Byte budgets: the same bytes for Tandem and ucx_perftest at each point.

size_t BytesPerPoint(const std::string& transport, WriteOp op, size_t budget_mib) {
  // Puts over TCP are emulated by UCX 1.13 at well under 0.1 GB/s.
  if (transport == "tcp" && op == WriteOp::kPut) return std::max<size_t>(budget_mib / 32, 16) * kMiB;
  if (transport == "tcp") return std::max<size_t>(budget_mib / 2, 32) * kMiB;
  return budget_mib * kMiB;
}

// ---------------------------------------------------------------------------
// ucx_perftest.

std::optional<double> ParsePerftestGbps(const std::string& output) {
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Final:", 0) != 0) continue;
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    // Final: iters p50 avg overall | bw-avg bw-overall (MiB/s) | msgrate-avg msgrate-overall
    double mibps = 0;
    if (fields.size() >= 7 && absl::SimpleAtod(fields[6], &mibps)) return mibps * kMiB / 1e9;
  }
  return std::nullopt;
}

std::optional<double> RunPerftest(const std::string& transport, WriteOp op, size_t size, size_t total_bytes) {
  std::string tls = transport == "default" ? "" : transport;
  long iters = std::max<long>(2, static_cast<long>(total_bytes / size));
  long warmup = std::max<long>(1, iters / 10);
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::string port = std::to_string(FreePort());
    std::unique_ptr<Process> server = Spawn({"ucx_perftest", "-p", port}, tls, false,
                                            /*capture_stdout=*/true, /*quiet_stderr=*/true);
    if (server == nullptr) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(150 * (attempt + 1)));
    std::unique_ptr<Process> client = Spawn(
        {"ucx_perftest", "127.0.0.1", "-p", port, "-t", op == WriteOp::kPut ? "ucp_put_bw" : "ucp_am_bw",
         "-s", std::to_string(size), "-n", std::to_string(iters), "-w", std::to_string(warmup)},
        tls, false, /*capture_stdout=*/true, /*quiet_stderr=*/true);
    if (client == nullptr) return std::nullopt;
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    std::string out = client->ReadOutput(deadline);
    client->Wait(deadline);
    server->Wait(absl::Now() + absl::Seconds(2));
    std::optional<double> gbps = ParsePerftestGbps(out);
    if (gbps.has_value()) return gbps;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Receiver: allocates (UCX) and registers (heap) `region_mib`, sends both
// descriptors, waits until the sender closes the pipe.

int RunReceiver(size_t region_bytes) {
  TransferOptions options;
  options.name = "bench-receiver";
  auto engine = TransferEngine::Create(options);
  if (!engine.ok()) {
    std::cerr << "receiver: " << engine.status() << "\n";
    return 1;
  }
  auto allocated = (*engine)->Allocate(region_bytes);
  std::vector<uint8_t> heap(region_bytes, 0);
  auto registered = (*engine)->Register(heap.data(), heap.size(), MemoryKind::kHost);
  if (!allocated.ok() || !registered.ok()) {
    std::cerr << "receiver: " << allocated.status() << " " << registered.status() << "\n";
    return 1;
  }
  const std::string& address = (*engine)->worker_address();
  if (!SendMessage(
          3, tandem::transfer::EncodeRemoteRegion(RemoteRegion::Of(address, *allocated, "bench-receiver"))) ||
      !SendMessage(3, tandem::transfer::EncodeRemoteRegion(
                          RemoteRegion::Of(address, *registered, "bench-receiver")))) {
    return 1;
  }
  pollfd pfd{4, POLLIN, 0};
  poll(&pfd, 1, 600'000);  // the sender closes the pipe (or dies) when done
  return 0;
}

// ---------------------------------------------------------------------------
// Sender: times Writes for every op and size; prints one JSON object.

struct Point {
  double gbps = 0;
  size_t bytes = 0;
  int write_calls = 0;
  double seconds = 0;
};

// Times Write calls of `batch` blocks until `total_bytes` (at least one call)
// or `cap`; with `warm_up`, one untimed call first (connection, caches).
std::optional<Point> TimeWrites(TransferEngine& engine, const RemoteRegion& remote, WriteOp op, size_t block,
                                int batch, size_t total_bytes, absl::Duration cap, bool warm_up,
                                bool distinct_blocks) {
  // ucx_perftest sends one buffer to one remote buffer over and over; by
  // default so does this (every request of every Write: block 0 to block 0),
  // so that both measure the transport and not the cache. With
  // distinct_blocks, request b goes from source block b to remote block b.
  int blocks = distinct_blocks ? batch : 1;
  std::vector<uint8_t> source(block * blocks);
  for (size_t i = 0; i < source.size(); ++i) source[i] = static_cast<uint8_t>(i * 131 + 7);
  auto one_write = [&]() -> bool {
    std::vector<WriteRequest> writes;
    for (int b = 0; b < batch; ++b) {
      size_t i = b % blocks;
      writes.push_back({source.data() + i * block, i * block, block});
    }
    absl::Status s = engine.Write(remote, writes, absl::Now() + absl::Seconds(30), op);
    if (!s.ok()) std::cerr << "sender: " << s << "\n";
    return s.ok();
  };
  if (warm_up && !one_write()) return std::nullopt;
  Point p;
  auto start = Clock::now();
  absl::Time stop = absl::Now() + cap;
  while (p.bytes < total_bytes || p.write_calls < 1) {
    if (!one_write()) return std::nullopt;
    p.bytes += block * batch;
    ++p.write_calls;
    if (absl::Now() >= stop) break;
  }
  p.seconds = Seconds(Clock::now() - start);
  p.gbps = p.bytes / p.seconds / 1e9;
  return p;
}

int RunSender(const std::string& transport, const std::vector<size_t>& sizes, int batch, size_t budget_mib,
              double cap_s, int trials, bool perftest, bool distinct) {
  size_t region_bytes = *std::max_element(sizes.begin(), sizes.end()) * batch;
  std::unique_ptr<Process> receiver =
      Spawn({SelfExe(), "--role", "receiver", "--region-bytes", std::to_string(region_bytes)},
            transport == "default" ? "" : transport, /*with_fds=*/true, /*capture_stdout=*/false);
  if (receiver == nullptr) return 1;
  std::string allocated_enc, registered_enc;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  if (!ReceiveMessage(receiver->from_child, allocated_enc, deadline) ||
      !ReceiveMessage(receiver->from_child, registered_enc, deadline)) {
    std::cerr << "sender: no descriptors from the receiver\n";
    return 1;
  }
  auto allocated = tandem::transfer::DecodeRemoteRegion(allocated_enc);
  auto registered = tandem::transfer::DecodeRemoteRegion(registered_enc);
  TransferOptions options;
  options.name = "bench-sender";
  auto engine = TransferEngine::Create(options);
  if (!allocated.ok() || !registered.ok() || !engine.ok()) {
    std::cerr << "sender: setup failed: " << engine.status() << "\n";
    return 1;
  }
  json out;
  out["transport"] = transport;
  auto tls = (*engine)->DataTransports(*allocated);
  out["data_transports"] = tls.ok() ? *tls : tls.status().ToString();
  auto auto_allocated = (*engine)->ChooseOp(*allocated);
  auto auto_registered = (*engine)->ChooseOp(*registered);
  out["auto_op_allocated_memory"] = auto_allocated.ok() ? std::string(WriteOpName(*auto_allocated)) : "error";
  out["auto_op_registered_memory"] =
      auto_registered.ok() ? std::string(WriteOpName(*auto_registered)) : "error";
  json points = json::array();
  for (const char* memory : {"allocated", "registered"}) {
    const RemoteRegion& remote = std::string(memory) == "allocated" ? *allocated : *registered;
    for (WriteOp op : {WriteOp::kPut, WriteOp::kActiveMessage}) {
      for (size_t size : sizes) {
        // Heap-registered memory only at one size: it shows why kAuto avoids
        // puts into it; the main table is UCX-allocated memory.
        if (std::string(memory) == "registered" && size != sizes[sizes.size() / 2]) continue;
        bool allocated_memory = std::string(memory) == "allocated";
        size_t total = BytesPerPoint(transport, op, budget_mib) / trials;
        if (!allocated_memory) total /= 4;
        json j;
        j["memory"] = memory;
        j["op"] = std::string(WriteOpName(op));
        j["size_bytes"] = size;
        // Trials alternate Tandem and ucx_perftest so that both see the same
        // machine (this VM is shared); the best of each is reported.
        std::optional<Point> best;
        std::optional<double> best_perftest;
        bool failed = false;
        for (int t = 0; t < trials && !failed; ++t) {
          std::optional<Point> p = TimeWrites(**engine, remote, op, size, batch, total, absl::Seconds(cap_s),
                                              /*warm_up=*/t == 0, distinct);
          if (!p.has_value()) failed = true;
          if (p.has_value() && (!best.has_value() || p->gbps > best->gbps)) best = p;
          if (perftest && allocated_memory) {
            std::optional<double> pt = RunPerftest(transport, op, size, total);
            if (pt.has_value() && (!best_perftest.has_value() || *pt > *best_perftest)) {
              best_perftest = pt;
            }
          }
        }
        if (best.has_value() && !failed) {
          j["tandem_gbps"] = best->gbps;
          j["bytes_per_trial"] = best->bytes;
          j["ms_per_write"] = best->seconds * 1e3 / best->write_calls;
        } else {
          j["error"] = "write failed";
        }
        if (best_perftest.has_value()) {
          j["perftest_gbps"] = *best_perftest;
          if (best.has_value()) j["ratio"] = best->gbps / *best_perftest;
        }
        points.push_back(j);
      }
    }
  }
  out["points"] = points;
  std::cout << out.dump() << std::endl;
  engine->reset();
  receiver->Kill();
  return 0;
}

// ---------------------------------------------------------------------------

std::vector<size_t> ParseSizes(const std::string& list) {
  std::vector<size_t> sizes;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    double mib = 0;
    if (absl::SimpleAtod(s, &mib) && mib > 0) sizes.push_back(static_cast<size_t>(mib * kMiB));
  }
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"KV transfer throughput (TransferEngine::Write) against ucx_perftest"};
  std::string role = "main";
  std::string sizes_mib = "1,4,16";
  std::string transports = "default,tcp";
  int batch = 8;
  size_t budget_mib = 512;
  double cap_s = 2.0;
  bool perftest = true;
  int trials = 5;
  bool distinct = false;
  size_t region_bytes = 0;
  std::string transport_arg = "default";
  app.add_option("--sizes-mib", sizes_mib, "Block sizes in MiB, comma-separated")->capture_default_str();
  app.add_option("--transports", transports,
                 "Transport settings: 'default' (UCX's choice) and/or UCX_TLS values")
      ->capture_default_str();
  app.add_option("--batch", batch, "Blocks (WriteRequests) per Write call")->capture_default_str();
  app.add_option("--budget-mib", budget_mib, "Bytes per point over shared memory (TCP: 1/2; TCP puts: 1/16)")
      ->capture_default_str();
  app.add_option("--max-seconds-per-point", cap_s, "Stop a Tandem point after this long")
      ->capture_default_str();
  app.add_flag("--perftest,!--no-perftest", perftest, "Run ucx_perftest alongside (default)");
  app.add_option("--trials", trials, "Trials per point (Tandem and perftest alternate); best kept")
      ->capture_default_str();
  app.add_flag("--distinct-blocks", distinct,
               "Each request of a Write uses its own source and remote block (working set "
               "batch x size) instead of ucx_perftest's one buffer pair");
  app.add_option("--role", role, "Internal: main, sender or receiver");
  app.add_option("--region-bytes", region_bytes, "Internal (receiver)");
  app.add_option("--transport", transport_arg, "Internal (sender)");
  CLI11_PARSE(app, argc, argv);

  std::vector<size_t> sizes = ParseSizes(sizes_mib);
  if (sizes.empty() || batch < 1 || trials < 1) {
    std::cerr << "need sizes and a positive batch\n";
    return 2;
  }
  if (role == "receiver") return RunReceiver(region_bytes);
  if (role == "sender") {
    return RunSender(transport_arg, sizes, batch, budget_mib, cap_s, trials, perftest, distinct);
  }

  auto start = Clock::now();
  json results = json::array();
  json settings = json::array();
  for (absl::string_view t : absl::StrSplit(transports, ',', absl::SkipEmpty())) {
    std::string transport(t);
    std::unique_ptr<Process> sender =
        Spawn({SelfExe(), "--role", "sender", "--transport", transport, "--sizes-mib", sizes_mib, "--batch",
               std::to_string(batch), "--budget-mib", std::to_string(budget_mib), "--max-seconds-per-point",
               std::to_string(cap_s), "--trials", std::to_string(trials),
               perftest ? "--perftest" : "--no-perftest", distinct ? "--distinct-blocks" : "--perftest"},
              transport == "default" ? "" : transport, false, /*capture_stdout=*/true);
    if (sender == nullptr) return 1;
    absl::Time deadline = absl::Now() + absl::Seconds(300);
    std::string out = sender->ReadOutput(deadline);
    int rc = sender->Wait(deadline);
    json sender_json = json::parse(out, nullptr, /*allow_exceptions=*/false);
    if (rc != 0 || sender_json.is_discarded()) {
      std::cerr << "sender for " << transport << " failed (rc " << rc << "): " << out << "\n";
      return 1;
    }
    json setting = sender_json;
    setting.erase("points");
    settings.push_back(setting);
    for (const json& p : sender_json["points"]) {
      json r = p;
      r["transport"] = transport;
      results.push_back(r);
    }
  }
  json report;
  report["benchmark"] = "transfer_bench";
  report["unit"] = "GB/s = 1e9 bytes/s";
  report["batch_blocks_per_write"] = batch;
  report["distinct_blocks"] = distinct;
  report["settings"] = settings;
  report["results"] = results;
  report["elapsed_s"] = Seconds(Clock::now() - start);
  std::cout << report.dump(2) << std::endl;
  return 0;
}
