#include "hub/hub.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "hub/cache.h"
#include "hub/digest.h"
#include "hub/http.h"

namespace tandem::hub {
namespace {

constexpr const char* kDefaultEndpoint = "https://huggingface.co";
constexpr const char* kMetadataFiles[] = {"config.json", "generation_config.json", "tokenizer.json",
                                          "tokenizer_config.json"};
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

bool ValidNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

// A relative path of safe segments: no "", ".", ".." or odd characters. Guards
// the cache against names from the spec or the server.
bool SafeRelativePath(std::string_view path, bool allow_slash) {
  if (path.empty()) return false;
  for (absl::string_view seg : absl::StrSplit(absl::string_view(path.data(), path.size()), '/')) {
    if (seg.empty() || seg == "." || seg == ".." || (!allow_slash && seg.size() != path.size())) return false;
    for (char c : seg) {
      if (!ValidNameChar(c) && c != '+' && c != '@' && c != ' ') return false;
    }
  }
  return true;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;  // follows links: a dangling one is absent
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

// Percent-encodes everything but unreserved characters (and '/' when kept).
std::string UrlEncode(std::string_view s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// "W/\"abc\"" -> "abc".
std::string NormalizeEtag(std::string_view etag) {
  if (etag.starts_with("W/")) etag.remove_prefix(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return std::string(etag);
}

bool IsHex(std::string_view s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) {
           return absl::ascii_isxdigit(static_cast<unsigned char>(c)) &&
                  !absl::ascii_isupper(static_cast<unsigned char>(c));
         });
}

std::string HumanBytes(int64_t n) {
  if (n < 1024) return absl::StrCat(n, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

// Maps an HTTP error status to a Status naming `what` and, for 401/403, HF_TOKEN.
absl::Status HttpError(const HttpResponse& r, const std::string& what, bool token_sent) {
  std::string detail = r.Header("x-error-message");
  if (detail.empty() && r.body.size() < 300) detail = std::string(absl::StripAsciiWhitespace(r.body));
  const std::string suffix = detail.empty() ? "" : absl::StrCat(" (", detail, ")");
  if (r.status == 401 || r.status == 403) {
    return absl::PermissionDeniedError(absl::StrCat(
        what, ": access denied, HTTP ", r.status, suffix, "; ",
        token_sent
            ? "the token in HF_TOKEN does not grant access to this repo (accept its terms on the hub?)"
            : "the repo is gated or private: set HF_TOKEN to a Hugging Face access token with access"));
  }
  if (r.status == 404) return absl::NotFoundError(absl::StrCat(what, ": not found, HTTP 404", suffix));
  if (r.status == 429 || r.status >= 500) {
    return absl::UnavailableError(absl::StrCat(what, ": HTTP ", r.status, suffix));
  }
  return absl::UnknownError(absl::StrCat(what, ": unexpected HTTP ", r.status, suffix));
}

// Progress on stderr: a redrawn bar, or one line per file. The bar is
// terminal output, not a log (drawn in place, on a TTY only), so it is
// written to std::cerr directly; each finished file is a log line.
class Progress {
 public:
  Progress(ProgressMode mode, std::string repo) : repo_(std::move(repo)) {
    if (mode == ProgressMode::kAuto)
      mode = ::isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kLines;
    mode_ = mode;
  }

  void Start(const std::string& file, int64_t total, int64_t resume_from) {
    file_ = file;
    total_ = total;
    last_draw_ = absl::InfinitePast();
    if (mode_ == ProgressMode::kBar) Update(resume_from, /*force=*/true);
  }

  void Update(int64_t bytes, bool force = false) {
    if (mode_ != ProgressMode::kBar) return;
    const absl::Time now = absl::Now();
    if (!force && now - last_draw_ < absl::Milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const double frac = total_ > 0 ? std::min(1.0, static_cast<double>(bytes) / total_) : 1.0;
    const int filled = static_cast<int>(frac * kWidth);
    std::string name = file_.size() > 32 ? "..." + file_.substr(file_.size() - 29) : file_;
    std::cerr << absl::StrFormat("\r%-32s [%s%s] %3d%% %s / %s\x1b[K", name, std::string(filled, '#'),
                                 std::string(kWidth - filled, '.'), static_cast<int>(frac * 100),
                                 HumanBytes(bytes), HumanBytes(total_))
              << std::flush;
  }

  void Done(const std::string& file, const std::string& how) {
    if (mode_ == ProgressMode::kNone) return;
    if (mode_ == ProgressMode::kBar) std::cerr << "\r\x1b[K" << std::flush;
    LOG(INFO) << "hf://" << repo_ << " " << file << ": " << how;
  }

 private:
  ProgressMode mode_;
  std::string repo_;
  std::string file_;
  int64_t total_ = 0;
  absl::Time last_draw_;
};

// An flock held until destruction.
class FileLock {
 public:
  static absl::StatusOr<std::unique_ptr<FileLock>> Acquire(const std::string& path, absl::Duration timeout) {
    TANDEM_RETURN_IF_ERROR(MakeDirs(std::filesystem::path(path).parent_path().string()));
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      return absl::InternalError(absl::StrCat("cannot open lock ", path, ": ", std::strerror(errno)));
    const absl::Time deadline = absl::Now() + timeout;
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) {
        const int err = errno;
        ::close(fd);
        return absl::InternalError(absl::StrCat("flock ", path, ": ", std::strerror(err)));
      }
      if (absl::Now() >= deadline) {
        ::close(fd);
        return absl::DeadlineExceededError(absl::StrCat("another process has held ", path,
                                                        " for longer than ", absl::FormatDuration(timeout)));
      }
      // flock has no timed variant; the holder is downloading, poll gently.
      absl::SleepFor(absl::Milliseconds(200));
    }
    return std::unique_ptr<FileLock>(new FileLock(fd));
  }
  ~FileLock() { ::close(fd_); }  // releases the lock

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

// Verifies a downloaded file against the hub's etag and size.
absl::Status Verify(const std::string& path, const std::string& file, const std::string& etag, int64_t size) {
  const int64_t got = FileSize(path);
  if (got != size) {
    return absl::DataLossError(absl::StrCat(file, ": downloaded ", got, " bytes, the hub says ", size));
  }
  std::string actual, kind;
  if (IsHex(etag, 64)) {
    kind = "sha256";
    TANDEM_ASSIGN_OR_RETURN(actual, FileSha256Hex(path));
  } else if (IsHex(etag, 40)) {
    kind = "git blob sha1";
    TANDEM_ASSIGN_OR_RETURN(actual, FileGitBlobSha1Hex(path));
  } else {
    return absl::OkStatus();  // an etag of unknown form: size alone
  }
  if (actual != etag) {
    return absl::DataLossError(
        absl::StrCat(file, ": ", kind, " mismatch: the hub says ", etag, ", the download has ", actual));
  }
  return absl::OkStatus();
}

struct RevisionInfo {
  std::string commit;
  std::vector<std::string> siblings;
};

// A complete cached snapshot (see hub.h), checked without the network.
bool SnapshotComplete(const std::string& dir, const std::vector<std::string>& include) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return false;
  std::vector<std::string> files;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec)) continue;
    const std::string path = it->path().string();
    if (!Exists(path)) return false;  // a dangling link
    files.push_back(path.substr(dir.size() + 1));
  }
  if (ec) return false;
  auto has = [&](std::string_view f) { return std::find(files.begin(), files.end(), f) != files.end(); };
  if (!include.empty()) {
    for (const std::string& glob : include) {
      if (std::none_of(files.begin(), files.end(),
                       [&](const std::string& f) { return ::fnmatch(glob.c_str(), f.c_str(), 0) == 0; })) {
        return false;
      }
    }
    return true;
  }
  if (std::any_of(files.begin(), files.end(), [](const std::string& f) { return f.ends_with(".gguf"); })) {
    return true;
  }
  if (!has("config.json")) return false;
  if (has(kIndexFile)) {
    std::ifstream in(absl::StrCat(dir, "/", kIndexFile));
    const auto index = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object())
      return false;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string() || !has(shard.get<std::string>())) return false;
    }
    return true;
  }
  return std::any_of(files.begin(), files.end(),
                     [](const std::string& f) { return f.ends_with(".safetensors"); });
}

// What LoadModel opens for a snapshot: spec.file, the one .gguf of a repo
// without config.json, or the directory.
std::string ModelPath(const std::string& snapshot_dir, const HfSpec& spec) {
  if (!spec.file.empty()) return absl::StrCat(snapshot_dir, "/", spec.file);
  std::error_code ec;
  if (Exists(snapshot_dir + "/config.json")) return snapshot_dir;
  std::vector<std::string> ggufs;
  for (const auto& e : std::filesystem::directory_iterator(snapshot_dir, ec)) {
    if (e.path().extension() == ".gguf") ggufs.push_back(e.path().string());
  }
  return ggufs.size() == 1 ? ggufs[0] : snapshot_dir;
}

class Puller {
 public:
  Puller(const HfSpec& spec, PullOptions options, std::unique_ptr<HttpClient> http)
      : spec_(spec),
        options_(std::move(options)),
        http_(std::move(http)),
        cache_(options_.cache_dir, spec.repo_id),
        progress_(options_.progress, spec.repo_id) {}

  absl::StatusOr<RevisionInfo> FetchRevision() {
    const std::string url = absl::StrCat(options_.endpoint, "/api/models/", spec_.repo_id, "/revision/",
                                         UrlEncode(spec_.revision, /*keep_slash=*/false));
    TANDEM_ASSIGN_OR_RETURN(HttpResponse r, http_->Get(url));
    const std::string what = absl::StrCat("hf://", spec_.repo_id, "@", spec_.revision);
    if (r.status != 200)
      return HttpError(r, absl::StrCat(what, " (repo or revision)"), !options_.token.empty());
    const auto j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("sha") || !j["sha"].is_string() ||
        !IsCommitHash(j["sha"].get<std::string>())) {
      return absl::UnavailableError(
          absl::StrCat(what, ": ", url, " did not answer JSON with a commit \"sha\""));
    }
    RevisionInfo info;
    info.commit = j["sha"].get<std::string>();
    if (j.contains("siblings") && j["siblings"].is_array()) {
      for (const auto& s : j["siblings"]) {
        if (s.is_object() && s.contains("rfilename") && s["rfilename"].is_string()) {
          info.siblings.push_back(s["rfilename"].get<std::string>());
        }
      }
    }
    return info;
  }

  absl::StatusOr<PullResult> Run(const RevisionInfo& info) {
    commit_ = info.commit;
    std::vector<std::string> include = options_.include;
    if (!spec_.file.empty()) include = {spec_.file};
    TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> files, SelectFiles(info.siblings, include));
    std::set<std::string> done;
    for (const std::string& file : files) {
      TANDEM_RETURN_IF_ERROR(Fetch(file));
      done.insert(file);
    }
    if (include.empty() && done.contains(std::string(kIndexFile))) {
      TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> shards, IndexShards(info.siblings));
      for (const std::string& shard : shards) {
        if (done.contains(shard)) continue;
        TANDEM_RETURN_IF_ERROR(Fetch(shard));
        done.insert(shard);
      }
    }
    if (spec_.revision != commit_) TANDEM_RETURN_IF_ERROR(cache_.WriteRef(spec_.revision, commit_));
    PullResult result;
    result.commit = commit_;
    result.snapshot_dir = cache_.SnapshotDir(commit_);
    result.model_path = ModelPath(result.snapshot_dir, spec_);
    result.files.assign(done.begin(), done.end());
    result.downloaded_bytes = downloaded_;
    return result;
  }

 private:
  // The shards the downloaded index names, each of which the repo must have.
  absl::StatusOr<std::vector<std::string>> IndexShards(const std::vector<std::string>& siblings) {
    const std::string path = cache_.SnapshotPath(commit_, kIndexFile);
    std::ifstream in(path);
    const auto index = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no \"weight_map\" object"));
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string())
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " maps to a non-string"));
      shards.insert(shard.get<std::string>());
    }
    for (const std::string& s : shards) {
      if (std::find(siblings.begin(), siblings.end(), s) == siblings.end()) {
        return absl::NotFoundError(absl::StrCat("hf://", spec_.repo_id, "@", commit_, ": ", kIndexFile,
                                                " names shard ", s, " which the repo does not have"));
      }
    }
    return std::vector<std::string>(shards.begin(), shards.end());
  }

  // Brings one repo file into the snapshot (see hub.h).
  absl::Status Fetch(const std::string& file) {
    if (!SafeRelativePath(file, /*allow_slash=*/true)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hf://", spec_.repo_id, ": refusing file name '", file, "'"));
    }
    const std::string link = cache_.SnapshotPath(commit_, file);
    if (Exists(link)) {
      progress_.Done(file, "cached");
      return absl::OkStatus();
    }
    const std::string what = absl::StrCat("hf://", spec_.repo_id, "@", commit_, " file ", file);
    const std::string url =
        absl::StrCat(options_.endpoint, "/", spec_.repo_id, "/resolve/", commit_, "/", UrlEncode(file, true));
    // An LFS file's metadata is on the redirect response itself.
    TANDEM_ASSIGN_OR_RETURN(HttpResponse head, http_->Head(url, [](const HttpResponse& r) {
      return r.Header("x-linked-etag").empty();
    }));
    if (head.status >= 400) return HttpError(head, what, !options_.token.empty());
    std::string etag = NormalizeEtag(head.Header("x-linked-etag"));
    if (etag.empty()) etag = NormalizeEtag(head.Header("etag"));
    std::string size_text = head.Header("x-linked-size");
    if (size_text.empty()) size_text = head.Header("content-length");
    int64_t size = -1;
    if (etag.empty() || !SafeRelativePath(etag, false) || !absl::SimpleAtoi(size_text, &size) || size < 0) {
      return absl::UnavailableError(
          absl::StrCat(what, ": HEAD ", url, " (HTTP ", head.status, ") gave no usable ETag and size"));
    }
    const std::string blob = cache_.BlobPath(etag);
    if (!Exists(blob)) {
      TANDEM_ASSIGN_OR_RETURN(auto lock, FileLock::Acquire(cache_.LockPath(etag), options_.lock_timeout));
      if (!Exists(blob)) TANDEM_RETURN_IF_ERROR(Download(file, url, etag, size));
      TANDEM_RETURN_IF_ERROR(cache_.LinkSnapshotFile(commit_, file, etag));
    } else {
      TANDEM_RETURN_IF_ERROR(cache_.LinkSnapshotFile(commit_, file, etag));
      progress_.Done(file, absl::StrCat(HumanBytes(size), " already in the cache"));
    }
    return absl::OkStatus();
  }

  // Downloads (or resumes) blobs/<etag>.incomplete, verifies it and renames
  // it to blobs/<etag>. REQUIRES: the blob's lock is held.
  absl::Status Download(const std::string& file, const std::string& url, const std::string& etag,
                        int64_t size) {
    const std::string blob = cache_.BlobPath(etag);
    const std::string incomplete = cache_.IncompletePath(etag);
    TANDEM_RETURN_IF_ERROR(MakeDirs(cache_.repo_dir() + "/blobs"));
    const int fd = ::open(incomplete.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      return absl::InternalError(absl::StrCat("cannot open ", incomplete, ": ", std::strerror(errno)));
    absl::Cleanup close_fd = [fd] { ::close(fd); };
    int64_t have = FileSize(incomplete);
    if (have > size) {  // longer than the file can be: start over
      if (::ftruncate(fd, 0) != 0) return absl::InternalError(absl::StrCat("ftruncate ", incomplete));
      have = 0;
    }
    const int64_t resumed_from = have;
    progress_.Start(file, size, have);
    if (have < size) {
      auto r = http_->Download(url, fd, have, [this](int64_t bytes) { progress_.Update(bytes); });
      const int64_t now = FileSize(incomplete);
      if (now > resumed_from) downloaded_ += now - resumed_from;
      if (!r.ok()) {
        progress_.Done(file, absl::StrCat("interrupted at ", HumanBytes(now), " of ", HumanBytes(size),
                                          "; run again to resume"));
        return absl::Status(r.status().code(),
                            absl::StrCat("hf://", spec_.repo_id, " file ", file, ": ", r.status().message(),
                                         " (", incomplete, " kept; the next pull resumes it)"));
      }
      if (r->status == 416) {
        // Nothing past our length: what we have is either the file or wrong.
      } else if (r->status >= 300) {
        return HttpError(*r, absl::StrCat("hf://", spec_.repo_id, "@", commit_, " file ", file),
                         !options_.token.empty());
      }
    }
    if (::fsync(fd) != 0)
      return absl::InternalError(absl::StrCat("fsync ", incomplete, ": ", std::strerror(errno)));
    if (absl::Status s = Verify(incomplete, file, etag, size); !s.ok()) {
      ::unlink(incomplete.c_str());  // an invalid prefix would only fail again
      progress_.Done(file, "verification failed, download discarded");
      return absl::Status(s.code(), absl::StrCat("hf://", spec_.repo_id, "@", commit_, " ", s.message()));
    }
    if (std::rename(incomplete.c_str(), blob.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot rename ", incomplete, ": ", std::strerror(errno)));
    }
    progress_.Done(
        file,
        absl::StrCat(HumanBytes(size), " downloaded",
                     resumed_from > 0 ? absl::StrCat(" (resumed at ", HumanBytes(resumed_from), ")") : "",
                     IsHex(etag, 64)   ? ", sha256 verified"
                     : IsHex(etag, 40) ? ", git sha1 verified"
                                       : ", size verified"));
    return absl::OkStatus();
  }

  const HfSpec spec_;
  const PullOptions options_;
  std::unique_ptr<HttpClient> http_;
  RepoCache cache_;
  Progress progress_;
  std::string commit_;
  int64_t downloaded_ = 0;
};

}  // namespace

bool IsHfSpec(std::string_view spec) { return spec.starts_with(kHfScheme); }

absl::StatusOr<HfSpec> ParseHfSpec(std::string_view spec) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", std::string(spec), "': ", why, " (expected hf://ORG/REPO[/FILE][@REVISION])"));
  };
  if (!IsHfSpec(spec)) return bad("not an hf:// spec");
  std::string_view rest = spec.substr(kHfScheme.size());
  HfSpec out;
  if (size_t at = rest.find('@'); at != std::string_view::npos) {
    out.revision = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
    if (!SafeRelativePath(out.revision, /*allow_slash=*/true)) return bad("bad revision");
  }
  std::vector<std::string> parts = absl::StrSplit(absl::string_view(rest.data(), rest.size()), '/');
  const size_t repo_parts = parts.size() >= 2 ? 2 : 1;
  for (size_t i = 0; i < repo_parts; ++i) {
    const std::string& p = parts[i];
    if (p.empty() || p == "." || p == ".." || !std::all_of(p.begin(), p.end(), ValidNameChar)) {
      return bad("bad repo id");
    }
  }
  out.repo_id = repo_parts == 2 ? absl::StrCat(parts[0], "/", parts[1]) : std::string(parts[0]);
  if (parts.size() > 2) {
    out.file = absl::StrJoin(parts.begin() + 2, parts.end(), "/");
    if (!SafeRelativePath(out.file, /*allow_slash=*/true)) return bad("bad file path");
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> SelectFiles(const std::vector<std::string>& siblings,
                                                     const std::vector<std::string>& include) {
  std::vector<std::string> out;
  if (!include.empty()) {
    for (const std::string& f : siblings) {
      for (const std::string& glob : include) {
        if (::fnmatch(glob.c_str(), f.c_str(), 0) == 0) {
          out.push_back(f);
          break;
        }
      }
    }
    if (out.empty()) {
      return absl::NotFoundError(absl::StrCat("no file in the repo matches ", absl::StrJoin(include, ", ")));
    }
    return out;
  }
  auto has = [&](std::string_view f) {
    return std::find(siblings.begin(), siblings.end(), f) != siblings.end();
  };
  for (const char* f : kMetadataFiles) {
    if (has(f)) out.push_back(f);
  }
  std::vector<std::string> safetensors, ggufs;
  for (const std::string& f : siblings) {
    if (f.find('/') != std::string::npos) continue;  // top level only
    if (f.ends_with(".safetensors")) safetensors.push_back(f);
    if (f.ends_with(".gguf")) ggufs.push_back(f);
  }
  if (has(kIndexFile)) {
    out.emplace_back(kIndexFile);  // Pull adds the shards it names
  } else if (has("model.safetensors")) {
    out.emplace_back("model.safetensors");
  } else if (!safetensors.empty()) {
    out.insert(out.end(), safetensors.begin(), safetensors.end());
  } else if (ggufs.size() == 1) {
    out.push_back(ggufs[0]);
  } else if (ggufs.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat("the repo holds ", ggufs.size(), " GGUF files (",
                                                   absl::StrJoin(ggufs, ", "),
                                                   "): pick one with --include FILE or hf://ORG/REPO/FILE"));
  } else {
    return absl::NotFoundError(
        "the repo has no *.safetensors or *.gguf weights at its top level (use --include)");
  }
  return out;
}

absl::StatusOr<PullResult> Pull(const HfSpec& spec, const PullOptions& given) {
  PullOptions options = given;
  if (options.endpoint.empty()) options.endpoint = Env("HF_ENDPOINT");
  if (options.endpoint.empty()) options.endpoint = std::string(kDefaultEndpoint);
  while (options.endpoint.ends_with('/')) options.endpoint.pop_back();
  if (options.token.empty()) options.token = Env("HF_TOKEN");
  if (options.cache_dir.empty()) options.cache_dir = DefaultCacheDir();
  const std::string offline_env = absl::AsciiStrToLower(Env("HF_HUB_OFFLINE"));
  if (offline_env == "1" || offline_env == "true" || offline_env == "yes") options.offline = true;

  absl::Status online_error;
  if (!options.offline) {
    TANDEM_ASSIGN_OR_RETURN(auto http, HttpClient::Create({.bearer_token = options.token,
                                                           .stall_timeout = options.stall_timeout}));
    Puller puller(spec, options, std::move(http));
    absl::StatusOr<RevisionInfo> info = puller.FetchRevision();
    if (info.ok()) return puller.Run(*info);
    if (!absl::IsUnavailable(info.status())) return info.status();
    online_error = info.status();
  }
  // From the cache alone.
  RepoCache cache(options.cache_dir, spec.repo_id);
  std::optional<std::string> commit;
  if (IsCommitHash(spec.revision)) {
    commit = spec.revision;
  } else {
    TANDEM_ASSIGN_OR_RETURN(commit, cache.ReadRef(spec.revision));
  }
  std::vector<std::string> include = options.include;
  if (!spec.file.empty()) include = {spec.file};
  const std::string where = absl::StrCat("hf://", spec.repo_id, "@", spec.revision);
  if (commit.has_value() && SnapshotComplete(cache.SnapshotDir(*commit), include)) {
    PullResult result;
    result.commit = *commit;
    result.snapshot_dir = cache.SnapshotDir(*commit);
    result.model_path = ModelPath(result.snapshot_dir, spec);
    result.from_cache_offline = true;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(result.snapshot_dir, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_directory(ec))
        result.files.push_back(it->path().string().substr(result.snapshot_dir.size() + 1));
    }
    std::sort(result.files.begin(), result.files.end());
    if (options.progress != ProgressMode::kNone) {
      LOG(WARNING) << where << ": "
                   << (options.offline ? "offline"
                                       : absl::StrCat("hub unreachable (", online_error.message(), ")"))
                   << "; using the cached snapshot " << *commit;
    }
    return result;
  }
  const std::string no_cache =
      absl::StrCat("no complete cached snapshot of ", where, " under ", cache.repo_dir());
  if (options.offline) return absl::UnavailableError(absl::StrCat("offline (HF_HUB_OFFLINE) and ", no_cache));
  return absl::UnavailableError(absl::StrCat(online_error.message(), "; and ", no_cache));
}

absl::StatusOr<std::string> ResolveModelSpec(std::string_view spec) {
  if (!IsHfSpec(spec)) return std::string(spec);
  TANDEM_ASSIGN_OR_RETURN(HfSpec parsed, ParseHfSpec(spec));
  TANDEM_ASSIGN_OR_RETURN(PullResult r, Pull(parsed, PullOptions{}));
  return r.model_path;
}

}  // namespace tandem::hub
