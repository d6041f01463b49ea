#include "transfer/pipe_messages.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "absl/time/clock.h"

namespace tandem::transfer {
namespace {

bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= w;
  }
  return true;
}

// Reads exactly n bytes, waiting at most until `deadline`.
bool ReadAll(int fd, void* data, size_t n, absl::Time deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    const int ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (poll(&pfd, 1, ms) <= 0) return false;
    const ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= r;
  }
  return true;
}

}  // namespace

bool SendMessage(int fd, const std::string& message) {
  const uint64_t n = message.size();
  return WriteAll(fd, &n, sizeof(n)) && WriteAll(fd, message.data(), message.size());
}

bool ReceiveMessage(int fd, std::string& message, absl::Time deadline) {
  uint64_t n = 0;
  if (!ReadAll(fd, &n, sizeof(n), deadline) || n > (1 << 20)) return false;
  message.resize(n);
  return ReadAll(fd, message.data(), n, deadline);
}

}  // namespace tandem::transfer
