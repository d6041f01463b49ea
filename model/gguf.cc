// GGUF reader. Layout (v2 and v3, little-endian; GGUF spec in ggml/docs/gguf.md):
//
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x  { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type
//                    | u64 offset }
//   padding to `general.alignment` | tensor data
//
// where a string is { u64 length | bytes } and an array value is
// { u32 element_type | u64 length | elements }.
//
// Every read goes through Reader, which checks the remaining bytes first, so
// no content can make the parser read out of bounds. Counts are checked
// against the bytes that remain (each entry has a minimum encoded size) before
// anything is reserved for them.
#include "model/gguf.h"

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader copies little-endian fields straight into host integers");

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32.
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;

// Arrays may nest, but each level costs only 12 bytes of file, so without a
// limit a crafted file could recurse deep enough to overflow the stack.
constexpr int kMaxArrayDepth = 8;

// Every metadata value becomes a GgufValue (~100 bytes) while it may take one
// byte of file, so a large uint8 array would cost ~100x its size in memory.
// Cap the total: the largest real tokenizers (~262k tokens with scores, types
// and merges) hold around a million values.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 23;

// Smallest possible encodings, used to reject counts that cannot fit: a
// key-value pair is at least a key length, a value type and a 1-byte value; a
// tensor info a name length, n_dims, one dimension, a type and an offset.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

// Names of ggml tensor types by id, for errors about unsupported ones. Ids
// that were removed from ggml keep their historical names.
std::string_view GgmlTypeName(uint32_t id) {
  static constexpr std::string_view kNames[] = {
      "F32",      "F16",      "Q4_0",    "Q4_1",  "Q4_2",       "Q4_3",       "Q5_0",       "Q5_1",
      "Q8_0",     "Q8_1",     "Q2_K",    "Q3_K",  "Q4_K",       "Q5_K",       "Q6_K",       "Q8_K",
      "IQ2_XXS",  "IQ2_XS",   "IQ3_XXS", "IQ1_S", "IQ4_NL",     "IQ3_S",      "IQ2_S",      "IQ4_XS",
      "I8",       "I16",      "I32",     "I64",   "F64",        "IQ1_M",      "BF16",       "Q4_0_4_4",
      "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",   "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
  };
  return id < std::size(kNames) ? kNames[id] : std::string_view();
}

std::optional<DType> DTypeFromGgml(uint32_t id) {
  switch (id) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kQ4_0;
    case 8:
      return DType::kQ8_0;
    case 12:
      return DType::kQ4_K;
    case 30:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

// Debian's Abseil has its own string_view type (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), so std::string_view must be converted for StrCat and map lookups.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A name from the file, quoted for an error message: escaped, and cut short
// so a multi-megabyte key cannot blow up the message.
std::string Quote(std::string_view name) {
  constexpr size_t kMax = 64;
  const bool cut = name.size() > kMax;
  return absl::StrCat("'", absl::CHexEscape(Absl(name.substr(0, kMax))), cut ? "...'" : "'");
}

absl::Status Malformed(std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: ", Absl(message)));
}

// Names a field for error messages, e.g. "dimension 1 of tensor 'x'". Only
// formatted when an error occurs, so reads stay allocation-free.
struct Field {
  std::string_view what;
  int64_t index = -1;                // Element or dimension index; -1 for none.
  std::string_view owner_kind = {};  // "metadata key" or "tensor"; empty for none.
  std::string_view owner = {};

  std::string Describe() const {
    std::string s(what);
    if (index >= 0) absl::StrAppend(&s, " ", index);
    if (!owner_kind.empty()) absl::StrAppend(&s, " of ", Absl(owner_kind), " ", Quote(owner));
    return s;
  }
};

// Bounds-checked little-endian cursor over the file.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  // `prefix` qualifies the field in the message, e.g. "string length of ".
  template <typename T>
  absl::StatusOr<T> Read(const Field& field, std::string_view prefix = {}) {
    if (sizeof(T) > remaining()) {
      return Malformed(
          absl::StrFormat("truncated file: reading %s%s needs %d bytes at byte offset %d, but only %d remain",
                          prefix, field.Describe(), sizeof(T), pos_, remaining()));
    }
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  // A GGUF string: u64 length, then that many bytes (not NUL-terminated).
  // The view points into the file.
  absl::StatusOr<std::string_view> String(const Field& field) {
    const size_t at = pos_;
    TANDEM_ASSIGN_OR_RETURN(uint64_t length, Read<uint64_t>(field, "string length of "));
    if (length > remaining()) {
      return Malformed(
          absl::StrFormat("string length %d of %s at byte offset %d exceeds the remaining %d bytes", length,
                          field.Describe(), at, remaining()));
    }
    std::string_view s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

bool IsUnsigned(GgufType t) {
  return t == GgufType::kUint8 || t == GgufType::kUint16 || t == GgufType::kUint32 || t == GgufType::kUint64;
}
bool IsSigned(GgufType t) {
  return t == GgufType::kInt8 || t == GgufType::kInt16 || t == GgufType::kInt32 || t == GgufType::kInt64;
}
bool IsFloat(GgufType t) { return t == GgufType::kFloat32 || t == GgufType::kFloat64; }

// Encoded size of one value of `t`, or the smallest one for strings (empty)
// and arrays (empty, any element type).
uint64_t MinEncodedBytes(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 4 + 8;
  }
  return 1;
}

std::string TypeDescription(const GgufValue& v) {
  if (v.type != GgufType::kArray) return std::string(GgufTypeName(v.type));
  return absl::StrCat("array of ", Absl(GgufTypeName(v.array_type)));
}

// The value of an integer GgufValue when it fits the requested type.
std::optional<uint64_t> AsUint(const GgufValue& v) {
  if (IsUnsigned(v.type)) return v.u;
  if (IsSigned(v.type) && v.i >= 0) return static_cast<uint64_t>(v.i);
  return std::nullopt;
}
std::optional<int64_t> AsInt(const GgufValue& v) {
  if (IsSigned(v.type)) return v.i;
  if (IsUnsigned(v.type) && v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return static_cast<int64_t>(v.u);
  }
  return std::nullopt;
}
std::optional<double> AsDouble(const GgufValue& v) {
  if (IsFloat(v.type)) return v.f;
  if (IsUnsigned(v.type)) return static_cast<double>(v.u);
  if (IsSigned(v.type)) return static_cast<double>(v.i);
  return std::nullopt;
}

std::string ValueString(const GgufValue& v) {
  if (IsUnsigned(v.type)) return absl::StrCat(v.u);
  if (IsSigned(v.type)) return absl::StrCat(v.i);
  return TypeDescription(v);
}

// Parses metadata values, recursing into arrays, within a budget on the total
// number of values.
class ValueParser {
 public:
  explicit ValueParser(Reader& reader) : r_(reader) {}

  // Reads a u32 value type at the cursor and checks it names a GgufType.
  absl::StatusOr<GgufType> ReadType(const Field& field) {
    const size_t at = r_.pos();
    TANDEM_ASSIGN_OR_RETURN(uint32_t raw, r_.Read<uint32_t>(field));
    if (raw > static_cast<uint32_t>(GgufType::kFloat64)) {
      return Malformed(absl::StrFormat("%s is %d at byte offset %d, not a known value type (0 to 12)",
                                       field.Describe(), raw, at));
    }
    return static_cast<GgufType>(raw);
  }

  // `key` is the metadata key the value belongs to; `index` its position in
  // the enclosing array (-1 at the top level).
  absl::StatusOr<GgufValue> Parse(GgufType type, std::string_view key, int64_t index, int depth) {
    const Field field{index < 0 ? "value" : "element", index, "metadata key", key};
    const size_t at = r_.pos();
    if (values_left_ == 0) {
      return Malformed(
          absl::StrFormat("metadata holds more than %d values (limit reached at %s, byte offset %d)",
                          kMaxMetadataValues, field.Describe(), at));
    }
    --values_left_;
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufType::kUint8:
        return Unsigned<uint8_t>(std::move(v), field);
      case GgufType::kUint16:
        return Unsigned<uint16_t>(std::move(v), field);
      case GgufType::kUint32:
        return Unsigned<uint32_t>(std::move(v), field);
      case GgufType::kUint64:
        return Unsigned<uint64_t>(std::move(v), field);
      case GgufType::kInt8:
        return Signed<int8_t>(std::move(v), field);
      case GgufType::kInt16:
        return Signed<int16_t>(std::move(v), field);
      case GgufType::kInt32:
        return Signed<int32_t>(std::move(v), field);
      case GgufType::kInt64:
        return Signed<int64_t>(std::move(v), field);
      case GgufType::kFloat32: {
        TANDEM_ASSIGN_OR_RETURN(float f, r_.Read<float>(field));
        v.f = f;
        return v;
      }
      case GgufType::kFloat64: {
        TANDEM_ASSIGN_OR_RETURN(v.f, r_.Read<double>(field));
        return v;
      }
      case GgufType::kBool: {
        TANDEM_ASSIGN_OR_RETURN(uint8_t b, r_.Read<uint8_t>(field));
        // The spec: "0 is false and 1 is true. Anything else is invalid".
        if (b > 1) {
          return Malformed(
              absl::StrFormat("bool %s is %d at byte offset %d, want 0 or 1", field.Describe(), b, at));
        }
        v.b = b == 1;
        return v;
      }
      case GgufType::kString: {
        TANDEM_ASSIGN_OR_RETURN(std::string_view s, r_.String(field));
        v.s.assign(s);
        return v;
      }
      case GgufType::kArray:
        return Array(std::move(v), key, field, depth);
    }
    return Malformed(absl::StrFormat("unknown value type at byte offset %d", at));  // Unreachable.
  }

 private:
  template <typename T>
  absl::StatusOr<GgufValue> Unsigned(GgufValue v, const Field& field) {
    TANDEM_ASSIGN_OR_RETURN(T x, r_.Read<T>(field));
    v.u = x;
    return v;
  }
  template <typename T>
  absl::StatusOr<GgufValue> Signed(GgufValue v, const Field& field) {
    TANDEM_ASSIGN_OR_RETURN(T x, r_.Read<T>(field));
    v.i = x;
    return v;
  }

  absl::StatusOr<GgufValue> Array(GgufValue v, std::string_view key, const Field& field, int depth) {
    if (depth >= kMaxArrayDepth) {
      return Malformed(absl::StrFormat("arrays nested more than %d deep in %s at byte offset %d",
                                       kMaxArrayDepth, field.Describe(), r_.pos()));
    }
    TANDEM_ASSIGN_OR_RETURN(v.array_type, ReadType({"array element type", -1, "metadata key", key}));
    const size_t length_at = r_.pos();
    TANDEM_ASSIGN_OR_RETURN(uint64_t length, r_.Read<uint64_t>({"array length", -1, "metadata key", key}));
    const uint64_t min_bytes = MinEncodedBytes(v.array_type);
    if (length > r_.remaining() / min_bytes) {
      return Malformed(absl::StrFormat(
          "array length %d of metadata key %s at byte offset %d cannot fit in the remaining %d "
          "bytes (each %s element takes at least %d)",
          length, Quote(key), length_at, r_.remaining(), GgufTypeName(v.array_type), min_bytes));
    }
    if (length > values_left_) {
      return Malformed(
          absl::StrFormat("array length %d of metadata key %s at byte offset %d exceeds the limit of %d "
                          "metadata values",
                          length, Quote(key), length_at, kMaxMetadataValues));
    }
    v.array.reserve(length);
    for (uint64_t i = 0; i < length; ++i) {
      TANDEM_ASSIGN_OR_RETURN(GgufValue element,
                              Parse(v.array_type, key, static_cast<int64_t>(i), depth + 1));
      v.array.push_back(std::move(element));
    }
    return v;
  }

  Reader& r_;
  uint64_t values_left_ = kMaxMetadataValues;
};

absl::StatusOr<uint64_t> CheckAlignment(const GgufValue& value, size_t at) {
  const std::optional<uint64_t> alignment = AsUint(value);
  if (!alignment.has_value() && !IsSigned(value.type)) {
    return Malformed(
        absl::StrFormat("general.alignment at byte offset %d has type %s, want an unsigned integer", at,
                        TypeDescription(value)));
  }
  if (!alignment.has_value() || !std::has_single_bit(*alignment)) {
    return Malformed(absl::StrFormat("general.alignment %s at byte offset %d is not a nonzero power of two",
                                     ValueString(value), at));
  }
  return *alignment;
}

absl::Status Annotate(const absl::Status& status, const std::string& path) {
  return absl::Status(status.code(), absl::StrCat(status.message(), " (file ", path, ")"));
}

}  // namespace

std::string_view GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path, "gguf"));
  auto file = absl::WrapUnique(new GgufFile());
  file->bytes_ = mapping->data();
  file->size_ = mapping->size();
  file->mapping_ = std::move(mapping);
  if (absl::Status s = file->Parse(); !s.ok()) return Annotate(s, path);
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBuffer(std::string_view bytes) {
  auto file = absl::WrapUnique(new GgufFile());
  file->owned_ = std::make_unique_for_overwrite<uint8_t[]>(bytes.size());
  if (!bytes.empty()) std::memcpy(file->owned_.get(), bytes.data(), bytes.size());
  file->bytes_ = file->owned_.get();
  file->size_ = bytes.size();
  TANDEM_RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufFile::~GgufFile() = default;

absl::Status GgufFile::Parse() {
  Reader r(bytes_, size_);
  alignment_ = kDefaultAlignment;  // Unless general.alignment says otherwise.

  // Header.
  TANDEM_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>({"magic"}));
  if (magic != kMagic) {
    return Malformed(
        absl::StrFormat("bad magic 0x%08x at byte offset 0, want 0x%08x (\"GGUF\")", magic, kMagic));
  }
  TANDEM_ASSIGN_OR_RETURN(version_, r.Read<uint32_t>({"version"}));
  if (version_ == 1) {
    return Malformed(
        "version 1 at byte offset 4 is not supported (GGUF v1 used 32-bit counts and lengths); "
        "convert the file to version 2 or 3");
  }
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped >= 1 && swapped <= 3) {
      return Malformed(absl::StrFormat(
          "version 0x%08x at byte offset 4 is a big-endian GGUF file, which is not supported", version_));
    }
    return Malformed(absl::StrFormat("unsupported version %d at byte offset 4, want 2 or 3", version_));
  }
  TANDEM_ASSIGN_OR_RETURN(uint64_t tensor_count, r.Read<uint64_t>({"tensor count"}));
  TANDEM_ASSIGN_OR_RETURN(uint64_t kv_count, r.Read<uint64_t>({"kv count"}));
  // Both sections must fit in what follows; checking here bounds the reserves
  // below by the file size.
  if (tensor_count > r.remaining() / kMinTensorInfoBytes) {
    return Malformed(
        absl::StrFormat("tensor count %d at byte offset 8 cannot fit in the remaining %d bytes (each tensor "
                        "info takes at least %d)",
                        tensor_count, r.remaining(), kMinTensorInfoBytes));
  }
  if (kv_count > (r.remaining() - tensor_count * kMinTensorInfoBytes) / kMinKvBytes) {
    return Malformed(absl::StrFormat(
        "kv count %d at byte offset 16 cannot fit in the remaining %d bytes (each key-value "
        "pair takes at least %d, and the %d tensor infos at least %d)",
        kv_count, r.remaining(), kMinKvBytes, tensor_count, tensor_count * kMinTensorInfoBytes));
  }

  // Metadata.
  keys_.reserve(kv_count);
  metadata_.reserve(kv_count);
  ValueParser values(r);
  for (uint64_t k = 0; k < kv_count; ++k) {
    const size_t key_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(std::string_view key, r.String({"metadata key"}));
    if (metadata_.contains(Absl(key))) {
      return Malformed(absl::StrFormat("duplicate metadata key %s at byte offset %d", Quote(key), key_at));
    }
    TANDEM_ASSIGN_OR_RETURN(GgufType type, values.ReadType({"value type", -1, "metadata key", key}));
    const size_t value_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(GgufValue value, values.Parse(type, key, -1, 0));
    if (key == "general.alignment") {
      TANDEM_ASSIGN_OR_RETURN(alignment_, CheckAlignment(value, value_at));
    }
    keys_.emplace_back(key);
    metadata_.emplace(keys_.back(), std::move(value));
  }

  // Tensor infos. The first unsupported tensor type is remembered rather than
  // returned at once, so a file that is also malformed reports that instead.
  absl::Status unsupported;
  std::vector<size_t> offset_field_at;  // Per tensor, for data-range errors.
  tensors_.reserve(tensor_count);
  tensor_index_.reserve(tensor_count);
  offset_field_at.reserve(tensor_count);
  for (uint64_t t = 0; t < tensor_count; ++t) {
    const size_t name_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(std::string_view name, r.String({"tensor name"}));
    if (tensor_index_.contains(Absl(name))) {
      return Malformed(absl::StrFormat("duplicate tensor name %s at byte offset %d", Quote(name), name_at));
    }
    GgufTensorInfo info;
    info.name.assign(name);

    const size_t n_dims_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>({"n_dims", -1, "tensor", name}));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Malformed(absl::StrFormat("tensor %s has n_dims %d at byte offset %d, want 1 to %d", Quote(name),
                                       n_dims, n_dims_at, kMaxDims));
    }
    // The element count must fit int64 (as in ggml, whose ne[] are int64).
    constexpr uint64_t kMaxElements = std::numeric_limits<int64_t>::max();
    uint64_t num_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const size_t dim_at = r.pos();
      TANDEM_ASSIGN_OR_RETURN(uint64_t dim, r.Read<uint64_t>({"dimension", d, "tensor", name}));
      if (dim == 0) {
        return Malformed(
            absl::StrFormat("dimension %d of tensor %s is 0 at byte offset %d", d, Quote(name), dim_at));
      }
      if (dim > kMaxElements / num_elements) {
        return Malformed(absl::StrFormat(
            "element count of tensor %s overflows int64 at dimension %d = %d (byte offset %d)", Quote(name),
            d, dim, dim_at));
      }
      num_elements *= dim;
      info.dims.push_back(dim);
    }
    info.num_elements = num_elements;

    const size_t type_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(uint32_t ggml_type, r.Read<uint32_t>({"type", -1, "tensor", name}));
    const size_t offset_at = r.pos();
    TANDEM_ASSIGN_OR_RETURN(info.offset, r.Read<uint64_t>({"data offset", -1, "tensor", name}));
    if (info.offset % alignment_ != 0) {
      return Malformed(absl::StrFormat(
          "data offset %d of tensor %s at byte offset %d is not a multiple of the alignment %d", info.offset,
          Quote(name), offset_at, alignment_));
    }

    const std::optional<DType> dtype = DTypeFromGgml(ggml_type);
    if (dtype.has_value()) {
      info.type = *dtype;
      switch (info.type) {
        case DType::kF32:
          if (num_elements > std::numeric_limits<uint64_t>::max() / 4) {
            return Malformed(absl::StrFormat(
                "size in bytes of tensor %s (%d F32 elements) overflows (type at byte offset %d)",
                Quote(name), num_elements, type_at));
          }
          info.size_bytes = num_elements * 4;
          break;
        case DType::kF16:
        case DType::kBF16:
          info.size_bytes = num_elements * 2;  // num_elements <= INT64_MAX: cannot overflow.
          break;
        case DType::kQ8_0:
        case DType::kQ4_0:
        case DType::kQ4_K:
          // Q8_0 and Q4_0 quantise whole blocks of 32 along the innermost dimension, Q4_K of 256.
          if (info.dims[0] % static_cast<uint64_t>(BlockElements(info.type)) != 0) {
            return Malformed(absl::StrFormat(
                "tensor %s of type %s has innermost dimension %d, not a multiple of %d "
                "(type at byte offset %d)",
                Quote(name), Absl(DTypeName(info.type)), info.dims[0], BlockElements(info.type), type_at));
          }
          info.size_bytes = DTypeBytes(info.type, num_elements);
          break;
      }
    } else if (unsupported.ok()) {
      const std::string_view ggml_name = GgmlTypeName(ggml_type);
      unsupported = absl::UnimplementedError(absl::StrFormat(
          "gguf: tensor %s has ggml type %d%s at byte offset %d, which Tandem does not support "
          "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K)",
          Quote(name), ggml_type, ggml_name.empty() ? "" : absl::StrCat(" (", Absl(ggml_name), ")"),
          type_at));
    }

    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
    offset_field_at.push_back(offset_at);
  }

  // Tensor data starts at the end of the header, rounded up to the alignment.
  const uint64_t header_end = r.pos();
  if (header_end > std::numeric_limits<uint64_t>::max() - (alignment_ - 1)) {
    return Malformed(
        absl::StrFormat("data section offset overflows (header ends at byte offset "
                        "%d, alignment %d)",
                        header_end, alignment_));
  }
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;

  for (size_t t = 0; t < tensors_.size(); ++t) {
    GgufTensorInfo& info = tensors_[t];
    if (info.size_bytes == 0) continue;  // Unsupported type: size unknown.
    // Compare against the file size in ways that cannot wrap.
    const bool start_ok = data_offset_ <= size_ && info.offset <= size_ - data_offset_;
    const uint64_t start = start_ok ? data_offset_ + info.offset : 0;
    if (!start_ok || info.size_bytes > size_ - start) {
      return Malformed(absl::StrFormat(
          "data of tensor %s (%d bytes at data offset %d, data section at byte offset %d) extends "
          "past the end of the file (%d bytes); its offset field is at byte offset %d",
          Quote(info.name), info.size_bytes, info.offset, data_offset_, size_, offset_field_at[t]));
    }
    info.data = bytes_ + start;
  }
  return unsupported;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  const auto it = metadata_.find(Absl(key));
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  const auto it = tensor_index_.find(Absl(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

absl::StatusOr<const GgufValue*> Lookup(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat("gguf: metadata key ", Quote(key), " not found"));
  }
  return v;
}

absl::Status WrongType(std::string_view key, const GgufValue& v, std::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: metadata key ", Quote(key), " has type ",
                                                 TypeDescription(v), ", want ", Absl(want)));
}

absl::Status OutOfRange(std::string_view key, const GgufValue& v, std::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat("gguf: metadata key ", Quote(key), " holds ", ValueString(v),
                                                 " (", Absl(GgufTypeName(v.type)), "), which does not fit ",
                                                 Absl(want)));
}

}  // namespace

absl::StatusOr<uint64_t> GgufFile::GetUint(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<uint64_t> u = AsUint(*v)) return *u;
  if (IsSigned(v->type)) return OutOfRange(key, *v, "uint64");
  return WrongType(key, *v, "an unsigned integer");
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<int64_t> i = AsInt(*v)) return *i;
  if (IsUnsigned(v->type)) return OutOfRange(key, *v, "int64");
  return WrongType(key, *v, "an integer");
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (std::optional<double> f = AsDouble(*v)) return *f;
  return WrongType(key, *v, "a float or an integer");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufType::kBool) return WrongType(key, *v, "bool");
  return v->b;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufType::kString) return WrongType(key, *v, "string");
  return v->s;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufType::kArray || v->array_type != GgufType::kString) {
    return WrongType(key, *v, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(e.s);
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufType::kArray ||
      !(IsFloat(v->array_type) || IsUnsigned(v->array_type) || IsSigned(v->array_type))) {
    return WrongType(key, *v, "array of float or integer");
  }
  std::vector<float> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(static_cast<float>(*AsDouble(e)));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  TANDEM_ASSIGN_OR_RETURN(const GgufValue* v, Lookup(*this, key));
  if (v->type != GgufType::kArray || !(IsUnsigned(v->array_type) || IsSigned(v->array_type))) {
    return WrongType(key, *v, "array of integer");
  }
  std::vector<int64_t> out;
  out.reserve(v->array.size());
  for (size_t i = 0; i < v->array.size(); ++i) {
    const std::optional<int64_t> x = AsInt(v->array[i]);
    if (!x.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("gguf: element ", i, " of metadata key ", Quote(key),
                                                     " holds ", v->array[i].u,
                                                     " (uint64), which does not fit int64"));
    }
    out.push_back(*x);
  }
  return out;
}

}  // namespace tandem::model
