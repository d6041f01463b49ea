#include "hub/cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace tandem::hub {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string ParentDir(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// A name no other process or thread picks for its own temporary file.
std::string TempName(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, ".tmp.", getpid(), ".", counter.fetch_add(1));
}

}  // namespace

std::string DefaultCacheDir() {
  if (std::string v = Env("HF_HUB_CACHE"); !v.empty()) return v;
  if (std::string v = Env("HF_HOME"); !v.empty()) return v + "/hub";
  if (std::string v = Env("XDG_CACHE_HOME"); !v.empty()) return v + "/huggingface/hub";
  return Env("HOME") + "/.cache/huggingface/hub";
}

std::string RepoFolderName(const std::string& repo_id) {
  return absl::StrCat("models--", absl::StrReplaceAll(repo_id, {{"/", "--"}}));
}

bool IsCommitHash(const std::string& revision) {
  if (revision.size() != 40) return false;
  for (char c : revision) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c)) ||
        absl::ascii_isupper(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

RepoCache::RepoCache(std::string root, const std::string& repo_id)
    : root_(std::move(root)),
      folder_(RepoFolderName(repo_id)),
      repo_dir_(absl::StrCat(root_, "/", folder_)) {}

std::string RepoCache::BlobPath(const std::string& etag) const {
  return absl::StrCat(repo_dir_, "/blobs/", etag);
}

std::string RepoCache::IncompletePath(const std::string& etag) const {
  return absl::StrCat(BlobPath(etag), ".incomplete");
}

std::string RepoCache::LockPath(const std::string& etag) const {
  return absl::StrCat(root_, "/.locks/", folder_, "/", etag, ".lock");
}

std::string RepoCache::SnapshotDir(const std::string& commit) const {
  return absl::StrCat(repo_dir_, "/snapshots/", commit);
}

std::string RepoCache::SnapshotPath(const std::string& commit, const std::string& file) const {
  return absl::StrCat(SnapshotDir(commit), "/", file);
}

absl::StatusOr<std::optional<std::string>> RepoCache::ReadRef(const std::string& revision) const {
  const std::string path = absl::StrCat(repo_dir_, "/refs/", revision);
  std::ifstream in(path);
  if (!in) return std::optional<std::string>();
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string commit(absl::StripAsciiWhitespace(ss.str()));
  if (!IsCommitHash(commit)) {
    return absl::DataLossError(absl::StrCat(path, " does not hold a commit hash"));
  }
  return std::optional<std::string>(std::move(commit));
}

absl::Status RepoCache::WriteRef(const std::string& revision, const std::string& commit) const {
  const std::string path = absl::StrCat(repo_dir_, "/refs/", revision);
  if (absl::Status s = MakeDirs(ParentDir(path)); !s.ok()) return s;
  const std::string tmp = TempName(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << commit;
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status RepoCache::LinkSnapshotFile(const std::string& commit, const std::string& file,
                                         const std::string& etag) const {
  const std::string link = SnapshotPath(commit, file);
  if (absl::Status s = MakeDirs(ParentDir(link)); !s.ok()) return s;
  // snapshots/<commit>/<a/b/file> -> ../../(../)*blobs/<etag>
  std::string target = "../../";
  for (char c : file) {
    if (c == '/') target += "../";
  }
  absl::StrAppend(&target, "blobs/", etag);
  const std::string tmp = TempName(link);
  if (::symlink(target.c_str(), tmp.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot create symlink ", tmp, ": ", std::strerror(errno)));
  }
  if (std::rename(tmp.c_str(), link.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", link, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace tandem::hub
