// `tandem pull` and hf:// model specs against tests/testing/fake_hub.py, a
// real HTTP server on 127.0.0.1 serving the hub's URL layout: downloads into
// a Hugging Face–shaped cache, resume with Range, hash verification, gated
// repos, offline reuse, and LoadModel("hf://...").
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/generate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hub/cache.h"
#include "hub/digest.h"
#include "hub/http.h"
#include "hub/hub.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/loader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/temp_dir.h"

namespace tandem::hub {
namespace {

namespace fs = std::filesystem;
using ::tandem::testing::StatusIs;
using ::tandem::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using Json = nlohmann::json;
using OJson = nlohmann::ordered_json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// GPT-2's byte-to-unicode map: the 256 single-character tokens of a
// byte-level BPE vocabulary.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool direct = std::find(printable.begin(), printable.end(), b) != printable.end();
    const int cp = direct ? b : 256 + extra++;
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = utf8;
  }
  return out;
}

constexpr int32_t kVocab = 257;  // 256 bytes + <|endoftext|>

// A tiny Llama checkpoint (1 layer, hidden 16) with a byte-level BPE
// tokenizer.json, as a hub repo folder: config.json, tokenizer.json,
// tokenizer_config.json, model.safetensors (F32, deterministic weights).
void WriteTinyCheckpoint(const std::string& dir) {
  const int hidden = 16, ffn = 32, kv_dim = 8;
  WriteFile(dir + "/config.json", OJson{{"architectures", {"LlamaForCausalLM"}},
                                        {"hidden_size", hidden},
                                        {"num_hidden_layers", 1},
                                        {"num_attention_heads", 2},
                                        {"num_key_value_heads", 1},
                                        {"intermediate_size", ffn},
                                        {"vocab_size", kVocab},
                                        {"rms_norm_eps", 1e-5},
                                        {"rope_theta", 10000.0},
                                        {"max_position_embeddings", 256},
                                        {"tie_word_embeddings", true},
                                        {"hidden_act", "silu"},
                                        {"torch_dtype", "float32"},
                                        {"eos_token_id", 256}}
                                      .dump(2));
  OJson vocab = OJson::object();
  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  for (int i = 0; i < 256; ++i) vocab[alphabet[i]] = i;
  const OJson tokenizer = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 256},
         {"content", "<|endoftext|>"},
         {"single_word", false},
         {"lstrip", false},
         {"rstrip", false},
         {"normalized", false},
         {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", OJson::array()}}}};
  WriteFile(dir + "/tokenizer.json", tokenizer.dump());
  WriteFile(dir + "/tokenizer_config.json",
            OJson{{"bos_token", nullptr}, {"eos_token", "<|endoftext|>"}, {"model_max_length", 256}}.dump());

  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    float fill;  // 0: pseudo-random in [-0.1, 0.1)
  };
  std::vector<Tensor> tensors = {{"model.embed_tokens.weight", {kVocab, hidden}, 0},
                                 {"model.norm.weight", {hidden}, 1},
                                 {"model.layers.0.input_layernorm.weight", {hidden}, 1},
                                 {"model.layers.0.self_attn.q_proj.weight", {hidden, hidden}, 0},
                                 {"model.layers.0.self_attn.k_proj.weight", {kv_dim, hidden}, 0},
                                 {"model.layers.0.self_attn.v_proj.weight", {kv_dim, hidden}, 0},
                                 {"model.layers.0.self_attn.o_proj.weight", {hidden, hidden}, 0},
                                 {"model.layers.0.post_attention_layernorm.weight", {hidden}, 1},
                                 {"model.layers.0.mlp.gate_proj.weight", {ffn, hidden}, 0},
                                 {"model.layers.0.mlp.up_proj.weight", {ffn, hidden}, 0},
                                 {"model.layers.0.mlp.down_proj.weight", {hidden, ffn}, 0}};
  OJson header = OJson::object();
  std::string data;
  uint32_t state = 12345;
  for (const Tensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const size_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      state = state * 1664525u + 1013904223u;
      const float v = t.fill != 0 ? t.fill : (static_cast<float>(state >> 8) / (1 << 24) - 0.5f) * 0.2f;
      data.append(reinterpret_cast<const char*>(&v), sizeof(v));
    }
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(h.size()) >> (8 * i));
  WriteFile(dir + "/model.safetensors", out + h + data);
}

// tests/testing/fake_hub.py as a child process.
class FakeHub {
 public:
  FakeHub(const std::string& root, const std::string& log, std::vector<std::string> flags) : log_(log) {
    std::vector<std::string> argv = {
        "/usr/bin/python3", TANDEM_SOURCE_DIR "/tests/testing/fake_hub.py", "--root", root, "--log", log};
    argv.insert(argv.end(), flags.begin(), flags.end());
    proc_ = std::make_unique<tandem::testing::Subprocess>(argv);
    const auto line = proc_->ReadLine(absl::Now() + absl::Seconds(20));
    if (line.has_value()) {
      const Json j = Json::parse(*line, nullptr, false);
      if (j.is_object() && j.contains("port")) port_ = j["port"].get<int>();
    }
  }
  bool ok() const { return port_ > 0; }
  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }
  // One JSON object per request served so far.
  std::vector<Json> Requests() const {
    std::vector<Json> out;
    std::istringstream in(ReadFile(log_));
    for (std::string line; std::getline(in, line);) out.push_back(Json::parse(line));
    return out;
  }
  void Stop() { proc_.reset(); }  // SIGKILL and reap

 private:
  std::string log_;
  std::unique_ptr<tandem::testing::Subprocess> proc_;
  int port_ = 0;
};

class PullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.path() + "/repos";
    cache_ = tmp_.path() + "/cache";
    log_ = tmp_.path() + "/hub.log";
    WriteTinyCheckpoint(root_ + "/org/tiny");
  }

  std::unique_ptr<FakeHub> StartHub(std::vector<std::string> flags = {}) {
    auto hub = std::make_unique<FakeHub>(root_, log_, std::move(flags));
    EXPECT_TRUE(hub->ok()) << "fake_hub.py did not print its port";
    return hub;
  }

  PullOptions Options(const FakeHub& hub, std::string token = "") const {
    PullOptions o;
    o.endpoint = hub.endpoint();
    o.cache_dir = cache_;
    o.token = std::move(token);
    o.progress = ProgressMode::kNone;
    return o;
  }

  // The commit the hub reports for org/tiny@main, asked independently of Pull.
  std::string HubCommit(const FakeHub& hub, const std::string& repo = "org/tiny",
                        const std::string& token = "") {
    auto http = HttpClient::Create({.bearer_token = token});
    EXPECT_OK(http);
    auto r = (*http)->Get(hub.endpoint() + "/api/models/" + repo + "/revision/main");
    EXPECT_OK(r);
    return Json::parse(r->body)["sha"].get<std::string>();
  }

  std::string RepoDir(const std::string& repo = "org/tiny") const {
    return cache_ + "/" + RepoFolderName(repo);
  }

  TempDir tmp_{"pull_test_"};
  std::string root_, cache_, log_;
};

TEST(HubSpecTest, ParsesSpecs) {
  ASSERT_OK_AND_ASSIGN(HfSpec a, ParseHfSpec("hf://HuggingFaceTB/SmolLM2-135M"));
  EXPECT_EQ(a.repo_id, "HuggingFaceTB/SmolLM2-135M");
  EXPECT_EQ(a.revision, "main");
  EXPECT_EQ(a.file, "");
  ASSERT_OK_AND_ASSIGN(HfSpec b, ParseHfSpec("hf://org/repo-GGUF/q/model.Q4_K_M.gguf@v1.0"));
  EXPECT_EQ(b.repo_id, "org/repo-GGUF");
  EXPECT_EQ(b.revision, "v1.0");
  EXPECT_EQ(b.file, "q/model.Q4_K_M.gguf");
  ASSERT_OK_AND_ASSIGN(HfSpec c, ParseHfSpec("hf://gpt2@refs/pr/1"));
  EXPECT_EQ(c.repo_id, "gpt2");
  EXPECT_EQ(c.revision, "refs/pr/1");
  for (const char* bad : {"hf://", "hf://org/..", "hf://org/re po", "hf://org/repo@", "hf://org/repo@../x",
                          "hf:///repo", "org/repo", "hf://org/repo/../../etc/passwd"}) {
    EXPECT_THAT(ParseHfSpec(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_TRUE(IsHfSpec("hf://a/b"));
  EXPECT_FALSE(IsHfSpec("synthetic:tiny"));
  ASSERT_OK_AND_ASSIGN(std::string same, ResolveModelSpec("synthetic:tiny"));
  EXPECT_EQ(same, "synthetic:tiny");
}

TEST(HubSpecTest, SelectsTheFilesAModelNeeds) {
  const std::vector<std::string> sharded = {".gitattributes",
                                            "README.md",
                                            "config.json",
                                            "generation_config.json",
                                            "tokenizer.json",
                                            "tokenizer_config.json",
                                            "model.safetensors.index.json",
                                            "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors",
                                            "consolidated.safetensors",
                                            "pytorch_model.bin",
                                            "original/x.pth"};
  ASSERT_OK_AND_ASSIGN(auto s, SelectFiles(sharded, {}));
  // The shards come from the index once it is downloaded, not from the listing.
  EXPECT_THAT(s, UnorderedElementsAre("config.json", "generation_config.json", "tokenizer.json",
                                      "tokenizer_config.json", "model.safetensors.index.json"));
  ASSERT_OK_AND_ASSIGN(auto single,
                       SelectFiles({"config.json", "model.safetensors", "extra.safetensors"}, {}));
  EXPECT_THAT(single, UnorderedElementsAre("config.json", "model.safetensors"));
  ASSERT_OK_AND_ASSIGN(auto gguf, SelectFiles({"README.md", "m.Q8_0.gguf"}, {}));
  EXPECT_THAT(gguf, UnorderedElementsAre("m.Q8_0.gguf"));
  EXPECT_THAT(SelectFiles({"m.Q8_0.gguf", "m.Q4_K_M.gguf"}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("m.Q4_K_M.gguf"), HasSubstr("--include"))));
  ASSERT_OK_AND_ASSIGN(auto inc, SelectFiles({"m.Q8_0.gguf", "m.Q4_K_M.gguf", "config.json"}, {"*Q4_K_M*"}));
  EXPECT_THAT(inc, UnorderedElementsAre("m.Q4_K_M.gguf"));
  EXPECT_THAT(SelectFiles({"README.md"}, {}), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(SelectFiles({"README.md"}, {"*.gguf"}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("*.gguf")));
}

TEST(HubDigestTest, KnownVectors) {
  // FIPS 180-2 "abc"; `printf 'hello\n' | git hash-object --stdin`.
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(GitBlobSha1Hex("hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
  TempDir dir("pull_test_");
  WriteFile(dir.path() + "/f", "hello\n");
  ASSERT_OK_AND_ASSIGN(std::string sha1, FileGitBlobSha1Hex(dir.path() + "/f"));
  EXPECT_EQ(sha1, "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_THAT(FileSha256Hex(dir.path() + "/none"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(PullTest, DownloadsIntoAHuggingFaceShapedCache) {
  auto hub = StartHub();
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/tiny"));
  ASSERT_OK_AND_ASSIGN(PullResult r, Pull(spec, Options(*hub)));
  const std::string commit = HubCommit(*hub);
  EXPECT_EQ(r.commit, commit);
  EXPECT_EQ(r.snapshot_dir, RepoDir() + "/snapshots/" + commit);
  EXPECT_EQ(r.model_path, r.snapshot_dir);
  EXPECT_FALSE(r.from_cache_offline);
  EXPECT_THAT(r.files, UnorderedElementsAre("config.json", "model.safetensors", "tokenizer.json",
                                            "tokenizer_config.json"));
  int64_t total = 0;
  for (const std::string& f : r.files) total += static_cast<int64_t>(fs::file_size(root_ + "/org/tiny/" + f));
  EXPECT_EQ(r.downloaded_bytes, total);
  // refs/main holds the commit, without a newline.
  EXPECT_EQ(ReadFile(RepoDir() + "/refs/main"), commit);
  // Each snapshot file is a relative link to blobs/<etag> with the exact bytes:
  // sha256 for LFS files, git's blob sha1 for the others.
  for (const std::string& f : r.files) {
    const std::string link = r.snapshot_dir + "/" + f;
    ASSERT_TRUE(fs::is_symlink(link)) << link;
    const std::string bytes = ReadFile(root_ + "/org/tiny/" + f);
    const std::string etag = f.ends_with(".safetensors") ? Sha256Hex(bytes) : GitBlobSha1Hex(bytes);
    EXPECT_EQ(fs::read_symlink(link).string(), "../../blobs/" + etag) << f;
    EXPECT_EQ(ReadFile(link), bytes) << f;
  }
  // Nothing half-written stays behind.
  for (const auto& e : fs::directory_iterator(RepoDir() + "/blobs")) {
    EXPECT_FALSE(e.path().string().ends_with(".incomplete")) << e.path();
  }
  // The LFS file came through the redirect, without credentials in play.
  bool via_cdn = false;
  for (const Json& q : hub->Requests()) via_cdn |= q["path"].get<std::string>().starts_with("/cdn/org/tiny/");
  EXPECT_TRUE(via_cdn);

  // The downloaded checkpoint loads: weights always; the whole model (with
  // tokenizer.json) once model/ supports it, and then it generates.
  ASSERT_OK_AND_ASSIGN(auto weights, model::LoadHfCheckpoint(r.snapshot_dir));
  EXPECT_EQ(weights->config.vocab_size, kVocab);
  EXPECT_EQ(weights->config.num_layers, 1);
  ::setenv("HF_ENDPOINT", hub->endpoint().c_str(), 1);
  ::setenv("HF_HUB_CACHE", cache_.c_str(), 1);
  auto loaded = model::LoadModel("hf://org/tiny");
  if (absl::IsUnimplemented(loaded.status()) &&
      loaded.status().message().find("tokenizer") != absl::string_view::npos) {
    GTEST_SKIP() << "LoadModel(DIR) does not read tokenizer.json yet: " << loaded.status();
  }
  ASSERT_OK(loaded);
  auto backend = kernels::CreateCpuBackend({.num_threads = 1});
  ASSERT_OK_AND_ASSIGN(auto llama,
                       model::LlamaModel::Create((*loaded)->config, (*loaded)->weights, backend.get()));
  ASSERT_OK_AND_ASSIGN(engine::GenerateResult g,
                       engine::GenerateOne(*llama, *backend, *(*loaded)->tokenizer,
                                           {.prompt = "Hello", .max_tokens = 4, .stop_at_eos = false}));
  EXPECT_EQ(g.generated_token_ids.size(), 4u);
}

TEST_F(PullTest, ResumesAnInterruptedDownloadWithARangeRequest) {
  constexpr int kCut = 5000;
  auto hub = StartHub({"--cut-after", std::to_string(kCut)});
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/tiny"));
  const std::string bytes = ReadFile(root_ + "/org/tiny/model.safetensors");
  ASSERT_GT(bytes.size(), 2u * kCut);
  const std::string commit = HubCommit(*hub);
  const std::string etag = Sha256Hex(bytes);

  EXPECT_THAT(Pull(spec, Options(*hub)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("model.safetensors")));
  // The prefix stays for the next pull; no blob, no link, no ref yet.
  const std::string incomplete = RepoDir() + "/blobs/" + etag + ".incomplete";
  ASSERT_TRUE(fs::exists(incomplete));
  EXPECT_EQ(fs::file_size(incomplete), static_cast<uintmax_t>(kCut));
  EXPECT_FALSE(fs::exists(RepoDir() + "/blobs/" + etag));
  EXPECT_FALSE(fs::is_symlink(RepoDir() + "/snapshots/" + commit + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(RepoDir() + "/refs/main"));

  ASSERT_OK_AND_ASSIGN(PullResult r, Pull(spec, Options(*hub)));
  EXPECT_EQ(ReadFile(r.snapshot_dir + "/model.safetensors"), bytes);
  EXPECT_FALSE(fs::exists(incomplete));
  EXPECT_EQ(r.downloaded_bytes, static_cast<int64_t>(bytes.size()) - kCut);  // the rest only
  int ranged = 0;
  for (const Json& q : hub->Requests()) {
    if (q["method"] == "GET" && q["path"].get<std::string>().starts_with("/cdn/") && q["range"].is_string()) {
      EXPECT_EQ(q["range"], absl::StrCat("bytes=", kCut, "-"));
      EXPECT_EQ(q["status"], 206);
      ++ranged;
    }
  }
  EXPECT_EQ(ranged, 1);
}

TEST_F(PullTest, RejectsACorruptedFile) {
  auto hub = StartHub({"--corrupt", "model.safetensors"});
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/tiny"));
  const std::string etag = Sha256Hex(ReadFile(root_ + "/org/tiny/model.safetensors"));
  const std::string commit = HubCommit(*hub);
  EXPECT_THAT(
      Pull(spec, Options(*hub)),
      StatusIs(absl::StatusCode::kDataLoss, AllOf(HasSubstr("model.safetensors"), HasSubstr("sha256"))));
  // Neither the blob nor its invalid prefix stays, and nothing links to it.
  EXPECT_FALSE(fs::exists(RepoDir() + "/blobs/" + etag));
  EXPECT_FALSE(fs::exists(RepoDir() + "/blobs/" + etag + ".incomplete"));
  EXPECT_FALSE(fs::is_symlink(RepoDir() + "/snapshots/" + commit + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(RepoDir() + "/refs/main"));
  // Offline, the incomplete snapshot is not served.
  hub->Stop();
  EXPECT_THAT(Pull(spec, Options(*hub)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no complete cached")));
}

TEST_F(PullTest, GatedRepoNeedsHfToken) {
  WriteTinyCheckpoint(root_ + "/org/gated");
  // LFS bytes are redirected to "localhost", another host: the token must
  // not follow.
  auto hub = StartHub({"--gated", "org/gated", "--token", "hf_secret", "--cdn-host", "localhost"});
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/gated"));
  ::unsetenv("HF_TOKEN");
  EXPECT_THAT(Pull(spec, Options(*hub)),
              StatusIs(absl::StatusCode::kPermissionDenied, AllOf(HasSubstr("HF_TOKEN"), HasSubstr("401"))));
  EXPECT_THAT(Pull(spec, Options(*hub, "hf_wrong")),
              StatusIs(absl::StatusCode::kPermissionDenied, AllOf(HasSubstr("HF_TOKEN"), HasSubstr("403"))));
  ASSERT_OK_AND_ASSIGN(PullResult r, Pull(spec, Options(*hub, "hf_secret")));
  EXPECT_EQ(ReadFile(r.snapshot_dir + "/model.safetensors"),
            ReadFile(root_ + "/org/gated/model.safetensors"));
  int cdn = 0;
  for (const Json& q : hub->Requests()) {
    const std::string path = q["path"];
    if (path.starts_with("/cdn/")) {
      ++cdn;
      EXPECT_FALSE(q["auth"].get<bool>()) << "token sent to the CDN host: " << q.dump();
      EXPECT_THAT(q["host"].get<std::string>(), HasSubstr("localhost"));
    } else if (path.starts_with("/org/gated/resolve/") && q["status"] != 401 && q["status"] != 403) {
      EXPECT_TRUE(q["auth"].get<bool>()) << q.dump();
    }
  }
  EXPECT_EQ(cdn, 1);
  // HF_TOKEN from the environment works the same.
  ::setenv("HF_TOKEN", "hf_secret", 1);
  fs::remove_all(cache_);
  EXPECT_OK(Pull(spec, Options(*hub)));
  ::unsetenv("HF_TOKEN");
}

TEST_F(PullTest, NotFoundNamesWhatIsMissing) {
  auto hub = StartHub();
  ASSERT_OK_AND_ASSIGN(HfSpec missing_repo, ParseHfSpec("hf://org/nope"));
  EXPECT_THAT(Pull(missing_repo, Options(*hub)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("org/nope")));
  ASSERT_OK_AND_ASSIGN(HfSpec missing_rev, ParseHfSpec("hf://org/tiny@v9"));
  EXPECT_THAT(Pull(missing_rev, Options(*hub)),
              StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr("org/tiny"), HasSubstr("v9"))));
  ASSERT_OK_AND_ASSIGN(HfSpec missing_file, ParseHfSpec("hf://org/tiny/none.gguf"));
  EXPECT_THAT(Pull(missing_file, Options(*hub)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("none.gguf")));
}

TEST_F(PullTest, ShardedCheckpointFetchesOnlyTheIndexedShards) {
  const std::string repo = root_ + "/org/sharded";
  WriteTinyCheckpoint(repo);
  // Two "shards" named by an index, plus a consolidated copy not to fetch.
  fs::rename(repo + "/model.safetensors", repo + "/model-00001-of-00002.safetensors");
  fs::copy_file(repo + "/model-00001-of-00002.safetensors", repo + "/consolidated.safetensors");
  WriteFile(repo + "/model-00002-of-00002.safetensors", ReadFile(repo + "/consolidated.safetensors") + "x");
  WriteFile(repo + "/model.safetensors.index.json",
            Json{{"weight_map",
                  {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}}
                .dump());
  auto hub = StartHub();
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/sharded"));
  ASSERT_OK_AND_ASSIGN(PullResult r, Pull(spec, Options(*hub)));
  EXPECT_THAT(r.files,
              UnorderedElementsAre("config.json", "tokenizer.json", "tokenizer_config.json",
                                   "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                   "model-00002-of-00002.safetensors"));
  EXPECT_FALSE(fs::exists(r.snapshot_dir + "/consolidated.safetensors"));
  // Pinned to the commit: no ref is written for a commit hash.
  ASSERT_OK_AND_ASSIGN(HfSpec pinned, ParseHfSpec("hf://org/sharded@" + r.commit));
  fs::remove(RepoDir("org/sharded") + "/refs/main");
  ASSERT_OK_AND_ASSIGN(PullResult again, Pull(pinned, Options(*hub)));
  EXPECT_EQ(again.snapshot_dir, r.snapshot_dir);
  EXPECT_EQ(again.downloaded_bytes, 0);
  EXPECT_FALSE(fs::exists(RepoDir("org/sharded") + "/refs/main"));
}

TEST_F(PullTest, SecondPullWorksOfflineFromTheCache) {
  auto hub = StartHub();
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/tiny"));
  ASSERT_OK_AND_ASSIGN(PullResult first, Pull(spec, Options(*hub)));
  const size_t requests = hub->Requests().size();
  // A second pull while the hub is up costs one API call and no download.
  ASSERT_OK_AND_ASSIGN(PullResult warm, Pull(spec, Options(*hub)));
  EXPECT_EQ(warm.downloaded_bytes, 0);
  EXPECT_EQ(hub->Requests().size(), requests + 1);
  hub->Stop();
  ASSERT_OK_AND_ASSIGN(PullResult offline, Pull(spec, Options(*hub)));
  EXPECT_TRUE(offline.from_cache_offline);
  EXPECT_EQ(offline.snapshot_dir, first.snapshot_dir);
  EXPECT_EQ(offline.files, first.files);
  // A repo never pulled is not in the cache.
  ASSERT_OK_AND_ASSIGN(HfSpec other, ParseHfSpec("hf://org/other"));
  EXPECT_THAT(Pull(other, Options(*hub)), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("org/other")));
  // A dangling link (a blob deleted behind our back) makes the snapshot incomplete.
  fs::remove(fs::canonical(first.snapshot_dir + "/model.safetensors"));
  EXPECT_THAT(Pull(spec, Options(*hub)), StatusIs(absl::StatusCode::kUnavailable));
}

// Several processes loading the same hf:// model at once (as `tandem up`'s
// workers do) share one download: the blob lock serializes them.
TEST_F(PullTest, ConcurrentPullsDownloadEachBlobOnce) {
  auto hub = StartHub();
  ASSERT_OK_AND_ASSIGN(HfSpec spec, ParseHfSpec("hf://org/tiny"));
  std::vector<absl::StatusOr<PullResult>> results(4, absl::UnknownError("not run"));
  {
    std::vector<std::thread> threads;
    for (auto& r : results) threads.emplace_back([&, out = &r] { *out = Pull(spec, Options(*hub)); });
    for (std::thread& t : threads) t.join();
  }
  for (const auto& r : results) {
    ASSERT_OK(r);
    EXPECT_EQ(ReadFile(r->snapshot_dir + "/model.safetensors"),
              ReadFile(root_ + "/org/tiny/model.safetensors"));
  }
  int cdn_gets = 0;
  for (const Json& q : hub->Requests()) {
    cdn_gets += q["method"] == "GET" && q["path"].get<std::string>().starts_with("/cdn/");
  }
  EXPECT_EQ(cdn_gets, 1);
}

// `tandem pull` end to end: prints the snapshot directory; then offline.
TEST_F(PullTest, CliPullPrintsTheSnapshotDirAndWorksOffline) {
  auto hub = StartHub();
  ::setenv("HF_ENDPOINT", hub->endpoint().c_str(), 1);
  auto run = [&](std::vector<std::string> args) -> std::pair<int, std::string> {
    std::vector<std::string> argv = {TANDEM_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    tandem::testing::Subprocess p(argv);
    std::string out;
    while (auto line = p.ReadLine(absl::Now() + absl::Seconds(60))) out += *line + "\n";
    const auto status = p.Wait(absl::Now() + absl::Seconds(60));
    return {status.has_value() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1, out};
  };
  const auto help = run({"pull", "--help"});
  EXPECT_EQ(help.first, 0);
  EXPECT_THAT(help.second, AllOf(HasSubstr("hf://"), HasSubstr("--include"), HasSubstr("--cache-dir")));

  const std::string snapshot = RepoDir() + "/snapshots/" + HubCommit(*hub);
  const auto pulled = run({"pull", "hf://org/tiny", "--cache-dir", cache_});
  EXPECT_EQ(pulled.first, 0);
  EXPECT_EQ(pulled.second, snapshot + "\n");
  EXPECT_TRUE(fs::is_symlink(snapshot + "/model.safetensors"));

  hub->Stop();
  const auto offline = run({"pull", "hf://org/tiny", "--cache-dir", cache_});
  EXPECT_EQ(offline.first, 0);
  EXPECT_EQ(offline.second, snapshot + "\n");

  const auto bad = run({"pull", "org/tiny", "--cache-dir", cache_});
  EXPECT_EQ(bad.first, 1);
  EXPECT_EQ(bad.second, "");
}

}  // namespace
}  // namespace tandem::hub
