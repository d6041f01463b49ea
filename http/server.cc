#include "http/server.h"

#include <deque>
#include <thread>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "boost/asio/bind_executor.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/core/tcp_stream.hpp"
#include "boost/beast/http/error.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/status.hpp"
#include "boost/beast/http/string_body.hpp"
#include "common/logging.h"

namespace tandem::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

namespace internal {

// What the server and its connections share. Writers hold it so that a
// writer used after Shutdown finds `stopped` and posts nothing.
struct Core : std::enable_shared_from_this<Core> {
  Server::Options options;
  std::map<std::pair<std::string, std::string>, Handler> routes;  // (method, path)
  std::map<std::string, int> paths;                               // path -> methods routed

  absl::Mutex mu;  // writers post under a reader lock; Shutdown flips `stopped`
  bool stopped ABSL_GUARDED_BY(mu) = false;

  absl::Mutex conn_mu;
  std::unordered_map<Connection*, std::weak_ptr<Connection>> connections ABSL_GUARDED_BY(conn_mu);
  bool draining ABSL_GUARDED_BY(conn_mu) = false;

  Response Error(int status, std::string_view message) const {
    if (options.error_response) return options.error_response(status, message);
    return Response{
        .status = status, .content_type = "text/plain; charset=utf-8", .body = std::string(message) + "\n"};
  }

  // Declared last so it is destroyed first, while the members above (which
  // connections destroyed with it touch) are still alive.
  net::io_context ioc;
};

namespace {

constexpr size_t kMonitorReadBytes = 4096;
constexpr size_t kMaxPipelinedBytes = 64 << 10;

std::string Head(int status, const std::string& content_type, const Headers& extra, bool chunked,
                 size_t content_length, bool keep_alive, bool stream) {
  std::string reason(bhttp::obsolete_reason(static_cast<bhttp::status>(status)));
  std::string out = absl::StrFormat("HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status, reason, content_type);
  if (chunked) {
    out += "Transfer-Encoding: chunked\r\n";
  } else if (!stream) {
    out += absl::StrFormat("Content-Length: %d\r\n", content_length);
  }
  if (stream) out += "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  for (const auto& [name, value] : extra) {
    // Header injection guard: CR/LF never reach the wire.
    if (name.find_first_of("\r\n:") != std::string::npos ||
        value.find_first_of("\r\n") != std::string::npos) {
      continue;
    }
    out += name + ": " + value + "\r\n";
  }
  out += "\r\n";
  return out;
}

}  // namespace

// One TCP connection. Every member is touched only on the connection's strand
// (the executor of stream_).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Core* core, tcp::socket socket, bool reject)
      : core_(core), stream_(std::move(socket)), reject_(reject) {}

  ~Connection() {
    absl::MutexLock lock(&core_->conn_mu);
    core_->connections.erase(this);
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

  void Start() {
    net::dispatch(executor(), [self = shared_from_this()] {
      if (self->reject_) {
        self->SendError(503, "too many connections");
        return;
      }
      self->DoRead();
    });
  }

  // Shutdown: idle connections close, busy ones close after their response.
  void BeginDrain() {
    draining_ = true;
    keep_alive_ = false;
    if (state_ == State::kReading) Close();
  }

  void Close() {
    if (state_ == State::kClosed) return;
    const bool lost = state_ == State::kResponding;
    state_ = State::kClosed;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    std::shared_ptr<ResponseWriter> writer = std::move(writer_);
    std::shared_ptr<Connection> keep = std::move(self_);  // may be the last reference: released on return
    if (lost && writer != nullptr) writer->NotifyLost();
  }

  // ---- called (on the strand) through a ResponseWriter ----
  void DoSend(uint64_t seq, Response r) {
    if (!Current(seq) || head_sent_) return;
    head_sent_ = true;
    response_done_ = true;
    out_ += Head(r.status, r.content_type, r.headers, false, r.body.size(), keep_alive_, false);
    out_ += r.body;
    Flush();
  }

  void DoStartStream(uint64_t seq, int status, std::string content_type, Headers headers) {
    if (!Current(seq) || head_sent_) return;
    head_sent_ = true;
    chunked_ = !http10_;
    if (http10_) keep_alive_ = false;  // the end of the body is the end of the connection
    out_ += Head(status, content_type, headers, chunked_, 0, keep_alive_, true);
    Flush();
  }

  void DoWrite(uint64_t seq, std::string data) {
    if (!Current(seq) || !head_sent_ || response_done_ || data.empty()) return;
    if (chunked_) {
      out_ += absl::StrFormat("%x\r\n", data.size());
      out_ += data;
      out_ += "\r\n";
    } else {
      out_ += data;
    }
    if (out_.size() > core_->options.max_queued_bytes) {
      Close();  // the client does not read: drop it rather than grow without bound
      return;
    }
    Flush();
  }

  void DoEnd(uint64_t seq) {
    if (!Current(seq) || !head_sent_ || response_done_) return;
    response_done_ = true;
    if (chunked_) out_ += "0\r\n\r\n";
    Flush();
  }

 private:
  enum class State { kReading, kResponding, kLingering, kClosed };

  bool Current(uint64_t seq) const { return state_ == State::kResponding && seq == seq_; }

  void DoRead() {
    if (draining_) {
      Close();
      return;
    }
    state_ = State::kReading;
    parser_.emplace();
    parser_->body_limit(core_->options.max_body_bytes);
    parser_->header_limit(static_cast<uint32_t>(core_->options.max_header_bytes));
    stream_.expires_after(absl::ToChronoNanoseconds(core_->options.read_timeout));
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (state_ != State::kReading) return;
    if (ec == bhttp::error::body_limit) return SendError(413, "request body too large");
    if (ec == bhttp::error::header_limit) return SendError(431, "request headers too large");
    if (ec == beast::error::timeout) return Close();  // slow or idle client (the stream closed the socket)
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::bad_descriptor) {
      return Close();
    }
    if (ec) return SendError(400, "malformed request: " + ec.message());

    stream_.expires_never();
    bhttp::request<bhttp::string_body> msg = parser_->release();
    Request request;
    request.method = std::string(msg.method_string());
    request.target = std::string(msg.target());
    request.path = request.target.substr(0, request.target.find('?'));
    for (const auto& field : msg) {
      request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    request.body = std::move(msg.body());
    http10_ = msg.version() == 10;
    keep_alive_ = msg.keep_alive() && !draining_;

    auto route = core_->routes.find({request.method, request.path});
    if (route == core_->routes.end()) {
      if (core_->paths.count(request.path) != 0) return SendError(405, "method not allowed");
      return SendError(404, "not found: " + request.path);
    }
    BeginResponse();
    writer_ = std::make_shared<ResponseWriter>(core_->shared_from_this(), weak_from_this(), seq_);
    std::shared_ptr<ResponseWriter> writer = writer_;
    try {
      route->second(request, writer);
    } catch (const std::exception& e) {
      LOG(ERROR) << "http: the handler for " << request.path << " threw: " << e.what();
      writer->Send(core_->Error(500, "internal error"));
    }
  }

  void BeginResponse() {
    state_ = State::kResponding;
    ++seq_;
    head_sent_ = false;
    response_done_ = false;
    chunked_ = false;
    self_ = shared_from_this();  // alive while the handler may still answer
    Monitor();
  }

  // A server-made answer to a bad request: sent, then the connection closes.
  void SendError(int status, std::string_view message) {
    BeginResponse();
    keep_alive_ = false;
    linger_ = true;
    DoSend(seq_, core_->Error(status, message));
  }

  // Watches the socket while a response is being produced: a read that
  // fails means the client went away. Bytes that arrive (a pipelined next
  // request) are kept for the next read, up to a bound.
  void Monitor() {
    if (monitor_pending_ || state_ != State::kResponding || buffer_.size() >= kMaxPipelinedBytes) return;
    monitor_pending_ = true;
    stream_.async_read_some(
        buffer_.prepare(kMonitorReadBytes),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnMonitor(ec, n); });
  }

  void OnMonitor(beast::error_code ec, size_t n) {
    monitor_pending_ = false;
    if (state_ == State::kClosed) return;
    if (state_ == State::kLingering) {
      if (!ec) buffer_.commit(n);
      if (!ec || ec == net::error::operation_aborted) return Linger();
      return Close();
    }
    if (!ec) {
      buffer_.commit(n);
      if (state_ == State::kResponding) return Monitor();
      return DoRead();
    }
    if (ec == net::error::operation_aborted && state_ == State::kReading) return DoRead();
    Close();  // EOF or reset: the client is gone
  }

  void Flush() {
    if (writing_ || state_ == State::kClosed) return;
    if (out_.empty()) {
      if (response_done_) FinishResponse();
      return;
    }
    in_flight_ = std::move(out_);
    out_.clear();
    writing_ = true;
    net::async_write(stream_, net::buffer(in_flight_),
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast::error_code ec) {
    writing_ = false;
    in_flight_.clear();
    if (ec) return Close();
    Flush();
  }

  // The whole response is on the wire.
  void FinishResponse() {
    if (writer_ != nullptr) writer_->NotifyComplete();
    writer_.reset();
    if ((!keep_alive_ || draining_) && !linger_) return Close();
    if (linger_) {
      // Half-close and read what the client still sends (a body we refused)
      // for a moment, so the answer is not lost to a reset.
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      state_ = State::kLingering;
      linger_deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      std::shared_ptr<Connection> keep = std::move(self_);
      if (monitor_pending_) {
        stream_.socket().cancel();  // OnMonitor continues with Linger (a pending read keeps no timer)
      } else {
        Linger();
      }
      return;
    }
    state_ = State::kReading;
    std::shared_ptr<Connection> keep = std::move(self_);
    if (monitor_pending_) {
      stream_.socket().cancel();  // OnMonitor continues with DoRead
    } else {
      DoRead();
    }
  }

  void Linger() {
    buffer_.consume(buffer_.size());
    stream_.expires_at(linger_deadline_);
    monitor_pending_ = true;
    stream_.async_read_some(
        buffer_.prepare(kMonitorReadBytes),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnMonitor(ec, n); });
  }

  Core* const core_;
  beast::tcp_stream stream_;
  const bool reject_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  State state_ = State::kReading;
  uint64_t seq_ = 0;
  bool draining_ = false;
  bool keep_alive_ = true;
  bool http10_ = false;
  bool head_sent_ = false;
  bool chunked_ = false;
  bool response_done_ = false;
  bool monitor_pending_ = false;
  bool writing_ = false;
  bool linger_ = false;  // an error answer: read and drop what follows before closing
  std::chrono::steady_clock::time_point linger_deadline_;
  std::string out_;
  std::string in_flight_;
  std::shared_ptr<ResponseWriter> writer_;
  std::shared_ptr<Connection> self_;
};

}  // namespace internal

// ---- Request ----

std::optional<std::string> Request::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n.size() == name.size() && absl::EqualsIgnoreCase(absl::string_view(n.data(), n.size()),
                                                          absl::string_view(name.data(), name.size()))) {
      return v;
    }
  }
  return std::nullopt;
}

// ---- ResponseWriter ----

ResponseWriter::ResponseWriter(std::shared_ptr<internal::Core> core,
                               std::weak_ptr<internal::Connection> connection, uint64_t sequence)
    : core_(std::move(core)), connection_(std::move(connection)), sequence_(sequence) {}

ResponseWriter::~ResponseWriter() = default;

void ResponseWriter::Post(std::function<void(internal::Connection&, uint64_t)> fn) {
  absl::ReaderMutexLock lock(&core_->mu);
  if (core_->stopped) return;
  std::shared_ptr<internal::Connection> c = connection_.lock();
  if (c == nullptr) return;
  net::post(c->executor(), [c, fn = std::move(fn), seq = sequence_] { fn(*c, seq); });
}

void ResponseWriter::Send(Response response) {
  Post([r = std::move(response)](internal::Connection& c, uint64_t seq) mutable {
    c.DoSend(seq, std::move(r));
  });
}

void ResponseWriter::StartStream(int status, std::string content_type, Headers headers) {
  Post([status, ct = std::move(content_type), h = std::move(headers)](internal::Connection& c,
                                                                      uint64_t seq) mutable {
    c.DoStartStream(seq, status, std::move(ct), std::move(h));
  });
}

void ResponseWriter::Write(std::string data) {
  if (data.empty()) return;
  Post(
      [d = std::move(data)](internal::Connection& c, uint64_t seq) mutable { c.DoWrite(seq, std::move(d)); });
}

void ResponseWriter::End() {
  Post([](internal::Connection& c, uint64_t seq) { c.DoEnd(seq); });
}

void ResponseWriter::SetCancelCallback(std::function<void()> callback) {
  {
    absl::MutexLock lock(&mu_);
    if (complete_) return;
    if (!lost_) {
      on_cancel_ = std::move(callback);
      return;
    }
  }
  if (callback) callback();
}

bool ResponseWriter::cancelled() const {
  absl::MutexLock lock(&mu_);
  return lost_;
}

void ResponseWriter::NotifyLost() {
  std::function<void()> callback;
  {
    absl::MutexLock lock(&mu_);
    if (lost_ || complete_) return;
    lost_ = true;
    callback = std::move(on_cancel_);
    on_cancel_ = nullptr;
  }
  if (callback) callback();
}

void ResponseWriter::NotifyComplete() {
  std::function<void()> drop;  // destroyed outside the lock
  absl::MutexLock lock(&mu_);
  complete_ = true;
  drop = std::move(on_cancel_);
  on_cancel_ = nullptr;
}

// ---- Server ----

struct Server::Impl {
  std::shared_ptr<internal::Core> core = std::make_shared<internal::Core>();
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  bool started = false;
  bool shut_down = false;

  void Accept() {
    acceptor->async_accept(net::make_strand(core->ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
      if (!ec) {
        bool reject = false;
        std::shared_ptr<internal::Connection> c;
        {
          absl::MutexLock lock(&core->conn_mu);
          if (core->draining) return;
          reject = static_cast<int>(core->connections.size()) >= core->options.max_connections;
          c = std::make_shared<internal::Connection>(core.get(), std::move(socket), reject);
          core->connections.emplace(c.get(), c);
        }
        c->Start();
      }
      Accept();  // errors such as EMFILE: keep accepting
    });
  }
};

Server::Server(const Options& options) : impl_(std::make_unique<Impl>()) { impl_->core->options = options; }

Server::~Server() { Shutdown(absl::Now()); }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const Options& options) {
  if (options.num_threads < 1) return absl::InvalidArgumentError("http: num_threads must be >= 1");
  if (options.port < 0 || options.port > 65535) return absl::InvalidArgumentError("http: port out of range");
  std::unique_ptr<Server> server(new Server(options));
  Impl& impl = *server->impl_;
  beast::error_code ec;
  const net::ip::address address = net::ip::make_address(options.host, ec);
  if (ec)
    return absl::InvalidArgumentError(absl::StrFormat("http: bad host '%s': %s", options.host, ec.message()));
  impl.acceptor.emplace(net::make_strand(impl.core->ioc));
  const tcp::endpoint endpoint(address, static_cast<uint16_t>(options.port));
  impl.acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl.acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl.acceptor->bind(endpoint, ec);
  if (!ec) impl.acceptor->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrFormat("http: cannot listen on %s:%d: %s", options.host, options.port, ec.message()));
  }
  server->port_ = impl.acceptor->local_endpoint().port();
  return server;
}

void Server::Handle(std::string method, std::string path, Handler handler) {
  impl_->core->paths[path]++;
  impl_->core->routes[{std::move(method), std::move(path)}] = std::move(handler);
}

absl::Status Server::Start() {
  if (impl_->started) return absl::FailedPreconditionError("http: already started");
  impl_->started = true;
  impl_->work.emplace(impl_->core->ioc.get_executor());
  impl_->Accept();
  for (int i = 0; i < impl_->core->options.num_threads; ++i) {
    impl_->threads.emplace_back([this] { impl_->core->ioc.run(); });
  }
  return absl::OkStatus();
}

int Server::connections() const {
  absl::MutexLock lock(&impl_->core->conn_mu);
  return static_cast<int>(impl_->core->connections.size());
}

void Server::Shutdown(absl::Time deadline) {
  Impl& impl = *impl_;
  if (impl.shut_down) return;
  impl.shut_down = true;
  internal::Core& core = *impl.core;
  if (impl.started) {
    net::post(impl.acceptor->get_executor(), [&impl] {
      beast::error_code ignored;
      impl.acceptor->close(ignored);
    });
    auto for_each_connection = [&core](void (internal::Connection::*fn)()) {
      std::vector<std::shared_ptr<internal::Connection>> live;
      {
        absl::MutexLock lock(&core.conn_mu);
        core.draining = true;
        for (auto& [raw, weak] : core.connections) {
          if (auto c = weak.lock()) live.push_back(std::move(c));
        }
      }
      for (auto& c : live) net::post(c->executor(), [c, fn] { ((*c).*fn)(); });
    };
    auto all_closed = [&core] {
      core.conn_mu.AssertHeld();
      return core.connections.empty();
    };
    for_each_connection(&internal::Connection::BeginDrain);
    {
      absl::MutexLock lock(&core.conn_mu);
      core.conn_mu.AwaitWithDeadline(absl::Condition(&all_closed), deadline);
    }
    for_each_connection(&internal::Connection::Close);
    {
      absl::MutexLock lock(&core.conn_mu);
      core.conn_mu.AwaitWithDeadline(absl::Condition(&all_closed), absl::Now() + absl::Seconds(2));
    }
    impl.work.reset();
    core.ioc.stop();
    for (std::thread& t : impl.threads) t.join();
    impl.threads.clear();
  }
  {
    absl::WriterMutexLock lock(&core.mu);
    core.stopped = true;
  }
  beast::error_code ignored;
  if (impl.acceptor) impl.acceptor->close(ignored);
}

}  // namespace tandem::http
