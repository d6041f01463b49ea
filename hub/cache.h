// The Hugging Face hub cache, laid out exactly as huggingface_hub lays it out
// so caches are shared both ways:
//
//   <root>/models--ORG--REPO/blobs/<etag>                 file contents
//   <root>/models--ORG--REPO/blobs/<etag>.incomplete      a download under way
//   <root>/models--ORG--REPO/snapshots/<commit>/<file>    relative symlink to ../../blobs/<etag>
//   <root>/models--ORG--REPO/refs/<revision>              the commit hash (no newline)
//   <root>/.locks/models--ORG--REPO/<etag>.lock           held while a blob downloads
//
//   RepoCache cache(DefaultCacheDir(), "HuggingFaceTB/SmolLM2-135M");
//   TANDEM_ASSIGN_OR_RETURN(std::optional<std::string> commit, cache.ReadRef("main"));
//
// RepoCache only computes paths and does small atomic file operations (each
// creates a temporary name and renames it into place); it holds no state
// beyond two strings, so it is thread-compatible, and concurrent processes
// see either the old or the new ref or link, never a partial one.
#ifndef TANDEM_HUB_CACHE_H_
#define TANDEM_HUB_CACHE_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem::hub {

// $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
// else $HOME/.cache/huggingface/hub (huggingface_hub's own order).
std::string DefaultCacheDir();

// "models--ORG--REPO" for "ORG/REPO".
std::string RepoFolderName(const std::string& repo_id);

// True for a 40-hex-digit commit hash.
bool IsCommitHash(const std::string& revision);

class RepoCache {
 public:
  RepoCache(std::string root, const std::string& repo_id);

  const std::string& repo_dir() const { return repo_dir_; }
  std::string BlobPath(const std::string& etag) const;
  std::string IncompletePath(const std::string& etag) const;
  std::string LockPath(const std::string& etag) const;
  std::string SnapshotDir(const std::string& commit) const;
  std::string SnapshotPath(const std::string& commit, const std::string& file) const;

  // The commit refs/<revision> names; nullopt when there is no such ref.
  absl::StatusOr<std::optional<std::string>> ReadRef(const std::string& revision) const;
  // Writes refs/<revision> atomically.
  absl::Status WriteRef(const std::string& revision, const std::string& commit) const;
  // Points snapshots/<commit>/<file> at blobs/<etag> with a relative
  // symlink, replacing any link already there, atomically.
  // REQUIRES: the blob exists and is verified.
  absl::Status LinkSnapshotFile(const std::string& commit, const std::string& file,
                                const std::string& etag) const;

 private:
  std::string root_;
  std::string folder_;
  std::string repo_dir_;
};

// Creates `dir` and its parents. Internal on failure.
absl::Status MakeDirs(const std::string& dir);

}  // namespace tandem::hub

#endif  // TANDEM_HUB_CACHE_H_
