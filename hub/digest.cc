#include "hub/digest.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"

namespace tandem::hub {
namespace {

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

std::string Hex(const unsigned char* d, unsigned int n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (unsigned int i = 0; i < n; ++i) {
    out[2 * i] = kDigits[d[i] >> 4];
    out[2 * i + 1] = kDigits[d[i] & 15];
  }
  return out;
}

// Digest of `prefix` followed by the file's bytes (or `buffer` when `path`
// is null).
absl::StatusOr<std::string> Digest(const EVP_MD* md, std::string_view prefix, const std::string* path,
                                   std::string_view buffer) {
  MdCtx ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) {
    return absl::InternalError("EVP_DigestInit_ex failed");
  }
  EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size());
  if (path == nullptr) {
    EVP_DigestUpdate(ctx.get(), buffer.data(), buffer.size());
  } else {
    std::ifstream in(*path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", *path, ": ", std::strerror(errno)));
    std::string chunk(1 << 20, '\0');
    while (in) {
      in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), chunk.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) return absl::InternalError(absl::StrCat("read error on ", *path));
  }
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx.get(), out, &n) != 1) return absl::InternalError("EVP_DigestFinal_ex failed");
  return Hex(out, n);
}

std::string BlobHeader(uint64_t size) {
  std::string h = absl::StrCat("blob ", size);
  h.push_back('\0');
  return h;
}

}  // namespace

absl::StatusOr<std::string> FileSha256Hex(const std::string& path) {
  return Digest(EVP_sha256(), "", &path, "");
}

absl::StatusOr<std::string> FileGitBlobSha1Hex(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  const auto size = static_cast<uint64_t>(in.tellg());
  return Digest(EVP_sha1(), BlobHeader(size), &path, "");
}

std::string Sha256Hex(std::string_view bytes) { return *Digest(EVP_sha256(), "", nullptr, bytes); }

std::string GitBlobSha1Hex(std::string_view bytes) {
  return *Digest(EVP_sha1(), BlobHeader(bytes.size()), nullptr, bytes);
}

}  // namespace tandem::hub
