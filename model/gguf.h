// GGUF reader: the file format llama.cpp uses for models.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
//   TANDEM_ASSIGN_OR_RETURN(uint64_t layers, gguf->GetUint("llama.block_count"));
//   const GgufTensorInfo* emb = gguf->FindTensor("token_embd.weight");
//
// Versions 2 and 3, every metadata value type (arrays included, nested arrays
// too), tensor infos with alignment (`general.alignment`, default 32) and
// tensor types F32, F16, BF16, Q8_0 and Q4_0. The file is memory-mapped; tensor
// data pointers point into the mapping and live as long as the GgufFile.
//
// Every malformed input - truncation, bad magic or version, counts, offsets,
// dimensions or strings out of range, size overflow, duplicate tensor names,
// unsupported tensor types - gives an error Status whose message names the
// problem and the byte offset where it was found. The reader never reads out of
// bounds and never aborts on file content.
//
// Thread safety: a GgufFile is immutable after Open/FromBuffer; any number of
// threads may read it.
#ifndef TANDEM_MODEL_GGUF_H_
#define TANDEM_MODEL_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "common/mapped_file.h"

namespace tandem::model {

// Metadata value types, numbered as in the GGUF specification.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType type);

// One metadata value. Exactly one of the payload members is meaningful,
// chosen by `type`: unsigned integers in `u`, signed in `i`, floats in `f`,
// bool in `b`, strings in `s`, arrays in `array` (with `array_type` naming the
// element type; every element has that type).
struct GgufValue {
  GgufType type = GgufType::kUint8;
  GgufType array_type = GgufType::kUint8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> array;
};

struct GgufTensorInfo {
  std::string name;
  // ggml order: dims[0] is the innermost (contiguous) dimension. For a weight
  // matrix of shape [in, out] in ggml terms, each of the `out` rows holds `in`
  // contiguous elements.
  std::vector<uint64_t> dims;
  DType type = DType::kF32;
  uint64_t num_elements = 0;
  // Offset relative to the start of the tensor data section, as in the file.
  uint64_t offset = 0;
  // Bytes of tensor data; data points into the file mapping.
  uint64_t size_bytes = 0;
  const uint8_t* data = nullptr;
};

class GgufFile {
 public:
  // Memory-maps `path` and parses it. Errors: NotFound / PermissionDenied for
  // the file, InvalidArgument for malformed content, Unimplemented for a
  // tensor type Tandem does not support.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  // Parses an in-memory image (tests, fuzzing). The bytes are copied.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBuffer(std::string_view bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Byte offset of the tensor data section in the file.
  uint64_t data_offset() const { return data_offset_; }

  // Metadata keys in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;

  // Typed getters. NotFound names the key when absent; InvalidArgument names
  // the key and both types when the stored type does not fit (any integer type
  // is accepted where its value fits the requested range).
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // float or int
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  absl::Status Parse();

  // The bytes of the file: either a mapping (mapping_ set) or owned_.
  // owned_ is an exactly sized heap block (not a std::string, whose capacity
  // slack and small-string buffer would hide off-by-one reads from ASan when
  // fuzzing FromBuffer).
  std::unique_ptr<MappedFile> mapping_;
  std::unique_ptr<uint8_t[]> owned_;
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;

  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> keys_;
  absl::flat_hash_map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_GGUF_H_
