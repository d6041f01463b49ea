// Content digests the Hugging Face hub names files by: SHA-256 of the bytes
// for LFS files (the X-Linked-Etag), and git's blob SHA-1 ("blob <size>\0"
// followed by the bytes) for files stored in git itself (the ETag).
//
//   TANDEM_ASSIGN_OR_RETURN(std::string hex, hub::FileSha256Hex("/tmp/x.safetensors"));
//
// Stateless functions; thread-safe.
#ifndef TANDEM_HUB_DIGEST_H_
#define TANDEM_HUB_DIGEST_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem::hub {

// Lowercase hex SHA-256 of the file's bytes. NotFound / Internal on I/O error.
absl::StatusOr<std::string> FileSha256Hex(const std::string& path);

// Lowercase hex SHA-1 of "blob <size>\0<bytes>" (`git hash-object`).
absl::StatusOr<std::string> FileGitBlobSha1Hex(const std::string& path);

// Lowercase hex SHA-256 / git blob SHA-1 of a buffer.
std::string Sha256Hex(std::string_view bytes);
std::string GitBlobSha1Hex(std::string_view bytes);

}  // namespace tandem::hub

#endif  // TANDEM_HUB_DIGEST_H_
