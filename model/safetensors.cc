#include "model/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::model {
namespace {

using Json = nlohmann::json;

// The reference implementation's cap; a larger header is an attack, not a model.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
// JSON nesting deeper than this is malformed (a header needs 3 levels).
constexpr int kMaxDepth = 64;

// Debian's Abseil has its own string_view type.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A name from the file, quoted and escaped for an error message, cut short so
// a huge key cannot blow up the message.
std::string Quote(std::string_view name) {
  constexpr size_t kMax = 64;
  const bool cut = name.size() > kMax;
  return absl::StrCat("'", absl::CHexEscape(Absl(name.substr(0, kMax))), cut ? "...'" : "'");
}

absl::Status Malformed(std::string_view what, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(Absl(what), ": ", Absl(message)));
}

// A SAX handler that builds the DOM (nlohmann's own builder, exceptions off)
// and additionally records where a syntax error happened, rejects duplicate
// keys (which the DOM builder silently overwrites) and bounds the nesting.
class CheckingSax {
 public:
  explicit CheckingSax(Json& root) : dom_(root, /*allow_exceptions=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(Json::number_float_t v, const Json::string_t& s) { return dom_.number_float(v, s); }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    if (!Push()) return false;
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(Json::string_t& k) {
    if (!keys_.back().insert(k).second) {
      error_ = absl::StrCat("duplicate key ", Quote(k),
                            keys_.size() > 1 ? absl::StrCat(" in entry ", Quote(top_key_)) : "");
      return false;
    }
    if (keys_.size() == 1) top_key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    if (!Push()) return false;
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) {
    error_position_ = position > 0 ? position - 1 : 0;
    error_ = ex.what();
    return false;
  }

  // Set when the handler or the parser stopped the parse.
  const std::string& error() const { return error_; }
  // For syntax errors: the offset in the text where the parser stopped.
  std::optional<size_t> error_position() const { return error_position_; }

 private:
  bool Push() {
    if (++depth_ > kMaxDepth) {
      error_ = absl::StrCat("JSON nested deeper than ", kMaxDepth, " levels");
      return false;
    }
    return true;
  }

  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  std::vector<absl::flat_hash_set<std::string>> keys_;
  std::string top_key_;
  int depth_ = 0;
  std::string error_;
  std::optional<size_t> error_position_;
};

// Parses `text` (which starts at byte `base` of its file) as JSON. Errors give
// the byte offset in the file and in the text.
absl::StatusOr<Json> ParseJson(std::string_view text, uint64_t base, std::string_view what) {
  Json root;
  CheckingSax sax(root);
  const bool ok = Json::sax_parse(text.begin(), text.end(), &sax, nlohmann::detail::input_format_t::json,
                                  /*strict=*/true);
  if (!ok || !sax.error().empty()) {
    if (sax.error_position().has_value()) {
      const uint64_t pos = *sax.error_position();
      return Malformed(what, absl::StrFormat("invalid JSON at byte %d (offset %d in the JSON): %s",
                                             base + pos, pos, sax.error()));
    }
    return Malformed(what, sax.error().empty() ? std::string("invalid JSON") : sax.error());
  }
  return root;
}

struct DTypeInfo {
  const char* name;
  uint64_t bytes;
};

// Every dtype of the safetensors specification.
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
    {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8},
};

// A non-negative integer that fits uint64.
bool AsUint(const Json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

std::string TypeName(const Json& v) { return v.type_name(); }

// A JSON value for an error message: short, and never throwing (invalid
// UTF-8 is replaced).
std::string Dump(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 40) + "...";
  return s;
}

}  // namespace

std::optional<DType> SafetensorsDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return std::nullopt;
}

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path, "safetensors"));
  auto file = absl::WrapUnique(new SafetensorsFile());
  file->bytes_ = mapping->data();
  file->size_ = mapping->size();
  file->mapping_ = std::move(mapping);
  if (absl::Status s = file->Parse(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBuffer(std::string_view bytes) {
  auto file = absl::WrapUnique(new SafetensorsFile());
  file->owned_ = std::make_unique_for_overwrite<uint8_t[]>(bytes.size());
  if (!bytes.empty()) std::memcpy(file->owned_.get(), bytes.data(), bytes.size());
  file->bytes_ = file->owned_.get();
  file->size_ = bytes.size();
  TANDEM_RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::Status SafetensorsFile::Parse() {
  constexpr std::string_view kWhat = "safetensors";
  if (size_ < 8) {
    return Malformed(kWhat, absl::StrFormat("file of %d bytes is too short for the 8-byte header "
                                            "length at byte 0",
                                            size_));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes_[i];
  if (n > size_ - 8) {
    return Malformed(
        kWhat, absl::StrFormat("header length %d at byte 0 exceeds the %d bytes after it", n, size_ - 8));
  }
  if (n > kMaxHeaderSize) {
    return Malformed(
        kWhat, absl::StrFormat("header length %d at byte 0 exceeds the limit of %d", n, kMaxHeaderSize));
  }
  header_size_ = n;
  const std::string_view text(reinterpret_cast<const char*>(bytes_ + 8), n);
  TANDEM_ASSIGN_OR_RETURN(Json root, ParseJson(text, 8, kWhat));
  if (!root.is_object()) {
    return Malformed(kWhat, absl::StrCat("header at byte 8 is a JSON ", TypeName(root), ", not an object"));
  }
  const uint64_t data_size = size_ - 8 - n;
  const uint8_t* data = bytes_ + 8 + n;
  for (auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        return Malformed(kWhat, absl::StrCat("__metadata__ is a ", TypeName(value), ", not an object"));
      }
      for (auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return Malformed(kWhat, absl::StrCat("__metadata__ value ", Quote(mk), " is a ", TypeName(mv),
                                               ", not a string"));
        }
        metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor ", Quote(key));
    if (!value.is_object()) {
      return Malformed(kWhat, absl::StrCat(where, " is a ", TypeName(value), ", not an object"));
    }
    SafetensorsTensor t;
    t.name = key;
    // dtype
    auto dt = value.find("dtype");
    if (dt == value.end()) return Malformed(kWhat, absl::StrCat(where, " has no dtype"));
    if (!dt->is_string()) {
      return Malformed(kWhat, absl::StrCat(where, ": dtype is a ", TypeName(*dt), ", not a string"));
    }
    t.dtype_name = dt->get<std::string>();
    const DTypeInfo* info = nullptr;
    for (const DTypeInfo& d : kDTypes) {
      if (t.dtype_name == d.name) info = &d;
    }
    if (info == nullptr) {
      return Malformed(kWhat, absl::StrCat(where, " has unknown dtype ", Quote(t.dtype_name)));
    }
    t.dtype = SafetensorsDType(t.dtype_name);
    // shape
    auto sh = value.find("shape");
    if (sh == value.end()) return Malformed(kWhat, absl::StrCat(where, " has no shape"));
    if (!sh->is_array()) {
      return Malformed(kWhat, absl::StrCat(where, ": shape is a ", TypeName(*sh), ", not an array"));
    }
    uint64_t numel = 1;
    for (size_t i = 0; i < sh->size(); ++i) {
      uint64_t d = 0;
      const Json& dim = (*sh)[i];
      if (!AsUint(dim, &d)) {
        return Malformed(kWhat, absl::StrCat(where, ": shape dimension ", i, " (", Dump(dim),
                                             ") is not a non-negative integer"));
      }
      if (d > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, d, &numel)) {
        return Malformed(kWhat, absl::StrCat(where, ": shape element count overflows at dimension ", i));
      }
      t.shape.push_back(static_cast<int64_t>(d));
    }
    t.num_elements = numel;
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, info->bytes, &bytes)) {
      return Malformed(
          kWhat, absl::StrCat(where, ": byte size of ", numel, " elements of ", info->name, " overflows"));
    }
    // data_offsets
    auto off = value.find("data_offsets");
    if (off == value.end()) return Malformed(kWhat, absl::StrCat(where, " has no data_offsets"));
    if (!off->is_array() || off->size() != 2 || !AsUint((*off)[0], &t.begin) || !AsUint((*off)[1], &t.end)) {
      return Malformed(kWhat, absl::StrCat(where, ": data_offsets ", Dump(*off),
                                           " is not [begin, end] of non-negative integers"));
    }
    if (t.begin > t.end) {
      return Malformed(kWhat, absl::StrFormat("%s: data_offsets begin %d > end %d", where, t.begin, t.end));
    }
    if (t.end > data_size) {
      return Malformed(
          kWhat, absl::StrFormat("%s: data_offsets end %d (file byte %d) is past the %d-byte data section",
                                 where, t.end, 8 + n + t.end, data_size));
    }
    t.size_bytes = t.end - t.begin;
    if (t.size_bytes != bytes) {
      return Malformed(
          kWhat, absl::StrFormat("%s: data_offsets [%d, %d] hold %d bytes but shape and dtype %s need %d",
                                 where, t.begin, t.end, t.size_bytes, info->name, bytes));
    }
    t.data = t.size_bytes > 0 ? data + t.begin : nullptr;
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    const SafetensorsTensor& prev = tensors_[i - 1];
    const SafetensorsTensor& t = tensors_[i];
    if (t.begin < prev.end) {
      return Malformed(
          kWhat, absl::StrFormat("tensor %s data_offsets [%d, %d] overlap tensor %s [%d, %d] (file byte %d)",
                                 Quote(t.name), t.begin, t.end, Quote(prev.name), prev.begin, prev.end,
                                 8 + n + t.begin));
    }
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

const SafetensorsTensor* SafetensorsFile::FindTensor(std::string_view name) const {
  auto it = index_.find(Absl(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

// Parses an index.json into (tensor name, shard file) pairs in file order.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseIndex(std::string_view text) {
  constexpr std::string_view kWhat = "safetensors index";
  TANDEM_ASSIGN_OR_RETURN(Json root, ParseJson(text, 0, kWhat));
  if (!root.is_object())
    return Malformed(kWhat, absl::StrCat("is a JSON ", TypeName(root), ", not an object"));
  auto wm = root.find("weight_map");
  if (wm == root.end()) return Malformed(kWhat, "has no weight_map");
  if (!wm->is_object()) {
    return Malformed(kWhat, absl::StrCat("weight_map is a ", TypeName(*wm), ", not an object"));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [name, file] : wm->items()) {
    if (!file.is_string()) {
      return Malformed(kWhat, absl::StrCat("weight_map entry ", Quote(name), " is a ", TypeName(file),
                                           ", not a file name"));
    }
    std::string f = file.get<std::string>();
    if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos ||
        f.find('\0') != std::string::npos) {
      return Malformed(kWhat, absl::StrCat("weight_map entry ", Quote(name), " names file ", Quote(f),
                                           ", which is not a plain file name"));
    }
    out.emplace_back(name, std::move(f));
  }
  return out;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::Status SafetensorsCheckpoint::AddFile(std::unique_ptr<SafetensorsFile> file,
                                            const std::string& file_name) {
  for (const SafetensorsTensor& t : file->tensors()) {
    if (!index_.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor ", Quote(t.name), " in ", file_name,
                                                     " is also in another shard"));
    }
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::FromIndex(
    std::string_view index_json,
    std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> shards) {
  TANDEM_ASSIGN_OR_RETURN(auto entries, ParseIndex(index_json));
  absl::flat_hash_map<std::string, const SafetensorsFile*> by_name;
  for (const auto& [name, file] : shards) by_name[name] = file.get();
  for (const auto& [tensor, file] : entries) {
    auto it = by_name.find(file);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors index: weight_map puts tensor ",
                                                     Quote(tensor), " in ", Quote(file),
                                                     ", which is not a shard"));
    }
    if (it->second->FindTensor(tensor) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors index: weight_map puts tensor ",
                                                     Quote(tensor), " in ", Quote(file),
                                                     ", which does not hold it"));
    }
  }
  auto ckpt = absl::WrapUnique(new SafetensorsCheckpoint());
  for (auto& [name, file] : shards) TANDEM_RETURN_IF_ERROR(ckpt->AddFile(std::move(file), name));
  return ckpt;
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("safetensors: cannot open ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    TANDEM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    auto ckpt = absl::WrapUnique(new SafetensorsCheckpoint());
    TANDEM_RETURN_IF_ERROR(ckpt->AddFile(std::move(file), path));
    return ckpt;
  }
  const std::string index_path = path + "/model.safetensors.index.json";
  if (::stat(index_path.c_str(), &st) == 0) {
    TANDEM_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path));
    auto entries = ParseIndex(text);
    if (!entries.ok()) {
      return absl::Status(entries.status().code(),
                          absl::StrCat(index_path, ": ", entries.status().message()));
    }
    std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> shards;
    absl::flat_hash_set<std::string> opened;
    for (const auto& [tensor, file] : *entries) {
      if (!opened.insert(file).second) continue;
      TANDEM_ASSIGN_OR_RETURN(auto shard, SafetensorsFile::Open(path + "/" + file));
      shards.emplace_back(file, std::move(shard));
    }
    auto ckpt = FromIndex(text, std::move(shards));
    if (!ckpt.ok()) {
      return absl::Status(ckpt.status().code(), absl::StrCat(index_path, ": ", ckpt.status().message()));
    }
    return ckpt;
  }
  const std::string single = path + "/model.safetensors";
  if (::stat(single.c_str(), &st) == 0) return Open(single);
  return absl::NotFoundError(absl::StrCat(
      "safetensors: ", path, " holds neither model.safetensors.index.json nor model.safetensors"));
}

const SafetensorsTensor* SafetensorsCheckpoint::FindTensor(std::string_view name) const {
  auto it = index_.find(Absl(name));
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const SafetensorsTensor*> SafetensorsCheckpoint::GetTensor(std::string_view name) const {
  const SafetensorsTensor* t = FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("safetensors: missing tensor ", Quote(name)));
  if (!t->dtype.has_value()) {
    return absl::UnimplementedError(absl::StrCat("safetensors: tensor ", Quote(name), " has dtype ",
                                                 t->dtype_name, " (supported: F32, F16, BF16)"));
  }
  return t;
}

std::vector<const SafetensorsTensor*> SafetensorsCheckpoint::tensors() const {
  std::vector<const SafetensorsTensor*> out;
  for (const auto& f : files_) {
    for (const SafetensorsTensor& t : f->tensors()) out.push_back(&t);
  }
  return out;
}

}  // namespace tandem::model
