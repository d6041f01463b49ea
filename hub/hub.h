// Models from the Hugging Face hub: `hf://ORG/REPO[@REVISION]` specs, the
// download into the shared Hugging Face cache (hub/cache.h), and the mapping
// of a spec to a local path that model::LoadModel can open.
//
//   // Downloads what is missing (or uses the cache offline) and returns the
//   // snapshot directory, or the one .gguf file of a GGUF repo:
//   TANDEM_ASSIGN_OR_RETURN(std::string path, hub::ResolveModelSpec("hf://HuggingFaceTB/SmolLM2-135M"));
//
//   TANDEM_ASSIGN_OR_RETURN(hub::HfSpec spec, hub::ParseHfSpec("hf://org/repo@v1.0"));
//   TANDEM_ASSIGN_OR_RETURN(hub::PullResult r, hub::Pull(spec, hub::PullOptions{}));
//
// Which files (without --include / PullOptions::include):
//   - config.json, generation_config.json, tokenizer.json,
//     tokenizer_config.json, whichever the repo has;
//   - safetensors weights: model.safetensors.index.json and exactly the
//     shards its weight_map names; else model.safetensors; else every
//     top-level *.safetensors. Other formats (*.bin, *.pth, original/) are
//     never fetched;
//   - else, a repo with exactly one *.gguf: that file. A repo with several
//     (one per quantization) is InvalidArgument listing them: pick one with
//     an include glob or hf://ORG/REPO/FILE.gguf.
// Include globs (fnmatch, `*` also matches `/`) replace the rule entirely.
//
// Protocol (huggingface_hub's): GET {endpoint}/api/models/{repo}/revision/{rev}
// for the commit ("sha") and file list ("siblings"); per file missing from
// the snapshot, HEAD {endpoint}/{repo}/resolve/{commit}/{file} for its etag
// (X-Linked-Etag, else ETag) and size (X-Linked-Size, else Content-Length),
// then GET with Range into blobs/<etag>.incomplete, resumed from its length.
// A blob is verified before it is renamed into place, and a snapshot link is
// made only to a verified blob: a 64-hex etag is the SHA-256 of the bytes
// (LFS); a 40-hex etag is git's blob SHA-1 ("blob <size>\0" + bytes); any
// other etag is checked by size alone. A blob that fails its check is
// deleted together with its .incomplete file (resuming an invalid prefix
// would fail again), and the error is DataLoss. A download cut short keeps
// its .incomplete file, and the next pull resumes it with a Range request.
// refs/<revision> is written once every file is in place.
//
// Offline: when the API call fails for a network reason (Unavailable), or
// HF_HUB_OFFLINE=1, the pull succeeds from the cache when refs/<revision>
// (or the commit given as revision) names a snapshot that is complete: every
// link resolves, and with include globs each glob matches a file; without,
// config.json plus all index shards (or a *.safetensors), or a *.gguf.
//
// Errors: PermissionDenied (HTTP 401/403, naming HF_TOKEN), NotFound (404,
// naming the repo, revision or file), Unavailable (network, 5xx, 429),
// DataLoss (size or hash mismatch), InvalidArgument (a bad spec).
//
// Functions are thread-safe; concurrent pulls of the same repo, in threads or
// processes, serialize per blob on <cache>/.locks/... with flock.
#ifndef TANDEM_HUB_HUB_H_
#define TANDEM_HUB_HUB_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tandem::hub {

inline constexpr std::string_view kHfScheme = "hf://";

// hf://ORG/REPO[/FILE][@REVISION]
struct HfSpec {
  std::string repo_id;            // "ORG/REPO" (or "REPO")
  std::string revision = "main";  // branch, tag or commit hash
  std::string file;               // optional: one file in the repo (a .gguf)
};

bool IsHfSpec(std::string_view spec);
// InvalidArgument for a spec that is not hf://, an empty or malformed repo
// id (only [A-Za-z0-9._-], no "..", at most one '/'), or a bad revision.
absl::StatusOr<HfSpec> ParseHfSpec(std::string_view spec);

enum class ProgressMode {
  kAuto,   // a bar when stderr is a terminal, else kLines
  kNone,   // nothing
  kLines,  // one line per file on stderr
  kBar,    // a redrawn bar on stderr
};

struct PullOptions {
  // Hub endpoint. Default: $HF_ENDPOINT, else https://huggingface.co.
  std::string endpoint;
  // Bearer token for gated and private repos. Default: $HF_TOKEN.
  std::string token;
  // Cache root. Default: DefaultCacheDir() ($HF_HUB_CACHE, $HF_HOME/hub, ...).
  std::string cache_dir;
  // Globs of repo files to fetch instead of the rule above. Default: none.
  std::vector<std::string> include;
  // Use the cache only, never the network. Default: $HF_HUB_OFFLINE is 1/true.
  bool offline = false;
  // Default: kAuto.
  ProgressMode progress = ProgressMode::kAuto;
  // How long to wait for another process downloading the same blob.
  // Default: 30 min.
  absl::Duration lock_timeout = absl::Minutes(30);
  // A transfer that moves no byte for this long fails (Unavailable).
  // Default: 60 s.
  absl::Duration stall_timeout = absl::Seconds(60);
};

struct PullResult {
  std::string snapshot_dir;  // <cache>/models--ORG--REPO/snapshots/<commit>
  std::string commit;
  // What LoadModel should open: the snapshot dir, or spec.file / the one
  // .gguf inside it for a GGUF repo.
  std::string model_path;
  std::vector<std::string> files;   // repo paths fetched or found, sorted
  int64_t downloaded_bytes = 0;     // over the network in this call
  bool from_cache_offline = false;  // served from the cache without the hub
};

// Downloads what `spec` needs into the cache (see the file comment).
absl::StatusOr<PullResult> Pull(const HfSpec& spec, const PullOptions& options);

// For an hf:// spec: Pull with default options (environment) and return
// PullResult::model_path. Any other spec comes back unchanged.
absl::StatusOr<std::string> ResolveModelSpec(std::string_view spec);

// The rule above applied to a repo's file list (exposed for tests).
// Weight shards named by an index are added by Pull after it reads the index.
absl::StatusOr<std::vector<std::string>> SelectFiles(const std::vector<std::string>& siblings,
                                                     const std::vector<std::string>& include);

}  // namespace tandem::hub

#endif  // TANDEM_HUB_HUB_H_
