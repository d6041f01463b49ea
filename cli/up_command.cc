#include "cli/up_command.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/config_merge.h"
#include "common/status_macros.h"
#include "kernels/backend_factory.h"

namespace tandem::cli {

void RegisterUp(CLI::App* cmd, UpFlags* f) {
  cmd->add_option("--model", f->model, "Model every process serves: a GGUF path or synthetic:NAME")
      ->capture_default_str();
  cmd->add_option("--prefill", f->prefill, "Prefill workers (0: decode workers prefill too)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--decode", f->decode, "Decode workers")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--port", f->port, "Router gRPC port; 0 picks a free one (printed when ready)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--host", f->host, "Address the router and workers listen on")->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU threads per worker; 0 = one per core")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--ready-timeout-s", f->ready_timeout_s,
                  "Give up (and stop everything, exit 1) if the cluster is not ready after this long")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--policy", f->policy, "Router policy: kv, round_robin, least_loaded, random (default: kv)")
      ->check(CLI::IsMember({"kv", "round_robin", "least_loaded", "random"}));
  // The router pass-through flags are refused here as `tandem router` would
  // refuse them (their structs' -1 means "not given", never a value).
  cmd->add_option("--slo-ttft-ms", f->slo_ttft_ms,
                  "Router's default TTFT target, ms (see tandem router --help)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--slo-tpot-ms", f->slo_tpot_ms, "Router's default TPOT target, ms")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-queued-prefills", f->max_queued_prefills,
                  "Router's bound on requests waiting for their first token, per prefill worker "
                  "(default 64; 0: none; see tandem router --help)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-inflight-prefills", f->max_inflight_prefills,
                  "Router's flow control: requests on workers per prefill worker before more wait at the "
                  "router in priority and fair-share order (default 4; 0: off; see tandem router --help)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option(
         "--decode-tpot-limit-ms", f->decode_tpot_limit_ms,
         "Router's decode admission: predicted TPOT limit, ms (default 20; 0: off; see tandem router --help)")
      ->check(CLI::Range(0.0, 3600000.0));
  cmd->add_option("--queue-ttl-ms", f->queue_ttl_ms,
                  "Router's queue TTL, ms (default 30000; 0: none; see tandem router --help)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--tenant-weight", f->tenant_weights,
                  "Router's tenant weights, NAME=W (repeatable; see tandem router --help)");
  cmd->add_option("--stream-stall-timeout-ms", f->stream_stall_timeout_ms,
                  "Router's progress deadline for a stream without tokens (default 2000; 0: off; see "
                  "tandem router --help)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option(
         "--http-port", f->http_port,
         "Router's OpenAI-compatible HTTP port; 0: any free port (the ready event's \"http\"); -1: off")
      ->check(CLI::Range(-1, 65535));
  cmd->add_option("--api-key", f->api_keys, "Bearer key for the router's HTTP /v1/* (repeatable)");
  cmd->add_option("--kv-cache-mb", f->kv_cache_mb, "KV cache per worker, MiB (default: the workers' default)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--block-size", f->block_size, "Tokens per KV block on every worker")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", f->device, "Every worker's kernel backend (see tandem prefill --help)")
      ->capture_default_str()
      ->envname("TANDEM_DEVICE")
      ->check(CLI::IsMember({"auto", "cpu", "cuda", "cpu-guarded"}));
  cmd->add_option("--kv-dtype", f->kv_dtype,
                  "KV element type of every worker and the store: f32, bf16, f16, or auto (bf16 when the "
                  "workers run on CUDA, else f32)")
      ->capture_default_str()
      ->envname("TANDEM_KV_DTYPE")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16"}));
  cmd->add_option("--max-running", f->max_running, "Most sequences in a worker's batch")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-dram-bytes", f->kv_dram_bytes, "Host-memory KV tier per worker, bytes (0: no tiers)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-ssd-bytes", f->kv_ssd_bytes,
                  "SSD KV tier budget per worker, bytes (0: workers' default)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option(
      "--kv-ssd-dir", f->kv_ssd_dir,
      "SSD KV tiers under this directory: worker i of a role gets DIR/<role>-<i> (needs --kv-dram-bytes)");
  cmd->add_option("--kv-prefetch", f->kv_prefetch, "Workers prefetch SSD blocks into DRAM ahead of admission")
      ->check(CLI::IsMember({"true", "false"}));
  cmd->add_flag("--store", f->store,
                "Also start a shared KV store (tandem store) registered with the router; every worker gets "
                "--kv-store (and --kv-dram-bytes 64 MiB unless given)");
  cmd->add_option("--store-dram-bytes", f->store_dram_bytes, "The store's DRAM tier, bytes (with --store)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option(
      "--store-ssd-dir", f->store_ssd_dir,
      "The store's SSD tier (RocksDB directory; with --store). Default: DIR/store under --kv-ssd-dir, "
      "else none");
  cmd->add_option("--config", f->config,
                  "Cluster configuration (tandem.v1.ClusterConfig JSON), passed to every process");
  cmd->add_option("--tls-cert", f->tls_cert, "PEM certificate for every process (turns on TLS)");
  cmd->add_option("--tls-key", f->tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle: mutual TLS between the processes");
  cmd->callback([cmd, f] {
    if (!f->config.empty()) {
      absl::StatusOr<tandem::v1::ClusterConfig> config = LoadClusterConfig(f->config);
      if (!config.ok()) {
        std::cerr << "tandem up: " << config.status().message() << "\n";
        throw CLI::RuntimeError(2);
      }
      const auto set = [cmd](const char* flag, bool present, const auto& value, auto* out) {
        if (present && cmd->count(flag) == 0) *out = value;
      };
      set("--host", config->router().has_host(), config->router().host(), &f->host);
      set("--port", config->router().has_port(), config->router().port(), &f->port);
      set("--model", config->router().has_model(), config->router().model(), &f->model);
      set("--threads", config->worker().has_threads(), config->worker().threads(), &f->threads);
      set("--block-size", config->worker().has_block_size(), config->worker().block_size(), &f->block_size);
      set("--kv-dram-bytes", config->worker().has_kv_dram_bytes(), config->worker().kv_dram_bytes(),
          &f->kv_dram_bytes);
    }
    const int code = RunUp(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

absl::StatusOr<nlohmann::ordered_json> ParseReadyLine(std::string_view line, std::string_view role,
                                                      pid_t pid) {
  nlohmann::ordered_json j =
      nlohmann::ordered_json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::NotFoundError("not a JSON object");
  if (j.contains("role")) {
    if (!j["role"].is_string() || j["role"].get<std::string>() != role) {
      return absl::InvalidArgumentError(
          absl::StrFormat("\"role\" is %s, expected \"%s\"", j["role"].dump(), std::string(role)));
    }
  } else {
    j["role"] = role;
  }
  if (!j.contains("grpc") || !j["grpc"].is_string() || j["grpc"].get<std::string>().empty()) {
    return absl::InvalidArgumentError("no \"grpc\" address (a non-empty string)");
  }
  if (j.contains("pid")) {
    if (!j["pid"].is_number_integer()) return absl::InvalidArgumentError("\"pid\" is not an integer");
  } else {
    j["pid"] = pid;
  }
  return j;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrFormat("status 0x%x", status);
}

std::string DialableAddress(std::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return std::string(address);
  const std::string_view host = address.substr(0, colon);
  const std::string_view port = address.substr(colon + 1);
  if (host.empty() || host == "0.0.0.0") return "127.0.0.1:" + std::string(port);
  if (host == "::" || host == "[::]") return "[::1]:" + std::string(port);
  return std::string(address);
}

// ---------------------------------------------------------------------------
// Supervisor

namespace {

// Longest line kept from a child; a longer one is cut and passed on as is.
constexpr size_t kMaxLineBytes = 64 << 10;
// How long Stop waits for a SIGKILLed child to be reaped before giving up.
constexpr absl::Duration kKillReapTimeout = absl::Seconds(5);

std::string ErrnoMessage(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

}  // namespace

struct Supervisor::Child {
  ChildSpec spec;
  pid_t pid = -1;
  int stdout_fd = -1;             // read end of the child's stdout; -1 after EOF
  std::string partial;            // bytes after the last newline
  std::deque<std::string> lines;  // complete lines not yet handled
  bool ready = false;
  bool reaped = false;
  int wait_status = 0;
  bool exit_handled = false;  // its death was reported (or returned as an error)

  std::string Describe() const { return absl::StrFormat("%s (pid %d)", spec.name, pid); }
};

Supervisor::Supervisor(const Options& options) : options_(options) {
  if (options_.out == nullptr) options_.out = &std::cout;
}

absl::StatusOr<std::unique_ptr<Supervisor>> Supervisor::Create(const Options& options) {
  std::unique_ptr<Supervisor> s(new Supervisor(options));
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  if (int err = pthread_sigmask(SIG_BLOCK, &set, &s->old_mask_); err != 0) {
    return absl::InternalError(absl::StrCat("pthread_sigmask: ", std::strerror(err)));
  }
  s->mask_saved_ = true;
  s->signal_fd_ = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (s->signal_fd_ < 0) return absl::InternalError(ErrnoMessage("signalfd"));
  s->dev_null_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (s->dev_null_ < 0) return absl::InternalError(ErrnoMessage("open /dev/null"));
  return s;
}

Supervisor::~Supervisor() {
  if (!live_pids().empty()) Stop();
  for (auto& c : children_) {
    if (c->stdout_fd >= 0) close(c->stdout_fd);
  }
  if (dev_null_ >= 0) close(dev_null_);
  if (signal_fd_ >= 0) {
    // Consume signals still pending, so that restoring the mask does not
    // deliver a SIGTERM we already acted on.
    signalfd_siginfo info;
    while (read(signal_fd_, &info, sizeof(info)) == sizeof(info)) {
    }
    close(signal_fd_);
  }
  if (mask_saved_) pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

std::vector<pid_t> Supervisor::live_pids() const {
  std::vector<pid_t> pids;
  for (const auto& c : children_) {
    if (!c->reaped) pids.push_back(c->pid);
  }
  return pids;
}

void Supervisor::PrintLine(const nlohmann::ordered_json& j) {
  *options_.out << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n"
                << std::flush;
}

absl::Status Supervisor::Spawn(const ChildSpec& spec) {
  if (spec.argv.empty()) return absl::InvalidArgumentError(absl::StrCat(spec.name, ": empty argv"));
  // Everything the child needs is prepared before fork: between fork and exec
  // only async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (const std::string& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::string exec_failed =
      absl::StrCat(options_.log_prefix, ": ", spec.name, ": cannot execute ", spec.executable, "\n");
  sigset_t empty_mask;
  sigemptyset(&empty_mask);
  struct sigaction default_action = {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(ErrnoMessage("pipe2"));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const std::string message = ErrnoMessage("fork");
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrCat(spec.name, ": ", message));
  }
  if (pid == 0) {
    // Child. Die with the parent; if it is already gone (the race between
    // fork and prctl), leave now.
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(127);
    if (dup2(fds[1], STDOUT_FILENO) < 0 || dup2(dev_null_, STDIN_FILENO) < 0) _exit(127);
    // dup2 clears close-on-exec on the new descriptors; everything else of
    // ours (pipe ends, signalfd, other children's pipes) closes on exec.
    for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE}) sigaction(sig, &default_action, nullptr);
    sigprocmask(SIG_SETMASK, &empty_mask, nullptr);
    execv(spec.executable.c_str(), argv.data());
    (void)!write(STDERR_FILENO, exec_failed.data(), exec_failed.size());
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  auto child = std::make_unique<Child>();
  child->spec = spec;
  child->pid = pid;
  child->stdout_fd = fds[0];
  std::cerr << options_.log_prefix << ": started " << child->Describe() << ": "
            << absl::StrJoin(spec.argv, " ") << "\n";
  children_.push_back(std::move(child));
  return absl::OkStatus();
}

void Supervisor::ReadOutput(Child& c) {
  char buf[4096];
  while (c.stdout_fd >= 0) {
    const ssize_t n = read(c.stdout_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {  // EOF (or an error, treated alike)
      if (!c.partial.empty()) c.lines.push_back(std::move(c.partial));
      c.partial.clear();
      close(c.stdout_fd);
      c.stdout_fd = -1;
      return;
    }
    c.partial.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = c.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
      c.lines.push_back(c.partial.substr(start, nl - start));
    }
    c.partial.erase(0, start);
    if (c.partial.size() > kMaxLineBytes) {
      c.lines.push_back(std::move(c.partial));
      c.partial.clear();
    }
  }
}

void Supervisor::ReapExited() {
  for (auto& c : children_) {
    if (c->reaped) continue;
    int status = 0;
    pid_t r;
    do {
      r = waitpid(c->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == c->pid) {
      c->reaped = true;
      c->wait_status = status;
      // Whatever it wrote before dying is in the pipe already.
      ReadOutput(*c);
    } else if (r < 0) {  // ECHILD: someone else reaped it; nothing to wait for
      c->reaped = true;
      c->wait_status = 0;
      std::cerr << options_.log_prefix << ": " << c->Describe() << ": waitpid: " << std::strerror(errno)
                << "\n";
    }
  }
}

bool Supervisor::PollOnce(absl::Time deadline) {
  std::vector<pollfd> fds;
  std::vector<Child*> owners;
  fds.push_back({.fd = signal_fd_, .events = POLLIN, .revents = 0});
  owners.push_back(nullptr);
  for (auto& c : children_) {
    if (c->stdout_fd < 0) continue;
    fds.push_back({.fd = c->stdout_fd, .events = POLLIN, .revents = 0});
    owners.push_back(c.get());
  }
  int timeout_ms = -1;
  if (deadline != absl::InfiniteFuture()) {
    const absl::Duration left = std::max(deadline - absl::Now(), absl::ZeroDuration());
    timeout_ms = static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))), INT_MAX));
  }
  const int n = poll(fds.data(), fds.size(), timeout_ms);
  if (n <= 0) return false;  // timeout or EINTR: the caller re-checks its state
  for (size_t i = 1; i < fds.size(); ++i) {
    if (fds[i].revents != 0) ReadOutput(*owners[i]);
  }
  bool stop = false;
  if (fds[0].revents != 0) {
    signalfd_siginfo info;
    bool child_changed = false;
    while (read(signal_fd_, &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGCHLD) {
        child_changed = true;
      } else {
        stop = true;
        ++stop_signals_;
        std::cerr << options_.log_prefix << ": got " << strsignal(static_cast<int>(info.ssi_signo)) << "\n";
      }
    }
    if (child_changed) ReapExited();
  }
  return stop;
}

void Supervisor::ForwardStrayLines(Child& c) {
  while (!c.lines.empty()) {
    std::cerr << options_.log_prefix << ": " << c.Describe() << " stdout: " << c.lines.front() << "\n";
    c.lines.pop_front();
  }
}

absl::StatusOr<std::vector<nlohmann::ordered_json>> Supervisor::StartAndWaitReady(
    const std::vector<ChildSpec>& specs, absl::Time deadline) {
  const size_t first = children_.size();
  for (const ChildSpec& spec : specs) TANDEM_RETURN_IF_ERROR(Spawn(spec));
  std::vector<nlohmann::ordered_json> ready_lines(specs.size());
  while (true) {
    size_t not_ready = 0;
    for (size_t i = 0; i < children_.size(); ++i) {
      Child& c = *children_[i];
      if (i < first || c.ready) {
        ForwardStrayLines(c);
        continue;
      }
      while (!c.ready && !c.lines.empty()) {
        const std::string line = std::move(c.lines.front());
        c.lines.pop_front();
        absl::StatusOr<nlohmann::ordered_json> j = ParseReadyLine(line, c.spec.role, c.pid);
        if (absl::IsNotFound(j.status())) {
          std::cerr << options_.log_prefix << ": " << c.Describe() << " stdout (not a ready line): " << line
                    << "\n";
        } else if (!j.ok()) {
          return absl::InvalidArgumentError(absl::StrFormat("%s printed a bad ready line (%s): %s",
                                                            c.Describe(), j.status().message(), line));
        } else {
          c.ready = true;
          PrintLine(*j);
          ready_lines[i - first] = *std::move(j);
        }
      }
      if (c.ready) {
        ForwardStrayLines(c);
      } else {
        ++not_ready;
      }
    }
    // Any death while the cluster starts is fatal, whether the child was
    // ready or not.
    for (auto& c : children_) {
      if (c->reaped && !c->exit_handled) {
        c->exit_handled = true;
        return absl::UnavailableError(
            absl::StrFormat("%s exited (%s) %s", c->Describe(), DescribeWaitStatus(c->wait_status),
                            c->ready ? "while the cluster was starting" : "before it was ready"));
      }
    }
    if (not_ready == 0) return ready_lines;
    if (stop_signals_ > 0) return absl::CancelledError("interrupted while starting");
    if (absl::Now() >= deadline) {
      std::vector<std::string> waiting;
      for (size_t i = first; i < children_.size(); ++i) {
        if (!children_[i]->ready) waiting.push_back(children_[i]->Describe());
      }
      return absl::DeadlineExceededError(
          absl::StrCat("no ready line yet from ", absl::StrJoin(waiting, ", ")));
    }
    PollOnce(deadline);
  }
}

absl::Status Supervisor::Watch(absl::Time deadline) {
  const int stop_signals_at_start = stop_signals_;
  while (true) {
    absl::Status essential_died;
    for (auto& c : children_) {
      ForwardStrayLines(*c);
      if (!c->reaped || c->exit_handled) continue;
      c->exit_handled = true;
      const std::string status = DescribeWaitStatus(c->wait_status);
      PrintLine({{"event", "exited"}, {"role", c->spec.role}, {"pid", c->pid}, {"status", status}});
      std::cerr << options_.log_prefix << ": " << c->Describe() << " exited (" << status << ")"
                << (c->spec.essential ? "; stopping the cluster" : "; not restarted, the rest keep serving")
                << "\n";
      if (c->spec.essential && essential_died.ok()) {
        essential_died = absl::UnavailableError(absl::StrFormat("%s exited (%s)", c->Describe(), status));
      }
    }
    if (!essential_died.ok()) return essential_died;
    if (stop_signals_ > stop_signals_at_start) return absl::OkStatus();
    if (absl::Now() >= deadline) return absl::DeadlineExceededError("watch deadline");
    // The server's main wait: until a signal, a child's output or its death.
    PollOnce(deadline);
  }
}

void Supervisor::Stop() {
  const int stop_signals_at_start = stop_signals_;
  for (auto& c : children_) {
    if (!c->reaped) kill(c->pid, SIGTERM);
  }
  const auto wait_all = [&](absl::Time deadline, bool stop_on_signal) {
    while (!live_pids().empty() && absl::Now() < deadline) {
      if (stop_on_signal && stop_signals_ > stop_signals_at_start) return;
      PollOnce(deadline);
    }
  };
  if (!live_pids().empty()) {
    std::cerr << options_.log_prefix << ": stopping " << live_pids().size() << " process(es)\n";
  }
  wait_all(absl::Now() + options_.stop_timeout, /*stop_on_signal=*/true);
  for (auto& c : children_) {
    if (c->reaped) continue;
    std::cerr << options_.log_prefix << ": " << c->Describe() << " still running; SIGKILL\n";
    kill(c->pid, SIGKILL);
  }
  wait_all(absl::Now() + kKillReapTimeout, /*stop_on_signal=*/false);
  for (auto& c : children_) {
    ForwardStrayLines(*c);
    if (!c->reaped) {
      std::cerr << options_.log_prefix << ": " << c->Describe() << " did not die after SIGKILL; giving up\n";
      continue;
    }
    if (c->exit_handled) continue;
    c->exit_handled = true;
    std::cerr << options_.log_prefix << ": " << c->Describe() << " exited ("
              << DescribeWaitStatus(c->wait_status) << ")\n";
  }
}

// ---------------------------------------------------------------------------
// tandem up

namespace {

std::string SelfPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "tandem";
  return std::string(buf, static_cast<size_t>(n));
}

// Exec this very binary through /proc/self/exe (immune to PATH and to cwd);
// argv[0] names it for ps.
constexpr const char* kSelfExe = "/proc/self/exe";

// Flags every child gets besides its own.
std::vector<std::string> CommonFlags(const UpFlags& f) {
  std::vector<std::string> common;
  for (const auto& [flag, value] : {std::pair{"--config", &f.config}, std::pair{"--tls-cert", &f.tls_cert},
                                    std::pair{"--tls-key", &f.tls_key}, std::pair{"--tls-ca", &f.tls_ca}}) {
    if (value->empty()) continue;
    common.push_back(flag);
    common.push_back(*value);
  }
  return common;
}

ChildSpec RouterSpec(const UpFlags& f, const std::string& self, const std::vector<std::string>& common) {
  ChildSpec router{
      .role = "router",
      .name = "router",
      .executable = kSelfExe,
      .argv = {self, "router", "--host", f.host, "--port", absl::StrCat(f.port), "--model", f.model},
      .essential = true};
  router.argv.insert(router.argv.end(), common.begin(), common.end());
  if (!f.policy.empty()) router.argv.insert(router.argv.end(), {"--policy", f.policy});
  if (f.slo_ttft_ms >= 0)
    router.argv.insert(router.argv.end(), {"--slo-ttft-ms", absl::StrCat(f.slo_ttft_ms)});
  if (f.slo_tpot_ms >= 0)
    router.argv.insert(router.argv.end(), {"--slo-tpot-ms", absl::StrCat(f.slo_tpot_ms)});
  if (f.max_queued_prefills >= 0)
    router.argv.insert(router.argv.end(), {"--max-queued-prefills", absl::StrCat(f.max_queued_prefills)});
  if (f.max_inflight_prefills >= 0) {
    router.argv.insert(router.argv.end(), {"--max-inflight-prefills", absl::StrCat(f.max_inflight_prefills)});
  }
  if (f.queue_ttl_ms >= 0)
    router.argv.insert(router.argv.end(), {"--queue-ttl-ms", absl::StrCat(f.queue_ttl_ms)});
  if (f.decode_tpot_limit_ms >= 0) {
    router.argv.insert(router.argv.end(), {"--decode-tpot-limit-ms", absl::StrCat(f.decode_tpot_limit_ms)});
  }
  for (const std::string& w : f.tenant_weights) router.argv.insert(router.argv.end(), {"--tenant-weight", w});
  if (f.stream_stall_timeout_ms >= 0) {
    router.argv.insert(router.argv.end(),
                       {"--stream-stall-timeout-ms", absl::StrCat(f.stream_stall_timeout_ms)});
  }
  if (f.http_port >= 0) router.argv.insert(router.argv.end(), {"--http-port", absl::StrCat(f.http_port)});
  for (const std::string& key : f.api_keys) router.argv.insert(router.argv.end(), {"--api-key", key});
  return router;
}

// --kv-dtype for every child: "auto" resolved here, once, as each worker
// would resolve it (kernels::ResolveKvDType), so the store agrees with them.
std::string ClusterKvDType(const UpFlags& f) {
  if (f.kv_dtype != "auto") return f.kv_dtype;
  const bool cuda = f.device == "cuda" || (f.device == "auto" && kernels::CudaDevicesPresent() > 0);
  return cuda ? "bf16" : "f32";
}

// The shared store (--store). Not essential: workers whose store is gone
// miss and compute.
ChildSpec StoreSpec(const UpFlags& f, const std::string& self, const std::string& router_address) {
  const std::string ssd_dir = !f.store_ssd_dir.empty() ? f.store_ssd_dir
                              : f.kv_ssd_dir.empty()   ? ""
                                                       : f.kv_ssd_dir + "/store";
  ChildSpec store{
      .role = "store",
      .name = "store",
      .executable = kSelfExe,
      .argv = {self, "store", "--router", router_address, "--model", f.model, "--host", f.host, "--port", "0",
               "--block-size", absl::StrCat(f.block_size > 0 ? f.block_size : 16), "--dram-bytes",
               absl::StrCat(f.store_dram_bytes), "--store-id", "store-0", "--kv-dtype", ClusterKvDType(f)}};
  if (!ssd_dir.empty()) store.argv.insert(store.argv.end(), {"--ssd-path", ssd_dir});
  // `tandem store` takes no --config: only the TLS flags of CommonFlags.
  for (const auto& [flag, value] : {std::pair{"--tls-cert", &f.tls_cert}, std::pair{"--tls-key", &f.tls_key},
                                    std::pair{"--tls-ca", &f.tls_ca}}) {
    if (!value->empty()) store.argv.insert(store.argv.end(), {flag, *value});
  }
  return store;
}

std::vector<ChildSpec> WorkerSpecs(const UpFlags& f, const std::string& self,
                                   const std::vector<std::string>& common, const std::string& router_address,
                                   const std::string& store_address) {
  const int64_t kv_dram_bytes =
      f.kv_dram_bytes > 0 || !f.store ? f.kv_dram_bytes : kDefaultStoreWorkerDramBytes;
  std::vector<ChildSpec> workers;
  for (const char* role : {"prefill", "decode"}) {
    const int count = std::string_view(role) == "prefill" ? f.prefill : f.decode;
    for (int i = 0; i < count; ++i) {
      workers.push_back({.role = role,
                         .name = absl::StrCat(role, " ", i),
                         .executable = kSelfExe,
                         .argv = {self, role, "--router", router_address, "--model", f.model, "--host",
                                  f.host, "--port", "0", "--threads", absl::StrCat(f.threads), "--device",
                                  f.device, "--kv-dtype", ClusterKvDType(f)}});
      std::vector<std::string>& argv = workers.back().argv;
      argv.insert(argv.end(), common.begin(), common.end());
      for (const auto& [flag, value] :
           {std::pair{"--kv-cache-mb", f.kv_cache_mb}, std::pair{"--block-size", f.block_size},
            std::pair{"--max-running", f.max_running}}) {
        if (value > 0) argv.insert(argv.end(), {flag, absl::StrCat(value)});
      }
      if (kv_dram_bytes > 0) argv.insert(argv.end(), {"--kv-dram-bytes", absl::StrCat(kv_dram_bytes)});
      if (f.kv_ssd_bytes > 0) argv.insert(argv.end(), {"--kv-ssd-bytes", absl::StrCat(f.kv_ssd_bytes)});
      if (!f.kv_ssd_dir.empty()) {
        argv.insert(argv.end(), {"--kv-ssd-path", absl::StrCat(f.kv_ssd_dir, "/", role, "-", i)});
      }
      if (!f.kv_prefetch.empty()) argv.insert(argv.end(), {"--kv-prefetch", f.kv_prefetch});
      if (!store_address.empty()) argv.insert(argv.end(), {"--kv-store", store_address});
    }
  }
  return workers;
}

// Creates --kv-ssd-dir and --store-ssd-dir (parents included) before any
// child starts, so a directory that does not exist yet is no failure and one
// that cannot be made is reported once, by name.
absl::Status CreateSsdDirs(const UpFlags& f) {
  for (const std::string& dir : {f.kv_ssd_dir, f.store ? f.store_ssd_dir : std::string()}) {
    if (dir.empty()) continue;
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (error)
      return absl::UnavailableError(absl::StrCat("cannot create directory ", dir, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

int RunUp(const UpFlags& f) {
  constexpr const char* kPrefix = "tandem up";
  auto supervisor = Supervisor::Create({.out = &std::cout, .log_prefix = kPrefix});
  if (!supervisor.ok()) {
    std::cerr << kPrefix << ": " << supervisor.status().message() << "\n";
    return 1;
  }
  Supervisor& sup = **supervisor;
  const std::string self = SelfPath();  // argv[0] of the children
  const absl::Time deadline = absl::Now() + absl::Seconds(f.ready_timeout_s);

  // Stops everything after a failure to start; the exit code.
  const auto fail = [&](const absl::Status& s) {
    if (absl::IsCancelled(s)) {
      std::cerr << kPrefix << ": interrupted while starting; stopping\n";
      sup.Stop();
      return 0;
    }
    std::cerr << kPrefix << ": " << s.message();
    if (absl::IsDeadlineExceeded(s)) std::cerr << " within --ready-timeout-s " << f.ready_timeout_s;
    std::cerr << "; stopping the cluster\n";
    sup.Stop();
    return 1;
  };

  if (absl::Status dirs = CreateSsdDirs(f); !dirs.ok()) return fail(dirs);
  const std::vector<std::string> common = CommonFlags(f);
  auto router_ready = sup.StartAndWaitReady({RouterSpec(f, self, common)}, deadline);
  if (!router_ready.ok()) return fail(router_ready.status());
  const std::string router_address = DialableAddress((*router_ready)[0]["grpc"].get<std::string>());

  // The store is ready once registered with the router; the workers need
  // its address.
  std::string store_address;
  if (f.store) {
    auto store_ready = sup.StartAndWaitReady({StoreSpec(f, self, router_address)}, deadline);
    if (!store_ready.ok()) return fail(store_ready.status());
    store_address = DialableAddress((*store_ready)[0]["grpc"].get<std::string>());
  }
  const std::vector<ChildSpec> workers = WorkerSpecs(f, self, common, router_address, store_address);
  auto workers_ready = sup.StartAndWaitReady(workers, deadline);
  if (!workers_ready.ok()) return fail(workers_ready.status());

  nlohmann::ordered_json ready;
  ready["event"] = "ready";
  ready["router"] = router_address;
  ready["http"] = (*router_ready)[0].value("http", "");
  ready["store"] = store_address;
  std::cout << ready.dump() << "\n" << std::flush;
  std::cerr << kPrefix << ": cluster ready: router at " << router_address << ", " << f.prefill
            << " prefill and " << f.decode << " decode worker(s)"
            << (store_address.empty() ? "" : absl::StrCat(", shared KV store at ", store_address))
            << "; SIGINT or SIGTERM stops it\n";

  const absl::Status watched = sup.Watch();
  if (!watched.ok()) std::cerr << kPrefix << ": " << watched.message() << "; stopping the cluster\n";
  sup.Stop();
  return watched.ok() ? 0 : 1;
}

}  // namespace tandem::cli
