#include "http/server.h"

#include <sys/resource.h>

#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/test_client.h"

namespace tandem::http {
namespace {

using ::tandem::http::testing::TestClient;
using ::testing::HasSubstr;

std::string Get(const std::string& path, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: x\r\n" + extra + "\r\n";
}

std::string Post(const std::string& path, const std::string& body, const std::string& extra = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         extra + "\r\n" + body;
}

int ProcessThreads() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// Streams kept by a test, written by the test thread (the "slow generator").
struct Streams {
  absl::Mutex mu;
  std::vector<std::shared_ptr<ResponseWriter>> writers ABSL_GUARDED_BY(mu);
  int cancelled ABSL_GUARDED_BY(mu) = 0;

  Handler MakeHandler() {
    return [this](const Request&, std::shared_ptr<ResponseWriter> w) {
      w->StartStream(200, "text/event-stream");
      w->Write("data: first\n\n");
      w->SetCancelCallback([this] {
        absl::MutexLock lock(&mu);
        ++cancelled;
      });
      absl::MutexLock lock(&mu);
      writers.push_back(std::move(w));
    };
  }
  bool AwaitCount(int n) {
    absl::MutexLock lock(&mu);
    auto enough = [&] {
      mu.AssertHeld();
      return static_cast<int>(writers.size()) >= n;
    };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(30));
  }
  bool AwaitCancelled(int n) {
    absl::MutexLock lock(&mu);
    auto enough = [&] {
      mu.AssertHeld();
      return cancelled >= n;
    };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  std::vector<std::shared_ptr<ResponseWriter>> Take() {
    absl::MutexLock lock(&mu);
    return std::move(writers);
  }
};

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(Server::Options options = {}) {
    auto server = Server::Create(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->Handle("GET", "/hello", [](const Request& r, std::shared_ptr<ResponseWriter> w) {
      w->Send({.status = 200, .content_type = "text/plain", .body = "hello " + r.target});
    });
    server_->Handle("POST", "/echo", [](const Request& r, std::shared_ptr<ResponseWriter> w) {
      w->Send({.status = 201, .headers = {{"X-Got", r.Header("x-test").value_or("none")}}, .body = r.body});
    });
    server_->Handle("POST", "/stream", streams_.MakeHandler());
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Now() + absl::Seconds(5));
  }

  Streams streams_;
  std::unique_ptr<Server> server_;
};

TEST_F(HttpServerTest, RoutesByMethodAndPath) {
  StartServer();
  TestClient c(server_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.Send(Get("/hello?x=1")));
  auto r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello /hello?x=1");

  ASSERT_TRUE(c.Send(Post("/echo", "payload", "X-Test: yes\r\n")));
  r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, "payload");
  EXPECT_THAT(r->head, HasSubstr("x-got: yes"));

  ASSERT_TRUE(c.Send(Get("/nope")));
  r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 404);

  TestClient d(server_->port());
  ASSERT_TRUE(d.Send(Post("/hello", "")));
  r = d.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 405);
}

TEST_F(HttpServerTest, KeepAliveServesManyRequestsOnOneConnection) {
  StartServer();
  TestClient c(server_->port());
  // Two pipelined, then one more after the answers.
  ASSERT_TRUE(c.Send(Get("/hello?a") + Get("/hello?b")));
  for (const char* want : {"hello /hello?a", "hello /hello?b"}) {
    auto r = c.ReadResponse();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->body, want);
    EXPECT_THAT(r->head, HasSubstr("connection: keep-alive"));
  }
  ASSERT_TRUE(c.Send(Get("/hello?c", "Connection: close\r\n")));
  auto r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "hello /hello?c");
  EXPECT_THAT(r->head, HasSubstr("connection: close"));
  EXPECT_TRUE(c.WaitClosed());
}

TEST_F(HttpServerTest, BodyOverLimitIs413AndServerStaysUp) {
  StartServer({.max_body_bytes = 1024});
  TestClient c(server_->port());
  ASSERT_TRUE(c.Send(Post("/echo", std::string(4096, 'x'))));
  auto r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(c.WaitClosed());

  TestClient d(server_->port());
  ASSERT_TRUE(d.Send(Post("/echo", std::string(1024, 'y'))));
  r = d.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 201);
}

TEST_F(HttpServerTest, MalformedRequestsAre4xx) {
  StartServer({.max_header_bytes = 512});
  for (const std::string& bad : {std::string("GARBAGE\r\n\r\n"), std::string("GET / HTTP/9.9\r\n\r\n"),
                                 std::string("GET /hello HTTP/1.1\r\nContent-Length: nope\r\n\r\n"),
                                 std::string("GET /hello HTTP/1.1\r\nBad Header\r\n\r\n")}) {
    TestClient c(server_->port());
    ASSERT_TRUE(c.Send(bad));
    auto r = c.ReadResponse();
    ASSERT_TRUE(r.has_value()) << bad;
    EXPECT_EQ(r->status, 400) << bad;
    EXPECT_TRUE(c.WaitClosed());
  }
  TestClient big(server_->port());
  ASSERT_TRUE(big.Send(Get("/hello", "X-Big: " + std::string(2000, 'a') + "\r\n")));
  auto r = big.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 431);

  TestClient ok(server_->port());
  ASSERT_TRUE(ok.Send(Get("/hello")));
  r = ok.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, SlowClientIsDropped) {
  StartServer({.read_timeout = absl::Milliseconds(300)});
  TestClient c(server_->port());
  ASSERT_TRUE(c.Send("GET /hello HTTP/1.1\r\nHost: x\r\n"));  // never finishes its headers
  EXPECT_TRUE(c.WaitClosed(absl::Seconds(10)));
  // An idle keep-alive connection is dropped the same way.
  TestClient idle(server_->port());
  ASSERT_TRUE(idle.Send(Get("/hello")));
  ASSERT_TRUE(idle.ReadResponse().has_value());
  EXPECT_TRUE(idle.WaitClosed(absl::Seconds(10)));
}

TEST_F(HttpServerTest, StreamsServerSentEventsFromAnotherThread) {
  StartServer();
  TestClient c(server_->port());
  ASSERT_TRUE(c.Send(Post("/stream", "{}")));
  ASSERT_TRUE(streams_.AwaitCount(1));
  std::thread producer([&] {
    for (std::shared_ptr<ResponseWriter>& w : streams_.Take()) {
      for (int i = 0; i < 3; ++i) w->Write("data: " + std::to_string(i) + "\n\n");
      w->End();
    }
  });
  producer.join();
  auto r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->chunked);
  EXPECT_THAT(r->head, HasSubstr("content-type: text/event-stream"));
  EXPECT_EQ(r->body, "data: first\n\ndata: 0\n\ndata: 1\n\ndata: 2\n\n");
  // The connection is still usable.
  ASSERT_TRUE(c.Send(Get("/hello")));
  r = c.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, ClientDisconnectRunsCancelCallback) {
  StartServer();
  TestClient c(server_->port());
  ASSERT_TRUE(c.Send(Post("/stream", "{}")));
  ASSERT_TRUE(c.ReadUntil("data: first"));
  c.Close();
  EXPECT_TRUE(streams_.AwaitCancelled(1));
  // Writes after the loss are ignored.
  for (auto& w : streams_.Take()) {
    EXPECT_TRUE(w->cancelled());
    w->Write("data: late\n\n");
    w->End();
  }
}

TEST_F(HttpServerTest, HoldsThousandStreamsOnAFewThreads) {
  constexpr int kStreams = 1000;
  rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_max < 2 * kStreams + 100)
    GTEST_SKIP() << "needs " << 2 * kStreams + 100 << " file descriptors";
  limit.rlim_cur = limit.rlim_max;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &limit), 0);

  const int threads_before = ProcessThreads();
  StartServer({.num_threads = 2});
  std::vector<std::unique_ptr<TestClient>> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.push_back(std::make_unique<TestClient>(server_->port()));
    ASSERT_TRUE(clients.back()->ok()) << i;
    ASSERT_TRUE(clients.back()->Send(Post("/stream", "{}")));
  }
  for (int i = 0; i < kStreams; ++i) ASSERT_TRUE(clients[i]->ReadUntil("data: first")) << i;
  ASSERT_TRUE(streams_.AwaitCount(kStreams));
  // All streams are open at once, on the server's fixed threads.
  EXPECT_EQ(server_->connections(), kStreams);
  EXPECT_LE(ProcessThreads(), threads_before + 2);

  std::vector<std::shared_ptr<ResponseWriter>> writers = streams_.Take();
  for (auto& w : writers) w->Write("data: second\n\n");
  for (auto& w : writers) w->End();
  for (int i = 0; i < kStreams; ++i) {
    auto r = clients[i]->ReadResponse();
    ASSERT_TRUE(r.has_value()) << i;
    EXPECT_EQ(r->body, "data: first\n\ndata: second\n\n");
  }
}

TEST_F(HttpServerTest, OverConnectionLimitIs503) {
  StartServer({.max_connections = 1});
  TestClient first(server_->port());
  ASSERT_TRUE(first.Send(Get("/hello")));
  ASSERT_TRUE(first.ReadResponse().has_value());
  TestClient second(server_->port());
  auto r = second.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 503);
}

TEST_F(HttpServerTest, GracefulShutdownFinishesStreamsThenClosesTheRest) {
  StartServer();
  TestClient idle(server_->port());
  ASSERT_TRUE(idle.Send(Get("/hello")));
  ASSERT_TRUE(idle.ReadResponse().has_value());
  TestClient streaming(server_->port());
  ASSERT_TRUE(streaming.Send(Post("/stream", "{}")));
  ASSERT_TRUE(streams_.AwaitCount(1));

  std::thread shutdown([&] { server_->Shutdown(absl::Now() + absl::Seconds(20)); });
  EXPECT_TRUE(idle.WaitClosed());  // idle connections close at once
  for (auto& w : streams_.Take()) {
    w->Write("data: last\n\n");
    w->End();
  }
  auto r = streaming.ReadResponse();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->body, "data: first\n\ndata: last\n\n");
  EXPECT_TRUE(streaming.WaitClosed());  // no keep-alive while draining
  shutdown.join();
  EXPECT_EQ(server_->connections(), 0);
  TestClient late(server_->port());
  EXPECT_FALSE(late.ok() && late.Send(Get("/hello")) && late.ReadResponse().has_value());
}

TEST_F(HttpServerTest, ShutdownDeadlineCancelsUnfinishedStreams) {
  StartServer();
  TestClient streaming(server_->port());
  ASSERT_TRUE(streaming.Send(Post("/stream", "{}")));
  ASSERT_TRUE(streams_.AwaitCount(1));
  server_->Shutdown(absl::Now() + absl::Milliseconds(200));
  EXPECT_TRUE(streams_.AwaitCancelled(1));
  EXPECT_TRUE(streaming.WaitClosed());
  for (auto& w : streams_.Take()) w->End();  // after shutdown: ignored, no crash
}

}  // namespace
}  // namespace tandem::http
