// An asynchronous HTTP/1.1 server (Boost.Beast underneath, kept out of this
// header) for the router's OpenAI-compatible API and the workers' /metrics.
//
//   http::Server::Options options;
//   options.port = 8080;
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<http::Server> server, http::Server::Create(options));
//   server->Handle("GET", "/health", [](const http::Request&, std::shared_ptr<http::ResponseWriter> w) {
//     w->Send({.status = 200, .content_type = "text/plain", .body = "ok\n"});
//   });
//   server->Handle("POST", "/v1/stream", [](const http::Request& r, std::shared_ptr<http::ResponseWriter> w)
//   {
//     w->StartStream(200, "text/event-stream");
//     w->SetCancelCallback([] { /* client went away */ });
//     w->Write("data: hi\n\n");  // from any thread, never blocks
//     w->End();
//   });
//   TANDEM_RETURN_IF_ERROR(server->Start());
//   ...
//   server->Shutdown(absl::Now() + absl::Seconds(5));
//
// Threads: a fixed pool of `num_threads` I/O threads, started by Start and
// joined by Shutdown (or the destructor); connections cost memory, not
// threads. Handlers run on an I/O thread and must not block: they answer at
// once or keep the writer and answer later from any thread.
//
// Limits (each a 4xx/5xx answer, then the connection closes; the server
// stays up): a body over max_body_bytes is 413, headers over
// max_header_bytes are 431, a malformed request is 400, an unknown path 404,
// a known path with another method 405, a request not fully received within
// read_timeout is dropped (slowloris), connections over max_connections get
// 503. Keep-alive is honoured (HTTP/1.1 default, `Connection: close`).
//
// Thread safety: Handle before Start only; Start and Shutdown from one
// owner thread. ResponseWriter methods are thread-safe.
#ifndef TANDEM_HTTP_SERVER_H_
#define TANDEM_HTTP_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

// A complete request (the body is read whole before the handler runs).
struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path plus query
  std::string path;    // target without "?query"
  Headers headers;     // in the order received
  std::string body;
  // The first header named `name` (case-insensitive), if any.
  std::optional<std::string> Header(std::string_view name) const;
};

// A whole (non-streamed) response.
struct Response {
  int status = 200;
  std::string content_type = "application/json";
  Headers headers;  // extra headers (Content-Length/Type and Connection are added)
  std::string body;
};

namespace internal {
class Connection;
struct Core;
}  // namespace internal

// The handle a handler answers through. It may be kept and used from any
// thread; every call queues bytes for the connection's I/O strand and
// returns at once. Once the connection is gone, calls are ignored.
// A handler answers exactly once: either Send, or StartStream followed by
// Writes and one End.
class ResponseWriter {
 public:
  // Made by the server for each request (internal).
  ResponseWriter(std::shared_ptr<internal::Core> core, std::weak_ptr<internal::Connection> connection,
                 uint64_t sequence);
  ~ResponseWriter();

  // Sends a whole response.
  void Send(Response response);
  // Starts a chunked response (e.g. "text/event-stream", sent with
  // Cache-Control: no-cache).
  void StartStream(int status, std::string content_type, Headers headers = {});
  // Queues one chunk of a started stream; empty data is ignored.
  void Write(std::string data);
  // Ends a started stream.
  void End();

  // `callback` runs once, on an I/O thread, if the connection is lost (the
  // client disconnected, a write failed, or Shutdown's deadline passed)
  // before the response was completely written; at once (on the calling
  // thread) if that already happened. It must not block.
  void SetCancelCallback(std::function<void()> callback);
  // Whether the connection was lost before the response completed.
  bool cancelled() const;

  // Called by the connection (internal): the connection was lost, or the
  // response was completely written (the cancel callback is dropped).
  void NotifyLost();
  void NotifyComplete();

 private:
  void Post(std::function<void(internal::Connection&, uint64_t sequence)> fn);

  const std::shared_ptr<internal::Core> core_;
  const std::weak_ptr<internal::Connection> connection_;
  const uint64_t sequence_;  // the request's number on its connection
  mutable absl::Mutex mu_;
  bool lost_ ABSL_GUARDED_BY(mu_) = false;
  bool complete_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_cancel_ ABSL_GUARDED_BY(mu_);
};

using Handler = std::function<void(const Request& request, std::shared_ptr<ResponseWriter> writer)>;

class Server {
 public:
  struct Options {
    // Address to bind. Default: "127.0.0.1".
    std::string host = "127.0.0.1";
    // Port to bind; 0 picks a free one (see port()). Default: 0.
    int port = 0;
    // I/O threads. Default: 2.
    int num_threads = 2;
    // Largest request body; larger is 413. Default: 1 MiB.
    size_t max_body_bytes = 1 << 20;
    // Largest request line plus headers; larger is 431. Default: 16 KiB.
    size_t max_header_bytes = 16 << 10;
    // A request must arrive whole within this time of the connection
    // becoming ready for it (also bounds keep-alive idleness). Default: 30 s.
    absl::Duration read_timeout = absl::Seconds(30);
    // Open connections at most; more are answered 503 and closed.
    // Default: 10000.
    int max_connections = 10000;
    // Bytes a connection may have queued for a slow client before it is
    // dropped (its cancel callback runs). Default: 8 MiB.
    size_t max_queued_bytes = 8 << 20;
    // Body of the server's own error answers (400, 404, 405, 413, 431,
    // 503) given the status and a message. Default: plain text.
    std::function<Response(int status, std::string_view message)> error_response;
  };

  // Binds host:port (not yet serving; see Start).
  static absl::StatusOr<std::unique_ptr<Server>> Create(const Options& options);
  ~Server();  // Shutdown(now) if still running
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes `method` `path` (exact match, query ignored) to `handler`.
  // REQUIRES: before Start.
  void Handle(std::string method, std::string path, Handler handler);

  // Starts accepting and the I/O threads.
  absl::Status Start();

  // The bound port.
  int port() const { return port_; }

  // Open connections now.
  int connections() const;

  // Stops accepting, closes idle connections, lets responses in progress
  // finish until `deadline`, then closes the rest (their cancel callbacks
  // run) and joins the I/O threads. Idempotent.
  void Shutdown(absl::Time deadline);

 private:
  explicit Server(const Options& options);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace tandem::http

#endif  // TANDEM_HTTP_SERVER_H_
