// safetensors reader: the checkpoint format of Hugging Face models.
//
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> ckpt,
//                           SafetensorsCheckpoint::Open("/models/Llama-3.2-1B"));
//   TANDEM_ASSIGN_OR_RETURN(const SafetensorsTensor* t,
//                           ckpt->GetTensor("model.embed_tokens.weight"));
//
// A file is an 8-byte little-endian header length N, N bytes of JSON, then
// the data section. The JSON maps tensor names to {"dtype", "shape",
// "data_offsets": [begin, end]} (offsets relative to the data section) and
// may hold a "__metadata__" object of string values. A sharded checkpoint is a
// directory with `model.safetensors.index.json` whose "weight_map" names the
// shard file of every tensor; a single-file checkpoint is a directory with
// `model.safetensors` (or the path of any .safetensors file).
//
// Files are memory-mapped; tensor data pointers point into the mappings and
// live as long as the SafetensorsFile / SafetensorsCheckpoint.
//
// Every malformed input gives InvalidArgument whose message names the problem
// and where it is: for a header that is not JSON, the byte offset in the file
// (and in the header) where the JSON parser stopped; for a bad entry, the
// tensor name and field. Checked: header length against the file size, JSON
// syntax, duplicate keys, the type of every field, dtype names, shape dims
// non-negative with a product (and byte size) that does not overflow,
// data_offsets begin <= end, inside the data section, not overlapping another
// tensor, and end - begin == elements x dtype size. Holes between tensors are
// allowed (the format does not need them, but they are harmless). The reader
// never reads out of bounds and never aborts on file content.
//
// dtypes: every safetensors dtype is parsed and validated; only F32, F16 and
// BF16 are usable as weights: GetTensor gives Unimplemented naming the tensor
// and its dtype for the others, so a checkpoint holding an unused I64 buffer
// still opens.
//
// Thread safety: immutable after Open/FromBuffer; any number of threads may
// read.
#ifndef TANDEM_MODEL_SAFETENSORS_H_
#define TANDEM_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/mapped_file.h"

namespace tandem::model {

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // as in the file: "BF16", "F32", "I64", ...
  std::optional<DType> dtype;  // set for F32, F16, BF16
  // Row-major, outermost first (PyTorch order): a Linear weight is [out, in].
  std::vector<int64_t> shape;
  uint64_t num_elements = 0;
  // data_offsets as in the file, relative to the data section.
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size_bytes = 0;        // end - begin
  const uint8_t* data = nullptr;  // into the file's bytes; nullptr when size_bytes == 0
};

// One .safetensors file.
class SafetensorsFile {
 public:
  // Memory-maps `path` and parses it. Errors: NotFound / PermissionDenied for
  // the file, InvalidArgument for malformed content (message prefixed with
  // the path).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses an in-memory image (tests, fuzzing). The bytes are copied.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBuffer(std::string_view bytes);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  uint64_t header_size() const { return header_size_; }
  // Byte offset of the data section in the file: 8 + header_size().
  uint64_t data_offset() const { return 8 + header_size_; }
  // The "__metadata__" entries (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensors in data order (by data_offsets).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // nullptr when absent.
  const SafetensorsTensor* FindTensor(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  // Either a mapping (mapping_ set) or owned_, exactly sized so ASan
  // sees off-by-one reads when fuzzing FromBuffer.
  std::unique_ptr<MappedFile> mapping_;
  std::unique_ptr<uint8_t[]> owned_;
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;

  uint64_t header_size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// A checkpoint: one file or the shards of an index.
class SafetensorsCheckpoint {
 public:
  // `path` is a directory holding model.safetensors.index.json (sharded) or
  // model.safetensors, or the path of one .safetensors file. For an index:
  // "weight_map" must be an object of tensor name -> shard file name (a plain
  // name in the same directory: no '/', not "." or ".."); every tensor it
  // names must be in that shard, and no tensor may be in two shards. Errors
  // name the file and the problem; NotFound when the directory holds neither.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  // Parses an index.json image and checks it against already-parsed shards,
  // keyed by file name (tests, fuzzing; Open uses the same code).
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> FromIndex(
      std::string_view index_json,
      std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> shards);

  // nullptr when absent.
  const SafetensorsTensor* FindTensor(std::string_view name) const;
  // NotFound naming the tensor when absent; Unimplemented naming the tensor
  // and dtype when its dtype is not F32, F16 or BF16.
  absl::StatusOr<const SafetensorsTensor*> GetTensor(std::string_view name) const;
  // Every tensor of every shard, shard by shard in data order.
  std::vector<const SafetensorsTensor*> tensors() const;
  size_t num_files() const { return files_.size(); }

 private:
  SafetensorsCheckpoint() = default;
  absl::Status AddFile(std::unique_ptr<SafetensorsFile> file, const std::string& file_name);

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const SafetensorsTensor*> index_;
};

// Parses a safetensors dtype name; nullopt for the ones Tandem cannot use.
std::optional<DType> SafetensorsDType(std::string_view name);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_SAFETENSORS_H_
