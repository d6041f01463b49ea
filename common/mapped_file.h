// A read-only memory map of a whole regular file, unmapped on destruction.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(path, "gguf"));
//   Parse(f->data(), f->size());
//
// An empty file maps to data() == nullptr, size() == 0 (mmap rejects a zero
// length); readers then fail it like any other truncated file. The mapping
// stays valid after the descriptor is closed. If another process truncates
// the file while it is mapped, reads past the new end raise SIGBUS: no reader
// can prevent that.
#ifndef TANDEM_COMMON_MAPPED_FILE_H_
#define TANDEM_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem {

class MappedFile {
 public:
  // `what` names the format in error messages ("gguf: cannot open PATH: ...").
  // NotFound / PermissionDenied etc. from errno; InvalidArgument for a path
  // that is not a regular file.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path, std::string_view what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(mapping_); }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  void* mapping_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_MAPPED_FILE_H_
