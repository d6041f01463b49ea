// Logging for Tandem's libraries and processes: glog 0.6 (Debian's
// libgoogle-glog-dev), with the levels INFO, WARNING, ERROR and FATAL.
//
//   #include "common/logging.h"
//   LOG(WARNING) << "metric '" << name << "' declared again; not exported";
//
//   int main(int argc, char** argv) {
//     tandem::InitLogging(argv[0]);  // once, before anything logs
//
// Libraries only log; a process's main calls InitLogging once. Everything
// goes to stderr, one line per message ("W1203 16:20:00.123456 4711
// metrics.cc:141] ..."); no log file is ever written. A binary that never
// calls InitLogging (a test) still logs to stderr.
//
// Thread safety: LOG may be used from any thread. glog's CHECK macros come
// with this header: use them only for broken invariants (STYLE.md); errors
// are absl::Status.
#ifndef TANDEM_COMMON_LOGGING_H_
#define TANDEM_COMMON_LOGGING_H_

#include <glog/logging.h>

#include "absl/strings/str_cat.h"

// Aborts with the file, line, condition and the message pieces (joined by
// absl::StrCat) when an invariant of the code itself is broken: misuse that
// no client input can reach (STYLE.md). Bad input is an absl::Status.
//
//   TANDEM_CHECK(refcount_[block] > 0, "Release of unreferenced block ", block);
#define TANDEM_CHECK(cond, ...) CHECK(cond) << ::absl::StrCat(__VA_ARGS__)

namespace tandem {

// Sends every log message to stderr, no files, and names the process
// `program_name` (kept, not copied: pass argv[0]). A second call does nothing.
void InitLogging(const char* program_name);

}  // namespace tandem

#endif  // TANDEM_COMMON_LOGGING_H_
