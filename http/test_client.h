// A blocking HTTP/1.1 test client over a raw socket: it sends exactly the
// bytes a test gives (so tests can send malformed requests) and parses
// responses (Content-Length or chunked). Every read has a deadline.
// Test-only; header-only so tests of other folders can use it.
#ifndef TANDEM_HTTP_TEST_CLIENT_H_
#define TANDEM_HTTP_TEST_CLIENT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem::http::testing {

struct ParsedResponse {
  int status = 0;
  std::string head;  // status line and headers, lower-cased
  std::string body;  // de-chunked
  bool chunked = false;
};

class TestClient {
 public:
  // Connects to 127.0.0.1:port; ok() says whether it worked.
  explicit TestClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd_ >= 0 && connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~TestClient() { Close(); }
  TestClient(const TestClient&) = delete;
  TestClient& operator=(const TestClient&) = delete;

  bool ok() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads more bytes into the buffer; false on EOF, error or deadline.
  bool ReadMore(absl::Time deadline) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(ms)) <= 0) return false;
    char buf[16384];
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(n));
    return true;
  }

  // Reads until `needle` has arrived (searching everything received so far
  // and not yet consumed by ReadResponse).
  bool ReadUntil(const std::string& needle, absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (buffer_.find(needle) == std::string::npos) {
      if (!ReadMore(deadline)) return false;
    }
    return true;
  }

  // True if the server closes the connection (EOF or reset) within `timeout`.
  bool WaitClosed(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(ms)) <= 0) return false;
      char buf[4096];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return true;
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  // Reads one whole response; nullopt on EOF or timeout before it is whole.
  std::optional<ParsedResponse> ReadResponse(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    size_t head_end;
    while ((head_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!ReadMore(deadline)) return std::nullopt;
    }
    ParsedResponse r;
    r.head = absl::AsciiStrToLower(buffer_.substr(0, head_end + 2));
    if (r.head.size() < 12 || !absl::SimpleAtoi(r.head.substr(9, 3), &r.status)) return std::nullopt;
    size_t pos = head_end + 4;
    r.chunked = r.head.find("transfer-encoding: chunked") != std::string::npos;
    if (r.chunked) {
      for (;;) {
        size_t line_end;
        while ((line_end = buffer_.find("\r\n", pos)) == std::string::npos) {
          if (!ReadMore(deadline)) return std::nullopt;
        }
        const size_t size = std::strtoul(buffer_.substr(pos, line_end - pos).c_str(), nullptr, 16);
        const size_t data = line_end + 2;
        while (buffer_.size() < data + size + 2) {
          if (!ReadMore(deadline)) return std::nullopt;
        }
        r.body += buffer_.substr(data, size);
        pos = data + size + 2;
        if (size == 0) break;
      }
    } else {
      size_t length = 0;
      const size_t cl = r.head.find("content-length: ");
      if (cl != std::string::npos) length = std::strtoul(r.head.c_str() + cl + 16, nullptr, 10);
      while (buffer_.size() < pos + length) {
        if (!ReadMore(deadline)) return std::nullopt;
      }
      r.body = buffer_.substr(pos, length);
      pos += length;
    }
    buffer_.erase(0, pos);
    return r;
  }

 private:
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace tandem::http::testing

#endif  // TANDEM_HTTP_TEST_CLIENT_H_
