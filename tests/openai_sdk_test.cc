// The router's OpenAI-compatible HTTP API against real clients:
//  - which chat template the router renders with (MakeChatRenderer: the
//    model's, a broken one's fallback, none) and that rendered chat reaches
//    the generator as token ids with special tokens parsed and no extra BOS
//    (in process, over a fake generator);
//  - the official OpenAI Node SDK, unmodified (tests/openai_sdk_check.mjs,
//    the `openai` npm package installed by scripts/npm_refs.sh), against a
//    real `tandem up` cluster (stories260K, or synthetic:tiny without the
//    shared models): completions and chat, plain and streamed, usage,
//    greedy stream == non-stream, errors as APIError, models.list();
//  - malformed requests over raw sockets (4xx with OpenAI's error shape, the
//    server keeps serving), and /metrics on the router and on a worker.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "http/server.h"
#include "http/test_client.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "router/fake_generator.h"
#include "router/openai_front.h"
#include "tests/testing/poll.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"

namespace tandem::router {
namespace {

using json = nlohmann::json;
using ::tandem::http::testing::ParsedResponse;
using ::tandem::http::testing::TestClient;
using ::tandem::router::testing::FakeGenerator;
using ::tandem::testing::StatusIs;
using ::tandem::testing::Subprocess;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------------------
// Chat template choice

// A SentencePiece-style vocabulary with BOS "<s>", EOS "</s>" and ChatML's
// markers as control tokens.
std::unique_ptr<model::Tokenizer> SmallTokenizer() {
  model::Vocabulary v;
  v.tokens = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "▁", "H", "i", "u", "s", "e", "r", "\n"};
  v.scores.assign(v.tokens.size(), 0.0f);
  v.types.assign(v.tokens.size(), model::TokenType::kNormal);
  v.types[0] = model::TokenType::kUnknown;
  for (int id : {1, 2, 3, 4}) v.types[id] = model::TokenType::kControl;
  v.add_bos = true;
  auto tok = model::Tokenizer::FromVocabulary(std::move(v));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

const std::vector<ChatTurn> kTurns = {{"system", "Be brief."}, {"user", "Hi"}};

std::string ChatMl(const std::vector<ChatTurn>& turns) {
  auto tmpl = model::ChatTemplate::Default();
  std::vector<model::ChatMessage> messages;
  for (const ChatTurn& t : turns) messages.push_back({t.role, t.content});
  absl::StatusOr<std::string> out = tmpl->Render(messages, {.add_generation_prompt = true});
  EXPECT_TRUE(out.ok()) << out.status();
  return out.value_or("");
}

TEST(ChatRendererTest, UsesTheModelsTemplateWithTheTokenizersBosAndEos) {
  std::unique_ptr<model::Tokenizer> tok = SmallTokenizer();
  ASSERT_NE(tok, nullptr);
  ChatRenderer r = MakeChatRenderer(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}",
      tok.get());
  EXPECT_TRUE(r.model_template);
  EXPECT_OK(r.template_error);
  ASSERT_TRUE(r.render);
  absl::StatusOr<std::string> out = r.render(kTurns);
  ASSERT_OK(out.status());
  EXPECT_EQ(*out, "<s>[system]Be brief.</s>[user]Hi</s>[assistant]");
}

TEST(ChatRendererTest, BrokenTemplateFallsBackToChatMlAndSaysWhere) {
  ChatRenderer r = MakeChatRenderer("{% for m in messages %}\n{{ m.content }\n", nullptr);
  EXPECT_FALSE(r.model_template);
  EXPECT_THAT(r.template_error, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(r.template_error.message()), HasSubstr("line"));
  absl::StatusOr<std::string> out = r.render(kTurns);
  ASSERT_OK(out.status());
  EXPECT_EQ(*out, ChatMl(kTurns));
  EXPECT_TRUE(absl::StartsWith(*out, "<|im_start|>system\nBe brief.<|im_end|>\n")) << *out;
}

TEST(ChatRendererTest, NoTemplateIsChatMl) {
  std::unique_ptr<model::Tokenizer> tok = SmallTokenizer();
  ASSERT_NE(tok, nullptr);
  ChatRenderer r = MakeChatRenderer("", tok.get());
  EXPECT_FALSE(r.model_template);
  EXPECT_OK(r.template_error);
  absl::StatusOr<std::string> out = r.render(kTurns);
  ASSERT_OK(out.status());
  EXPECT_EQ(*out, ChatMl(kTurns));
  EXPECT_TRUE(absl::EndsWith(*out, "<|im_start|>assistant\n")) << *out;
}

TEST(ChatRendererTest, TemplateThatRaisesIsInvalidArgument) {
  ChatRenderer r = MakeChatRenderer(
      "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}ok",
      nullptr);
  EXPECT_TRUE(r.model_template);
  EXPECT_THAT(r.render(kTurns).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<std::string> out = r.render({{"user", "Hi"}});
  ASSERT_OK(out.status());
  EXPECT_EQ(*out, "ok");
}

// The front encodes rendered chat with special tokens parsed and no BOS of
// its own: the template's {{ bos_token }} is the only BOS.
TEST(ChatRendererTest, FrontSendsRenderedChatAsTokenIdsWithoutAnExtraBos) {
  std::unique_ptr<model::Tokenizer> tok = SmallTokenizer();
  ASSERT_NE(tok, nullptr);
  ChatRenderer chat = MakeChatRenderer(
      "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor "
      "%}",
      tok.get());
  ASSERT_TRUE(chat.model_template) << chat.template_error;
  FakeGenerator generator;
  MetricsRegistry registry;
  OpenAiFront front(
      {.model_name = "tiny", .metrics = &registry, .render_chat = chat.render, .tokenizer = tok.get()},
      &generator);
  auto server = http::Server::Create({.error_response = &OpenAiFront::ErrorResponse});
  ASSERT_OK(server.status());
  front.Register(server->get());
  ASSERT_OK((*server)->Start());
  TestClient c((*server)->port());
  ASSERT_TRUE(c.ok());
  const std::string body = json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}}.dump();
  c.Send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body);
  std::optional<ParsedResponse> r = c.ReadResponse();
  (*server)->Shutdown(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200) << r->body;
  std::vector<tandem::v1::GenerateRequest> requests = generator.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_TRUE(requests[0].prompt().empty());
  const std::vector<int32_t> ids(requests[0].prompt_token_ids().ids().begin(),
                                 requests[0].prompt_token_ids().ids().end());
  const std::vector<int32_t> expected =
      tok->Encode("<s><|im_start|>user\nHi<|im_end|>\n", /*add_bos=*/false, /*parse_special=*/true);
  EXPECT_EQ(ids, expected);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], tok->bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok->bos_id()), 1);  // the template's BOS only
  EXPECT_THAT(ids, Contains(3));                                    // <|im_start|> as its token
  EXPECT_THAT(ids, Contains(4));                                    // <|im_end|>
  EXPECT_EQ(requests[0].max_tokens(), 0);  // chat's default: the generator's (router's) own
}

// ---------------------------------------------------------------------------
// A real cluster

std::string ModelSpec() {
  const std::string gguf = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  return std::filesystem::exists(gguf) ? gguf : "synthetic:tiny";
}

int PortOf(const std::string& address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return 0;
  return port;
}

// One request on a fresh connection; a status of 0 if no answer came.
ParsedResponse Exchange(int port, const std::string& bytes, absl::Duration timeout = absl::Seconds(60)) {
  TestClient c(port);
  if (!c.ok() || !c.Send(bytes)) return {};
  return c.ReadResponse(timeout).value_or(ParsedResponse{});
}

std::string Request(const std::string& method, const std::string& path, const std::string& body) {
  return absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n",
                      "Content-Length: ", body.size(), "\r\n\r\n", body);
}

// The OpenAI error shape: {"error": {"message", "type", "param", "code"}}.
void ExpectErrorShape(const ParsedResponse& r, int status, const char* param = nullptr) {
  EXPECT_EQ(r.status, status) << r.body;
  const json j = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
  const json& e = j["error"];
  ASSERT_TRUE(e.is_object()) << r.body;
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.body;
  EXPECT_TRUE(e["type"].is_string()) << r.body;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << r.body;
  if (param != nullptr) {
    EXPECT_EQ(e["param"], param) << r.body;
  }
}

class OpenAiClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new Subprocess({TANDEM_BINARY, "up", "--model", ModelSpec(), "--prefill", "1", "--decode", "1",
                          "--port", "0", "--http-port", "0", "--threads", "1", "--ready-timeout-s", "90"});
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    while (std::optional<std::string> line = up_->ReadLine(deadline)) {
      const json j = json::parse(*line, nullptr, false);
      if (!j.is_object()) continue;
      if (j.value("role", "") == "router") model_ = new std::string(j.value("model", ""));
      if (j.value("event", "") == "ready") {
        router_ = new std::string(j.value("router", ""));
        http_ = new std::string(j.value("http", ""));
        break;
      }
    }
  }
  static void TearDownTestSuite() {
    if (up_ != nullptr) {
      up_->Signal(SIGTERM);
      up_->Wait(absl::Now() + absl::Seconds(15));
    }
    delete up_;
    for (std::string** s : {&router_, &http_, &model_}) {
      delete *s;
      *s = nullptr;
    }
    up_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(http_, nullptr) << "tandem up did not become ready";
    ASSERT_NE(model_, nullptr) << "no router ready line";
    port_ = PortOf(*http_);
    ASSERT_GT(port_, 0) << "the ready event has no http address: '" << *http_ << "'";
  }

  ParsedResponse Post(const std::string& path, const std::string& body) {
    return Exchange(port_, Request("POST", path, body));
  }
  ParsedResponse Get(const std::string& path) { return Exchange(port_, Request("GET", path, "")); }

  // The server still serves: /health and a real completion.
  void ExpectStillServing() {
    EXPECT_EQ(Get("/health").status, 200);
    const ParsedResponse r = Post("/v1/completions", R"({"prompt": "Once upon a time", "max_tokens": 3})");
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
  }

  int port_ = 0;
  static Subprocess* up_;
  static std::string* router_;
  static std::string* http_;
  static std::string* model_;
};
Subprocess* OpenAiClusterTest::up_ = nullptr;
std::string* OpenAiClusterTest::router_ = nullptr;
std::string* OpenAiClusterTest::http_ = nullptr;
std::string* OpenAiClusterTest::model_ = nullptr;

// A completion's or chat's usage: numbers that add up.
void ExpectUsage(const json& usage, int max_tokens) {
  ASSERT_TRUE(usage.is_object()) << usage;
  const int prompt = usage["prompt_tokens"], completion = usage["completion_tokens"],
            total = usage["total_tokens"];
  EXPECT_GT(prompt, 0) << usage;
  EXPECT_GT(completion, 0) << usage;
  EXPECT_LE(completion, max_tokens) << usage;
  EXPECT_EQ(total, prompt + completion) << usage;
}

// finish_reason is "stop" or "length"; "length" only when the budget ran out
// and "stop" whenever it did not (at the budget, an end token is "stop").
void ExpectFinish(const json& result, int max_tokens) {
  const std::string finish =
      result["finish_reason"].is_string() ? result["finish_reason"].get<std::string>() : "";
  EXPECT_THAT(finish, ::testing::AnyOf("stop", "length")) << result;
  ASSERT_TRUE(result["usage"].is_object()) << result;
  const int completion = result["usage"]["completion_tokens"];
  if (finish == "length") {
    EXPECT_EQ(completion, max_tokens) << result;
  }
  if (completion < max_tokens) {
    EXPECT_EQ(finish, "stop") << result;
  }
}

TEST_F(OpenAiClusterTest, OfficialOpenAiSdkWorksUnmodified) {
  const std::string refs = TANDEM_BINARY_DIR "/npm-refs";
  if (std::system(("\"" TANDEM_SOURCE_DIR "/scripts/npm_refs.sh\" \"" + refs + "\" >/dev/null").c_str()) !=
      0) {
    GTEST_SKIP() << "npm reference packages unavailable (scripts/npm_refs.sh failed; offline?)";
  }
  Subprocess node({"/usr/bin/node", TANDEM_SOURCE_DIR "/tests/openai_sdk_check.mjs", refs,
                   absl::StrCat("http://127.0.0.1:", port_, "/v1")});
  std::optional<std::string> line = node.ReadLine(absl::Now() + absl::Seconds(240));
  std::optional<int> status = node.Wait(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(line.has_value()) << "openai_sdk_check.mjs printed nothing (see its stderr above)";
  ASSERT_TRUE(status.has_value() && WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
  const json out = json::parse(*line, nullptr, false);
  ASSERT_TRUE(out.is_object()) << *line;
  SCOPED_TRACE(out.dump(2));
  constexpr int kMaxTokens = 12;  // as the script asks

  // models.list(): the served model, as the router's ready line names it.
  ASSERT_EQ(out["models"].size(), 1u);
  EXPECT_EQ(out["models"][0]["id"], *model_);
  EXPECT_EQ(out["models"][0]["object"], "model");

  const json& c = out["completion"];
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["model"], *model_);
  EXPECT_EQ(c["choices"], 1);
  EXPECT_FALSE(c["text"].get<std::string>().empty());
  ExpectFinish(c, kMaxTokens);
  ExpectUsage(c["usage"], kMaxTokens);

  const json& cs = out["completion_stream"];
  EXPECT_EQ(cs["objects"], json::array({"text_completion"}));
  EXPECT_EQ(cs["ids"].size(), 1u);  // one id across the stream
  EXPECT_GT(cs["text_chunks"].get<int>(), 0);
  EXPECT_EQ(cs["text"], c["text"]) << "greedy streaming differs from non-streaming";
  EXPECT_EQ(cs["finish_reason"], c["finish_reason"]);
  ExpectUsage(cs["usage"], kMaxTokens);
  EXPECT_EQ(cs["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"]);
  EXPECT_EQ(cs["usage"]["completion_tokens"], c["usage"]["completion_tokens"]);

  // No max_tokens: OpenAI's completions default of 16.
  const json& cd = out["completion_default"];
  ExpectUsage(cd["usage"], 16);
  ExpectFinish(cd, 16);
  // Greedy: the same path as the 12-token completion, continued.
  EXPECT_TRUE(absl::StartsWith(cd["text"].get<std::string>(), c["text"].get<std::string>())) << cd;
  if (c["finish_reason"] == "length") {
    EXPECT_GE(cd["usage"]["completion_tokens"].get<int>(), kMaxTokens);
  }
  EXPECT_EQ(cd["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"]);

  const json& chat = out["chat"];
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["model"], *model_);
  EXPECT_EQ(chat["role"], "assistant");
  EXPECT_FALSE(chat["text"].get<std::string>().empty());
  ExpectFinish(chat, kMaxTokens);
  ExpectUsage(chat["usage"], kMaxTokens);

  const json& chs = out["chat_stream"];
  EXPECT_EQ(chs["objects"], json::array({"chat.completion.chunk"}));
  EXPECT_EQ(chs["ids"].size(), 1u);
  EXPECT_EQ(chs["text"], chat["text"]) << "greedy streaming differs from non-streaming";
  EXPECT_EQ(chs["finish_reason"], chat["finish_reason"]);
  ExpectUsage(chs["usage"], kMaxTokens);
  EXPECT_EQ(chs["usage"]["prompt_tokens"], chat["usage"]["prompt_tokens"]);
  EXPECT_EQ(chs["usage"]["completion_tokens"], chat["usage"]["completion_tokens"]);

  // Errors surface as the SDK's APIError with the status and OpenAI's fields.
  const json& unknown = out["error_unknown_model"];
  EXPECT_EQ(unknown["thrown"], true);
  EXPECT_EQ(unknown["is_api_error"], true);
  EXPECT_EQ(unknown["status"], 404);
  EXPECT_EQ(unknown["class"], "NotFoundError");
  EXPECT_EQ(unknown["code"], "model_not_found");
  EXPECT_EQ(unknown["param"], "model");
  const json& n2 = out["error_n2"];
  EXPECT_EQ(n2["is_api_error"], true);
  EXPECT_EQ(n2["status"], 400);
  EXPECT_EQ(n2["class"], "BadRequestError");
  EXPECT_EQ(n2["type"], "invalid_request_error");
  EXPECT_EQ(n2["param"], "n");
  const json& stream_unknown = out["error_stream_unknown_model"];
  EXPECT_EQ(stream_unknown["is_api_error"], true);
  EXPECT_EQ(stream_unknown["status"], 404);
}

TEST_F(OpenAiClusterTest, MalformedRequestsGet4xxAndTheServerKeepsServing) {
  struct Case {
    const char* what;
    std::string path;
    std::string body;
    int status;
    const char* param;  // expected error.param, or null: not checked
  };
  const std::string c = "/v1/completions", chat = "/v1/chat/completions";
  const std::vector<Case> cases = {
      {"not JSON", c, "{\"prompt\": ", 400, nullptr},
      {"JSON but not an object", c, "[1, 2]", 400, nullptr},
      {"prompt of the wrong type", c, R"({"prompt": 5})", 400, "prompt"},
      {"prompt token id of the wrong type", c, R"({"prompt": [1, "x"]})", 400, "prompt"},
      {"max_tokens a string", c, R"({"prompt": "x", "max_tokens": "ten"})", 400, "max_tokens"},
      {"temperature a string", c, R"({"prompt": "x", "temperature": "hot"})", 400, "temperature"},
      {"stream a number", c, R"({"prompt": "x", "stream": 1})", 400, "stream"},
      {"stop a number", c, R"({"prompt": "x", "stop": 7})", 400, "stop"},
      {"messages a string", chat, R"({"messages": "hi"})", 400, "messages"},
      {"message without a role", chat, R"({"messages": [{"content": "hi"}]})", 400, "messages[0]"},
      {"model a number", c, R"({"model": 3, "prompt": "x"})", 400, "model"},
      {"unknown model", c, R"({"model": "no-such-model", "prompt": "x"})", 404, "model"},
      {"negative max_tokens", c, R"({"prompt": "x", "max_tokens": -5})", 400, "max_tokens"},
      {"zero max_completion_tokens", chat, R"({"messages": [{"role": "user", "content": "hi"}],
                                               "max_completion_tokens": 0})",
       400, "max_completion_tokens"},
      {"invalid UTF-8 in the prompt", c, "{\"prompt\": \"Once \xff\xfe upon\"}", 400, nullptr},
      {"truncated UTF-8 in the prompt", c, "{\"prompt\": \"caf\xc3\"}", 400, nullptr},
      {"lone surrogate escape in the prompt", c, R"({"prompt": "a\udc00b"})", 400, nullptr},
      {"n=2", c, R"({"prompt": "x", "n": 2})", 400, "n"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    ExpectErrorShape(Post(k.path, k.body), k.status, k.param);
  }
  {
    SCOPED_TRACE("2 MiB body");
    const std::string big = "{\"prompt\": \"" + std::string(2 << 20, 'a') + "\"}";
    ExpectErrorShape(Post(c, big), 413);
  }
  {
    SCOPED_TRACE("garbage request line");
    ParsedResponse r = Exchange(port_, "GARBAGE\r\n\r\n");
    ExpectErrorShape(r, 400);
    r = Exchange(port_, "\x01\x02\x03 / HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_GE(r.status, 400);
    EXPECT_LT(r.status, 500);
  }
  {
    SCOPED_TRACE("unknown path");
    ExpectErrorShape(Get("/v1/nothing"), 404);
  }
  ExpectStillServing();
}

TEST_F(OpenAiClusterTest, MetricsOnTheRouterAndOnAWorker) {
  ExpectStillServing();  // at least one request through the router
  const ParsedResponse m = Get("/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_THAT(m.head, HasSubstr("content-type: text/plain"));
  EXPECT_THAT(m.body, HasSubstr("tandem_router_ttft_seconds_bucket"));
  EXPECT_THAT(m.body, HasSubstr("tandem_router_ttft_seconds_count"));
  EXPECT_THAT(m.body, HasSubstr("tandem_http_requests_total{"));
  EXPECT_THAT(m.body, HasSubstr(R"(tandem_http_requests_total{endpoint="/v1/completions",code="200"})"));
  // Decode admission is on by default: once the decode worker has reported
  // its steps (a heartbeat) and the router's sweeper has published, the
  // idle cluster shows room for more requests.
  double room = 0;
  EXPECT_TRUE(tandem::testing::PollUntil(
      [&] {
        const ParsedResponse page = Get("/metrics");
        const std::string key = "\ntandem_router_decode_room ";
        const size_t at = page.body.find(key);
        room = at == std::string::npos ? 0 : std::atof(page.body.c_str() + at + key.size());
        return room > 0;
      },
      absl::Seconds(10), absl::Milliseconds(50)))
      << "tandem_router_decode_room " << room;
  EXPECT_EQ(Get("/ready").status, 200);

  // A worker with --metrics-port 0 prints where it serves /metrics.
  ASSERT_NE(router_, nullptr);
  Subprocess worker({TANDEM_BINARY, "decode", "--router", *router_, "--model", ModelSpec(), "--host",
                     "127.0.0.1", "--port", "0", "--threads", "1", "--metrics-port", "0"});
  std::string metrics_address;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (std::optional<std::string> line = worker.ReadLine(deadline)) {
    const json j = json::parse(*line, nullptr, false);
    if (j.is_object() && j.value("role", "") == "decode") {
      metrics_address = j.value("metrics", "");
      break;
    }
  }
  const int metrics_port = PortOf(metrics_address);
  ASSERT_GT(metrics_port, 0) << "the worker's ready line has no metrics address: '" << metrics_address << "'";
  const ParsedResponse wm = Exchange(metrics_port, Request("GET", "/metrics", ""));
  EXPECT_EQ(wm.status, 200);
  EXPECT_THAT(wm.head, HasSubstr("content-type: text/plain; version=0.0.4"));
  EXPECT_THAT(wm.body, Not(HasSubstr("tandem_http_requests_total")));  // its own registry, not the router's
  // Its engine's load: step time, batch, pool usage by tier.
  EXPECT_THAT(wm.body, HasSubstr("tandem_worker_decode_step_ms"));
  EXPECT_THAT(wm.body, HasSubstr("tandem_worker_decode_batch"));
  EXPECT_THAT(wm.body, HasSubstr("tandem_worker_kv_pool_blocks{tier=\"hbm\"}"));
  EXPECT_EQ(Exchange(metrics_port, Request("GET", "/health", "")).status, 200);
  worker.Signal(SIGTERM);
  EXPECT_TRUE(worker.Wait(absl::Now() + absl::Seconds(15)).has_value());
}

}  // namespace
}  // namespace tandem::router
