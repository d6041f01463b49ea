#include "router/openai_front.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/server.h"
#include "http/test_client.h"
#include "nlohmann/json.hpp"
#include "router/fake_generator.h"
#include "router/shed_reason.h"

namespace tandem::router {
namespace {

using json = nlohmann::json;
using ::tandem::http::testing::ParsedResponse;
using ::tandem::http::testing::TestClient;
using ::tandem::router::testing::FakeGenerator;
using ::tandem::router::testing::FakeScript;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class OpenAiFrontTest : public ::testing::Test {
 protected:
  void Start(OpenAiFrontOptions options = {}, http::Server::Options server_options = {}) {
    if (options.model_name.empty()) options.model_name = "tiny";
    options.metrics = &registry_;
    front_ = std::make_unique<OpenAiFront>(options, &generator_);
    server_options.error_response = &OpenAiFront::ErrorResponse;
    auto server = http::Server::Create(server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    front_->Register(server_.get());
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Now() + absl::Seconds(5));
  }

  ParsedResponse Call(const std::string& method, const std::string& path, const std::string& body,
                      const std::string& headers = "") {
    TestClient c(server_->port());
    EXPECT_TRUE(c.ok());
    c.Send(method + " " + path +
           " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n" + headers + "\r\n" + body);
    std::optional<ParsedResponse> r = c.ReadResponse();
    EXPECT_TRUE(r.has_value());
    return r.value_or(ParsedResponse{});
  }
  ParsedResponse Post(const std::string& path, const json& body, const std::string& headers = "") {
    return Call("POST", path, body.dump(), headers);
  }

  // The SSE events of a stream body (without the "data: " prefix).
  static std::vector<std::string> Events(const std::string& body) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < body.size()) {
      const size_t end = body.find("\n\n", pos);
      EXPECT_NE(end, std::string::npos) << "unterminated event: " << body.substr(pos);
      if (end == std::string::npos) break;
      const std::string event = body.substr(pos, end - pos);
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      out.push_back(event.substr(6));
      pos = end + 2;
    }
    return out;
  }

  static void ExpectError(const ParsedResponse& r, int status, const std::string& type, json param,
                          json code) {
    EXPECT_EQ(r.status, status) << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    ASSERT_EQ(j.size(), 1u);
    const json& e = j["error"];
    ASSERT_TRUE(e.is_object()) << r.body;
    EXPECT_EQ(e.size(), 4u) << r.body;
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.body;
    EXPECT_EQ(e["type"], type) << r.body;
    EXPECT_EQ(e["param"], param) << r.body;
    EXPECT_EQ(e["code"], code) << r.body;
    EXPECT_THAT(r.head, HasSubstr("content-type: application/json"));
  }

  MetricsRegistry registry_;
  FakeGenerator generator_;
  std::unique_ptr<OpenAiFront> front_;
  std::unique_ptr<http::Server> server_;
};

TEST_F(OpenAiFrontTest, CompletionTranslatesRequestAndAnswersInOpenAiShape) {
  Start();
  ParsedResponse r = Post("/v1/completions",
                          {{"model", "tiny"},
                           {"prompt", "Once upon"},
                           {"max_tokens", 7},
                           {"temperature", 0.5},
                           {"top_p", 0.9},
                           {"seed", 42},
                           {"stop", {"\n", "END"}},
                           {"n", 1},
                           {"user", "u"},
                           {"slo_ttft_ms", 250},
                           {"ignore_eos", true}},
                          "X-Request-Id: req-1\r\nX-Tandem-Slo-Tpot-Ms: 40\r\n");
  ASSERT_EQ(r.status, 200) << r.body;
  const std::vector<tandem::v1::GenerateRequest> requests = generator_.requests();
  ASSERT_EQ(requests.size(), 1u);
  const tandem::v1::GenerateRequest& g = requests[0];
  EXPECT_EQ(g.prompt(), "Once upon");
  EXPECT_EQ(g.max_tokens(), 7);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  EXPECT_THAT(g.stop(), ElementsAre("\n", "END"));
  EXPECT_DOUBLE_EQ(g.slo().ttft_ms(), 250);
  EXPECT_DOUBLE_EQ(g.slo().tpot_ms(), 40);
  EXPECT_EQ(g.request_id(), "req-1");
  EXPECT_EQ(g.tenant(), "u");  // OpenAI's "user" when no X-Tandem-Tenant
  EXPECT_EQ(g.priority(), 0);
  EXPECT_FALSE(g.stop_at_eos());
  EXPECT_GT(generator_.deadlines()[0], absl::Now());

  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_THAT(j["id"].get<std::string>(), HasSubstr("cmpl-"));
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["text"], "Hello, world");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"], json({{"prompt_tokens", 5},
                              {"completion_tokens", 3},
                              {"total_tokens", 8},
                              {"prompt_tokens_details", {{"cached_tokens", 3}}}}));
}

TEST_F(OpenAiFrontTest, PromptForms) {
  Start();
  EXPECT_EQ(Post("/v1/completions", {{"prompt", {"one"}}}).status, 200);
  EXPECT_EQ(Post("/v1/completions", {{"prompt", {1, 2, 3}}}).status, 200);
  EXPECT_EQ(Post("/v1/completions", {{"prompt", {{4, 5}}}}).status, 200);
  auto requests = generator_.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].prompt(), "one");
  EXPECT_THAT(requests[1].prompt_token_ids().ids(), ElementsAre(1, 2, 3));
  EXPECT_THAT(requests[2].prompt_token_ids().ids(), ElementsAre(4, 5));
  EXPECT_EQ(requests[0].max_tokens(), 16);  // unset: OpenAI's completions default
}

TEST_F(OpenAiFrontTest, ChatRendersMessagesAndAnswersChatCompletion) {
  OpenAiFrontOptions options;
  options.render_chat = [](const std::vector<ChatTurn>& turns) -> absl::StatusOr<std::string> {
    std::string out;
    for (const ChatTurn& t : turns) out += "[" + t.role + "]" + t.content;
    return out;
  };
  Start(options);
  ParsedResponse r =
      Post("/v1/chat/completions", {{"model", "tiny"},
                                    {"messages",
                                     {{{"role", "system"}, {"content", "Be brief."}},
                                      {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}}},
                                    {"max_completion_tokens", 9},
                                    {"max_tokens", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(generator_.requests()[0].prompt(), "[system]Be brief.[user]Hi");
  EXPECT_EQ(generator_.requests()[0].max_tokens(), 9);
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_THAT(j["id"].get<std::string>(), HasSubstr("chatcmpl-"));
  EXPECT_EQ(j["choices"][0]["message"], json({{"role", "assistant"}, {"content", "Hello, world"}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
}

TEST_F(OpenAiFrontTest, DefaultChatTemplateIsChatMl) {
  Start();
  ASSERT_EQ(Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}}).status,
            200);
  EXPECT_EQ(generator_.requests()[0].prompt(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST_F(OpenAiFrontTest, StreamedCompletionIsSseEndingInDone) {
  FakeScript script;
  script.finish = tandem::v1::FINISH_REASON_LENGTH;
  generator_.set_script(script);
  Start();
  ParsedResponse r = Post("/v1/completions",
                          {{"prompt", "x"}, {"stream", true}, {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(r.status, 200);
  EXPECT_THAT(r.head, HasSubstr("content-type: text/event-stream"));
  std::vector<std::string> events = Events(r.body);
  ASSERT_EQ(events.size(), 6u) << r.body;  // 3 texts, finish, usage, [DONE]
  std::string text;
  for (int i = 0; i < 3; ++i) {
    json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "text_completion");
    EXPECT_TRUE(e["choices"][0]["finish_reason"].is_null());
    text += e["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, "Hello, world");
  json finish = json::parse(events[3]);
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  json usage = json::parse(events[4]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 3);
  EXPECT_EQ(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
  EXPECT_EQ(events[5], "[DONE]");
}

TEST_F(OpenAiFrontTest, StreamedChatSendsRoleThenDeltas) {
  Start();
  ParsedResponse r =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  std::vector<std::string> events = Events(r.body);
  ASSERT_EQ(events.size(), 6u) << r.body;  // role, 3 deltas, finish, [DONE]
  json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(events[2])["choices"][0]["delta"], json({{"content", ","}}));
  json last = json::parse(events[4]);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(events[5], "[DONE]");
}

TEST_F(OpenAiFrontTest, InvalidRequestsAre400InOpenAiShape) {
  Start();
  struct Case {
    std::string body;
    std::string path;
    json param;
  };
  const std::string c = "/v1/completions", chat = "/v1/chat/completions";
  for (const Case& k : std::vector<Case>{
           {"{not json", c, nullptr},
           {"[1,2]", c, nullptr},
           {"{}", c, "prompt"},
           {R"({"prompt": 5})", c, "prompt"},
           {R"({"prompt": ["a", "b"]})", c, "prompt"},
           {R"({"prompt": [1, -2]})", c, "prompt"},
           {R"({"prompt": "x", "max_tokens": -1})", c, "max_tokens"},
           {R"({"prompt": "x", "max_tokens": "ten"})", c, "max_tokens"},
           {R"({"prompt": "x", "n": 2})", c, "n"},
           {R"({"prompt": "x", "temperature": 3})", c, "temperature"},
           {R"({"prompt": "x", "top_p": 0})", c, "top_p"},
           {R"({"prompt": "x", "stop": 7})", c, "stop"},
           {R"({"prompt": "x", "stream": "yes"})", c, "stream"},
           {R"({"prompt": "x", "slo_ttft_ms": -5})", c, "slo_ttft_ms"},
           {R"({"prompt": "x", "model": 3})", c, "model"},
           {"{\"prompt\": \"bad \xff\xfe utf8\"}", c, nullptr},
           {R"({"messages": []})", chat, "messages"},
           {R"({"messages": [{"role": "wizard", "content": "x"}]})", chat, "messages[0].role"},
           {R"({"messages": [{"role": "user", "content": 5}]})", chat, "messages[0].content"},
           {R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})", chat,
            "max_completion_tokens"},
       }) {
    SCOPED_TRACE(k.body);
    ExpectError(Call("POST", k.path, k.body), 400, "invalid_request_error", k.param, nullptr);
  }
  EXPECT_TRUE(generator_.requests().empty());
}

TEST_F(OpenAiFrontTest, UnknownModelIs404ModelNotFound) {
  OpenAiFrontOptions options;
  options.model_aliases = {"stories260K.gguf"};
  Start(options);
  ExpectError(Post("/v1/completions", {{"model", "gpt-9"}, {"prompt", "x"}}), 404, "invalid_request_error",
              "model", "model_not_found");
  EXPECT_EQ(Post("/v1/completions", {{"model", "stories260K.gguf"}, {"prompt", "x"}}).status, 200);
  ExpectError(Call("GET", "/v1/nothing", ""), 404, "invalid_request_error", nullptr, "not_found");
}

TEST_F(OpenAiFrontTest, GeneratorErrorsMapToHttpStatuses) {
  Start();
  struct Case {
    absl::Status status;
    int http;
    std::string type;
    json code;
  };
  for (const Case& k : std::vector<Case>{
           {absl::InvalidArgumentError("max_tokens: too long for the context"), 400, "invalid_request_error",
            nullptr},
           {absl::NotFoundError("model 'x' is not served"), 404, "invalid_request_error", "model_not_found"},
           {absl::ResourceExhaustedError("TTFT SLO cannot be met"), 429, "rate_limit_error",
            "rate_limit_exceeded"},
           {absl::UnavailableError("no decode worker"), 503, "server_error", "service_unavailable"},
           {absl::DeadlineExceededError("deadline"), 504, "server_error", "timeout"},
       }) {
    SCOPED_TRACE(k.status.ToString());
    FakeScript script;
    script.texts = {};
    script.status = k.status;
    generator_.set_script(script);
    for (bool stream : {false, true}) {
      ParsedResponse r = Post("/v1/completions", {{"prompt", "x"}, {"stream", stream}});
      ExpectError(r, k.http, k.type, nullptr, k.code);
      EXPECT_EQ(r.head.find("retry-after: 1") != std::string::npos, k.http == 429) << r.head;
    }
  }
  EXPECT_THAT(registry_.RenderPrometheus(), HasSubstr("tandem_http_rejections_total{reason=\"429\"} 2"));
}

// Flow control: priority and tenant from headers (the header wins over
// "user"); a shed request is 429 with Retry-After and its reason.
TEST_F(OpenAiFrontTest, FlowControlHeadersAndShedReason) {
  Start();
  ParsedResponse ok = Post("/v1/completions", {{"prompt", "x"}, {"user", "u"}},
                           "X-Tandem-Priority: -7\r\nX-Tandem-Tenant: acme\r\n");
  ASSERT_EQ(ok.status, 200) << ok.body;
  ASSERT_EQ(generator_.requests().size(), 1u);
  EXPECT_EQ(generator_.requests()[0].priority(), -7);
  EXPECT_EQ(generator_.requests()[0].tenant(), "acme");
  for (const char* bad : {"X-Tandem-Priority: high\r\n", "X-Tandem-Priority: 101\r\n"}) {
    ExpectError(Post("/v1/completions", {{"prompt", "x"}}, bad), 400, "invalid_request_error",
                "x-tandem-priority", nullptr);
  }
  ExpectError(
      Post("/v1/completions", {{"prompt", "x"}}, "X-Tandem-Tenant: " + std::string(129, 't') + "\r\n"), 400,
      "invalid_request_error", "x-tandem-tenant", nullptr);
  EXPECT_EQ(generator_.requests().size(), 1u);  // none of the bad ones reached the generator
  FakeScript script;
  script.texts = {};
  script.status = ShedStatus(kShedLowerPriority, "shed for a request of priority 5");
  generator_.set_script(script);
  ParsedResponse shed = Post("/v1/completions", {{"prompt", "x"}});
  ExpectError(shed, 429, "rate_limit_error", nullptr, "rate_limit_exceeded");
  EXPECT_THAT(shed.head, HasSubstr("retry-after: 1"));
  EXPECT_THAT(shed.head, HasSubstr("x-tandem-shed-reason: lower_priority"));
}

TEST_F(OpenAiFrontTest, ErrorAfterFirstTokenIsAnSseErrorEvent) {
  FakeScript script;
  script.texts = {"partial"};
  script.status = absl::UnavailableError("decode worker died");
  generator_.set_script(script);
  Start();
  ParsedResponse r = Post("/v1/completions", {{"prompt", "x"}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  std::vector<std::string> events = Events(r.body);
  ASSERT_EQ(events.size(), 2u) << r.body;
  EXPECT_EQ(json::parse(events[1])["error"]["code"], "service_unavailable");
}

TEST_F(OpenAiFrontTest, BodyOverLimitIs413InOpenAiShape) {
  Start({}, {.max_body_bytes = 256});
  ExpectError(Post("/v1/completions", {{"prompt", std::string(1000, 'x')}}), 413, "invalid_request_error",
              nullptr, nullptr);
}

TEST_F(OpenAiFrontTest, ApiKeysGuardV1) {
  OpenAiFrontOptions options;
  options.api_keys = {"k1", "secret-2"};
  Start(options);
  const json body = {{"prompt", "x"}};
  ExpectError(Post("/v1/completions", body), 401, "invalid_request_error", nullptr, "invalid_api_key");
  ExpectError(Post("/v1/completions", body, "Authorization: Bearer nope\r\n"), 401, "invalid_request_error",
              nullptr, "invalid_api_key");
  ExpectError(Call("GET", "/v1/models", ""), 401, "invalid_request_error", nullptr, "invalid_api_key");
  EXPECT_EQ(Post("/v1/completions", body, "Authorization: Bearer secret-2\r\n").status, 200);
  EXPECT_EQ(Call("GET", "/health", "").status, 200);
}

TEST_F(OpenAiFrontTest, ModelsHealthReadyMetrics) {
  bool ready = false;
  OpenAiFrontOptions options;
  options.ready = [&ready] { return ready; };
  Start(options);
  json models = json::parse(Call("GET", "/v1/models", "").body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(Call("GET", "/health", "").status, 200);
  EXPECT_EQ(Call("GET", "/ready", "").status, 503);
  ready = true;
  EXPECT_EQ(Call("GET", "/ready", "").status, 200);
  ASSERT_EQ(Post("/v1/completions", {{"prompt", "x"}}).status, 200);
  ParsedResponse m = Call("GET", "/metrics", "");
  EXPECT_EQ(m.status, 200);
  EXPECT_THAT(m.head, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(m.body, HasSubstr("tandem_http_requests_total{endpoint=\"/v1/completions\",code=\"200\"} 1"));
  EXPECT_THAT(m.body, HasSubstr("tandem_http_ttft_seconds_count{endpoint=\"/v1/completions\"} 1"));
  EXPECT_THAT(m.body, HasSubstr("tandem_http_requests_in_flight{endpoint=\"/v1/completions\"} 0"));
}

TEST_F(OpenAiFrontTest, ClientDisconnectCancelsTheGeneration) {
  FakeScript script;
  script.hold = true;
  generator_.set_script(script);
  Start();
  TestClient c(server_->port());
  const std::string body = json{{"prompt", "x"}, {"stream", true}}.dump();
  ASSERT_TRUE(c.Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n" + body));
  ASSERT_TRUE(c.ReadUntil("world"));
  c.Close();
  EXPECT_TRUE(generator_.AwaitCancelled(1));
}

}  // namespace
}  // namespace tandem::router
