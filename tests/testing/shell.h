// Runs a command line through /bin/sh and captures its output, for tests
// that drive command-line tools (openssl, helm, ip netns) or the tandem
// binary in one shot. For a long-running child, use subprocess.h.
//
//   CommandResult r = Shell(absl::StrCat(Quote(binary), " --version"));
//   EXPECT_EQ(r.exit_code, 0) << r.output;
//
// Thread safety: any thread (popen).
#ifndef TANDEM_TESTS_TESTING_SHELL_H_
#define TANDEM_TESTS_TESTING_SHELL_H_

#include <stdio.h>
#include <sys/wait.h>

#include <string>

namespace tandem::testing {

struct CommandResult {
  int exit_code = -1;  // -1: could not start, or killed by a signal
  std::string output;  // stdout and stderr together
};

// Runs `command` with /bin/sh -c and waits for it (no deadline of its own:
// put `timeout N` in front of a command that could hang).
inline CommandResult Shell(const std::string& command) {
  CommandResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// `s` single-quoted for /bin/sh.
inline std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_SHELL_H_
