#include "model/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ggml tensor type ids.
constexpr uint32_t kGgmlF32 = 0;
constexpr uint32_t kGgmlF16 = 1;
constexpr uint32_t kGgmlQ8_0 = 8;
constexpr uint32_t kGgmlQ4_K = 12;
constexpr uint32_t kGgmlQ6_K = 14;
constexpr uint32_t kGgmlBF16 = 30;

// ---------------------------------------------------------------------------
// Metadata value constructors.

GgufValue Uint(GgufType type, uint64_t x) {
  GgufValue v;
  v.type = type;
  v.u = x;
  return v;
}
GgufValue Int(GgufType type, int64_t x) {
  GgufValue v;
  v.type = type;
  v.i = x;
  return v;
}
GgufValue U8(uint8_t x) { return Uint(GgufType::kUint8, x); }
GgufValue U16(uint16_t x) { return Uint(GgufType::kUint16, x); }
GgufValue U32(uint32_t x) { return Uint(GgufType::kUint32, x); }
GgufValue U64(uint64_t x) { return Uint(GgufType::kUint64, x); }
GgufValue I8(int8_t x) { return Int(GgufType::kInt8, x); }
GgufValue I16(int16_t x) { return Int(GgufType::kInt16, x); }
GgufValue I32(int32_t x) { return Int(GgufType::kInt32, x); }
GgufValue I64(int64_t x) { return Int(GgufType::kInt64, x); }
GgufValue F32(float x) {
  GgufValue v;
  v.type = GgufType::kFloat32;
  v.f = x;
  return v;
}
GgufValue F64(double x) {
  GgufValue v;
  v.type = GgufType::kFloat64;
  v.f = x;
  return v;
}
GgufValue Bool(bool x) {
  GgufValue v;
  v.type = GgufType::kBool;
  v.b = x;
  return v;
}
GgufValue Str(std::string x) {
  GgufValue v;
  v.type = GgufType::kString;
  v.s = std::move(x);
  return v;
}
GgufValue Arr(GgufType element_type, std::vector<GgufValue> elements) {
  GgufValue v;
  v.type = GgufType::kArray;
  v.array_type = element_type;
  v.array = std::move(elements);
  return v;
}

// A canonical text form of a value, so round-trip mismatches print readably.
std::string Dump(const GgufValue& v) {
  std::string out(GgufTypeName(v.type));
  switch (v.type) {
    case GgufType::kUint8:
    case GgufType::kUint16:
    case GgufType::kUint32:
    case GgufType::kUint64:
      absl::StrAppend(&out, ":", v.u);
      break;
    case GgufType::kInt8:
    case GgufType::kInt16:
    case GgufType::kInt32:
    case GgufType::kInt64:
      absl::StrAppend(&out, ":", v.i);
      break;
    case GgufType::kFloat32:
    case GgufType::kFloat64:
      absl::StrAppend(&out, ":", absl::StrFormat("%a", v.f));
      break;
    case GgufType::kBool:
      absl::StrAppend(&out, ":", v.b ? "true" : "false");
      break;
    case GgufType::kString:
      absl::StrAppend(&out, ":\"", v.s, "\"");
      break;
    case GgufType::kArray: {
      absl::StrAppend(&out, "<", std::string(GgufTypeName(v.array_type)), ">[");
      for (size_t i = 0; i < v.array.size(); ++i) {
        absl::StrAppend(&out, i == 0 ? "" : ", ", Dump(v.array[i]));
      }
      absl::StrAppend(&out, "]");
      break;
    }
  }
  return out;
}

// Bytes of a tensor of `ggml_type` with `num_elements` elements (supported
// types only).
uint64_t TensorBytes(uint32_t ggml_type, uint64_t num_elements) {
  switch (ggml_type) {
    case kGgmlF32:
      return num_elements * 4;
    case kGgmlF16:
    case kGgmlBF16:
      return num_elements * 2;
    case kGgmlQ8_0:
      return num_elements / 32 * 34;
    case kGgmlQ4_K:
      return num_elements / 256 * 144;
  }
  return 16;  // Anything, for unsupported types.
}

// ---------------------------------------------------------------------------
// A minimal GGUF writer. Build() lays the file out as llama.cpp does (tensor
// data in order, each at an aligned offset) and records where each field went,
// so tests can corrupt one field at a time.

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3, uint64_t alignment = 32)
      : version_(version), alignment_(alignment) {}

  GgufWriter& Add(std::string key, GgufValue value) {
    kvs_.emplace_back(std::move(key), std::move(value));
    return *this;
  }

  // Adds a tensor whose data is a deterministic byte pattern of the right size.
  GgufWriter& AddTensor(std::string name, std::vector<uint64_t> dims, uint32_t ggml_type) {
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    std::string data(TensorBytes(ggml_type, n), '\0');
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = static_cast<char>(i * 31 + tensors_.size() * 7 + 1);
    }
    return AddTensorWithData(std::move(name), std::move(dims), ggml_type, std::move(data));
  }

  GgufWriter& AddTensorWithData(std::string name, std::vector<uint64_t> dims, uint32_t ggml_type,
                                std::string data) {
    tensors_.push_back({std::move(name), std::move(dims), ggml_type, std::move(data)});
    return *this;
  }

  std::string Build() {
    out_.clear();
    at_.clear();
    Put<uint32_t>(0x46554747);  // "GGUF"
    Mark("version");
    Put<uint32_t>(version_);
    Mark("tensor_count");
    Put<uint64_t>(tensors_.size());
    Mark("kv_count");
    Put<uint64_t>(kvs_.size());
    for (const auto& [key, value] : kvs_) {
      Mark("key:" + key);
      PutString(key);
      Mark("type:" + key);
      Put<uint32_t>(static_cast<uint32_t>(value.type));
      Mark("value:" + key);
      PutValue(key, value);
    }
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const Tensor& t : tensors_) {
      Mark("name:" + t.name);
      PutString(t.name);
      Mark("n_dims:" + t.name);
      Put<uint32_t>(t.dims.size());
      for (size_t d = 0; d < t.dims.size(); ++d) {
        Mark(absl::StrCat("dim", d, ":", t.name));
        Put<uint64_t>(t.dims[d]);
      }
      Mark("ggml_type:" + t.name);
      Put<uint32_t>(t.ggml_type);
      Mark("offset:" + t.name);
      Put<uint64_t>(offset);
      offsets.push_back(offset);
      offset = AlignUp(offset + t.data.size());
    }
    header_end_ = out_.size();
    data_offset_ = AlignUp(out_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out_.resize(data_offset_ + offsets[i], '\0');
      Mark("data:" + tensors_[i].name);
      out_ += tensors_[i].data;
    }
    return out_;
  }

  // Where Build() put a field, e.g. at("offset:token_embd.weight").
  size_t at(const std::string& field) const {
    const auto it = at_.find(field);
    EXPECT_NE(it, at_.end()) << "no field " << field;
    return it == at_.end() ? 0 : it->second;
  }
  uint64_t header_end() const { return header_end_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::string& tensor_data(size_t i) const { return tensors_[i].data; }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t ggml_type;
    std::string data;
  };

  uint64_t AlignUp(uint64_t x) const { return (x + alignment_ - 1) / alignment_ * alignment_; }
  void Mark(const std::string& field) { at_.emplace(field, out_.size()); }

  template <typename T>
  void Put(T x) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &x, sizeof(T));
    out_.append(bytes, sizeof(T));
  }
  void PutString(const std::string& s) {
    Put<uint64_t>(s.size());
    out_ += s;
  }
  // `key` is set for top-level values only, to record array field positions.
  void PutValue(const std::string& key, const GgufValue& v) {
    switch (v.type) {
      case GgufType::kUint8:
        Put<uint8_t>(v.u);
        break;
      case GgufType::kUint16:
        Put<uint16_t>(v.u);
        break;
      case GgufType::kUint32:
        Put<uint32_t>(v.u);
        break;
      case GgufType::kUint64:
        Put<uint64_t>(v.u);
        break;
      case GgufType::kInt8:
        Put<int8_t>(v.i);
        break;
      case GgufType::kInt16:
        Put<int16_t>(v.i);
        break;
      case GgufType::kInt32:
        Put<int32_t>(v.i);
        break;
      case GgufType::kInt64:
        Put<int64_t>(v.i);
        break;
      case GgufType::kFloat32:
        Put<float>(v.f);
        break;
      case GgufType::kFloat64:
        Put<double>(v.f);
        break;
      case GgufType::kBool:
        Put<uint8_t>(v.b ? 1 : 0);
        break;
      case GgufType::kString:
        PutString(v.s);
        break;
      case GgufType::kArray:
        if (!key.empty()) Mark("array_type:" + key);
        Put<uint32_t>(static_cast<uint32_t>(v.array_type));
        if (!key.empty()) Mark("array_len:" + key);
        Put<uint64_t>(v.array.size());
        for (const GgufValue& e : v.array) PutValue("", e);
        break;
    }
  }

  uint32_t version_;
  uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::vector<Tensor> tensors_;
  std::string out_;
  std::map<std::string, size_t> at_;
  uint64_t header_end_ = 0;
  uint64_t data_offset_ = 0;
};

void PatchU32(std::string& file, size_t at, uint32_t x) { std::memcpy(&file[at], &x, 4); }
void PatchU64(std::string& file, size_t at, uint64_t x) { std::memcpy(&file[at], &x, 8); }

// Every value type, arrays of each, arrays of strings, nested arrays and an
// empty array, plus one tensor of each supported type.
GgufWriter RichWriter(uint32_t version) {
  GgufWriter w(version);
  w.Add("general.architecture", Str("llama"))
      .Add("t.u8", U8(250))
      .Add("t.i8", I8(-100))
      .Add("t.u16", U16(65000))
      .Add("t.i16", I16(-30000))
      .Add("t.u32", U32(4000000000u))
      .Add("t.i32", I32(-2000000000))
      .Add("t.f32", F32(1e-5f))
      .Add("t.bool", Bool(true))
      .Add("t.false", Bool(false))
      .Add("t.str", Str(std::string("h\0llo \xE2\x96\x81", 10)))
      .Add("t.empty_str", Str(""))
      .Add("t.u64", U64(18446744073709551615ull))
      .Add("t.i64", I64(-9223372036854775807ll - 1))
      .Add("t.f64", F64(3.141592653589793))
      .Add("t.arr_u8", Arr(GgufType::kUint8, {U8(1), U8(2), U8(255)}))
      .Add("t.arr_i8", Arr(GgufType::kInt8, {I8(-1), I8(127)}))
      .Add("t.arr_u16", Arr(GgufType::kUint16, {U16(7)}))
      .Add("t.arr_i16", Arr(GgufType::kInt16, {I16(-7), I16(8)}))
      .Add("t.arr_u32", Arr(GgufType::kUint32, {U32(1), U32(4294967295u)}))
      .Add("t.arr_i32", Arr(GgufType::kInt32, {I32(-5), I32(0), I32(5)}))
      .Add("t.arr_f32", Arr(GgufType::kFloat32, {F32(0.5f), F32(-2.25f)}))
      .Add("t.arr_bool", Arr(GgufType::kBool, {Bool(false), Bool(true)}))
      .Add("t.arr_str", Arr(GgufType::kString, {Str("<unk>"), Str(""), Str("\xE2\x96\x81the")}))
      .Add("t.arr_u64", Arr(GgufType::kUint64, {U64(1ull << 40)}))
      .Add("t.arr_i64", Arr(GgufType::kInt64, {I64(-(1ll << 40))}))
      .Add("t.arr_f64", Arr(GgufType::kFloat64, {F64(1e300), F64(-0.0)}))
      .Add("t.arr_empty", Arr(GgufType::kFloat32, {}))
      .Add("t.nested", Arr(GgufType::kArray, {Arr(GgufType::kUint32, {U32(1), U32(2)}),
                                              Arr(GgufType::kString, {Str("x")}), Arr(GgufType::kInt8, {})}))
      .Add("t.nested3", Arr(GgufType::kArray, {Arr(GgufType::kArray, {Arr(GgufType::kBool, {Bool(true)})})}));
  w.AddTensor("token_embd.weight", {8, 3}, kGgmlF32)
      .AddTensor("blk.0.attn_q.weight", {4, 2, 2}, kGgmlF16)
      .AddTensor("blk.0.ffn_up.weight", {64, 2}, kGgmlQ8_0)
      .AddTensor("output.weight", {5, 1, 1, 3}, kGgmlBF16);
  return w;
}

// ---------------------------------------------------------------------------
// Round trips.

void ExpectRichFile(const GgufFile& gguf, GgufWriter& w, uint32_t version) {
  EXPECT_EQ(gguf.version(), version);
  EXPECT_EQ(gguf.alignment(), 32u);
  EXPECT_EQ(gguf.data_offset(), w.data_offset());
  EXPECT_EQ(gguf.data_offset() % 32, 0u);

  ASSERT_EQ(gguf.keys().size(), 30u);
  EXPECT_EQ(gguf.keys().front(), "general.architecture");
  EXPECT_EQ(gguf.keys().back(), "t.nested3");

  const std::vector<std::pair<std::string, std::string>> want = {
      {"general.architecture", "string:\"llama\""},
      {"t.u8", "uint8:250"},
      {"t.i8", "int8:-100"},
      {"t.u16", "uint16:65000"},
      {"t.i16", "int16:-30000"},
      {"t.u32", "uint32:4000000000"},
      {"t.i32", "int32:-2000000000"},
      {"t.f32", Dump(F32(1e-5f))},
      {"t.bool", "bool:true"},
      {"t.false", "bool:false"},
      {"t.str", Dump(Str(std::string("h\0llo \xE2\x96\x81", 10)))},
      {"t.empty_str", "string:\"\""},
      {"t.u64", "uint64:18446744073709551615"},
      {"t.i64", "int64:-9223372036854775808"},
      {"t.f64", Dump(F64(3.141592653589793))},
      {"t.arr_u8", "array<uint8>[uint8:1, uint8:2, uint8:255]"},
      {"t.arr_i8", "array<int8>[int8:-1, int8:127]"},
      {"t.arr_u16", "array<uint16>[uint16:7]"},
      {"t.arr_i16", "array<int16>[int16:-7, int16:8]"},
      {"t.arr_u32", "array<uint32>[uint32:1, uint32:4294967295]"},
      {"t.arr_i32", "array<int32>[int32:-5, int32:0, int32:5]"},
      {"t.arr_f32", Dump(Arr(GgufType::kFloat32, {F32(0.5f), F32(-2.25f)}))},
      {"t.arr_bool", "array<bool>[bool:false, bool:true]"},
      {"t.arr_str", "array<string>[string:\"<unk>\", string:\"\", string:\"\xE2\x96\x81the\"]"},
      {"t.arr_u64", "array<uint64>[uint64:1099511627776]"},
      {"t.arr_i64", "array<int64>[int64:-1099511627776]"},
      {"t.arr_f64", Dump(Arr(GgufType::kFloat64, {F64(1e300), F64(-0.0)}))},
      {"t.arr_empty", "array<float32>[]"},
      {"t.nested",
       "array<array>[array<uint32>[uint32:1, uint32:2], array<string>[string:\"x\"], "
       "array<int8>[]]"},
      {"t.nested3", "array<array>[array<array>[array<bool>[bool:true]]]"},
  };
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].first);
    EXPECT_EQ(gguf.keys()[i], want[i].first);
    const GgufValue* v = gguf.Find(want[i].first);
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(Dump(*v), want[i].second);
  }
  EXPECT_EQ(gguf.Find("t.absent"), nullptr);

  ASSERT_EQ(gguf.tensors().size(), 4u);
  struct WantTensor {
    std::string name;
    std::vector<uint64_t> dims;
    DType type;
    uint64_t num_elements;
    uint64_t size_bytes;
  };
  const std::vector<WantTensor> tensors = {
      {"token_embd.weight", {8, 3}, DType::kF32, 24, 96},
      {"blk.0.attn_q.weight", {4, 2, 2}, DType::kF16, 16, 32},
      {"blk.0.ffn_up.weight", {64, 2}, DType::kQ8_0, 128, 136},
      {"output.weight", {5, 1, 1, 3}, DType::kBF16, 15, 30},
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].name);
    const GgufTensorInfo& t = gguf.tensors()[i];
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dims, tensors[i].dims);
    EXPECT_EQ(t.type, tensors[i].type);
    EXPECT_EQ(t.num_elements, tensors[i].num_elements);
    EXPECT_EQ(t.size_bytes, tensors[i].size_bytes);
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(gguf.FindTensor(t.name), &t);
    ASSERT_NE(t.data, nullptr);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.size_bytes), w.tensor_data(i));
  }
  EXPECT_EQ(gguf.FindTensor("absent"), nullptr);
}

TEST(GgufTest, RoundTripsEveryValueTypeAndTensorTypeV3) {
  GgufWriter w = RichWriter(3);
  const std::string file = w.Build();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(file));
  ExpectRichFile(*gguf, w, 3);
}

TEST(GgufTest, RoundTripsEveryValueTypeAndTensorTypeV2) {
  GgufWriter w = RichWriter(2);
  const std::string file = w.Build();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(file));
  ExpectRichFile(*gguf, w, 2);
}

TEST(GgufTest, FromBufferCopiesTheBytes) {
  GgufWriter w = RichWriter(3);
  std::string file = w.Build();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(file));
  std::fill(file.begin(), file.end(), '\xff');
  ExpectRichFile(*gguf, w, 3);
}

TEST(GgufTest, HonoursGeneralAlignment) {
  for (uint64_t alignment : {1u, 8u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    GgufWriter w(3, alignment);
    w.Add("general.alignment", U32(alignment));
    w.AddTensor("a", {3}, kGgmlF32).AddTensor("b", {5}, kGgmlF16).AddTensor("c", {1}, kGgmlF32);
    const std::string file = w.Build();
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(file));
    EXPECT_EQ(gguf->alignment(), alignment);
    EXPECT_EQ(gguf->data_offset(), w.data_offset());
    EXPECT_EQ(gguf->data_offset() % alignment, 0u);
    EXPECT_GE(gguf->data_offset(), w.header_end());
    for (size_t i = 0; i < 3; ++i) {
      const GgufTensorInfo& t = gguf->tensors()[i];
      EXPECT_EQ(t.offset % alignment, 0u);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.size_bytes), w.tensor_data(i));
    }
  }
}

TEST(GgufTest, FileWithoutTensors) {
  GgufWriter w;
  w.Add("general.name", Str("empty"));
  const std::string file = w.Build();
  // The file ends at the header: there is no padding before an empty data
  // section, as llama.cpp writes it.
  ASSERT_EQ(file.size(), w.header_end());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(file));
  EXPECT_TRUE(gguf->tensors().empty());
  EXPECT_EQ(gguf->data_offset(), (file.size() + 31) / 32 * 32);
  EXPECT_THAT(gguf->keys(), ElementsAre("general.name"));
}

// ---------------------------------------------------------------------------
// Getters.

class GgufGetterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GgufWriter w;
    w.Add("u8", U8(200))
        .Add("u64.big", U64(18446744073709551615ull))
        .Add("i32.neg", I32(-7))
        .Add("i64.pos", I64(42))
        .Add("f32", F32(0.25f))
        .Add("f64", F64(-1.5))
        .Add("bool", Bool(true))
        .Add("str", Str("llama"))
        .Add("tokens", Arr(GgufType::kString, {Str("a"), Str("bc")}))
        .Add("scores", Arr(GgufType::kFloat32, {F32(-1), F32(0.5f)}))
        .Add("scores64", Arr(GgufType::kFloat64, {F64(2.5)}))
        .Add("types", Arr(GgufType::kInt32, {I32(1), I32(-6)}))
        .Add("ids", Arr(GgufType::kUint32, {U32(3), U32(4294967295u)}))
        .Add("u64s.big", Arr(GgufType::kUint64, {U64(1), U64(1ull << 63)}))
        .Add("nested", Arr(GgufType::kArray, {Arr(GgufType::kInt8, {I8(1)})}));
    ASSERT_OK_AND_ASSIGN(gguf_, GgufFile::FromBuffer(w.Build()));
  }
  std::unique_ptr<GgufFile> gguf_;
};

TEST_F(GgufGetterTest, GetUint) {
  ASSERT_OK_AND_ASSIGN(uint64_t u8, gguf_->GetUint("u8"));
  EXPECT_EQ(u8, 200u);
  ASSERT_OK_AND_ASSIGN(uint64_t big, gguf_->GetUint("u64.big"));
  EXPECT_EQ(big, 18446744073709551615ull);
  ASSERT_OK_AND_ASSIGN(uint64_t pos, gguf_->GetUint("i64.pos"));
  EXPECT_EQ(pos, 42u);
  EXPECT_THAT(gguf_->GetUint("i32.neg"),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("'i32.neg'"), HasSubstr("-7"))));
  EXPECT_THAT(gguf_->GetUint("f32"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'f32'"), HasSubstr("float32"), HasSubstr("unsigned integer"))));
}

TEST_F(GgufGetterTest, GetInt) {
  ASSERT_OK_AND_ASSIGN(int64_t neg, gguf_->GetInt("i32.neg"));
  EXPECT_EQ(neg, -7);
  ASSERT_OK_AND_ASSIGN(int64_t u8, gguf_->GetInt("u8"));
  EXPECT_EQ(u8, 200);
  EXPECT_THAT(gguf_->GetInt("u64.big"), StatusIs(absl::StatusCode::kInvalidArgument,
                                                 AllOf(HasSubstr("'u64.big'"), HasSubstr("int64"))));
  EXPECT_THAT(gguf_->GetInt("str"),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("'str'"), HasSubstr("string"))));
}

TEST_F(GgufGetterTest, GetFloat) {
  ASSERT_OK_AND_ASSIGN(double f32, gguf_->GetFloat("f32"));
  EXPECT_EQ(f32, 0.25);
  ASSERT_OK_AND_ASSIGN(double f64, gguf_->GetFloat("f64"));
  EXPECT_EQ(f64, -1.5);
  ASSERT_OK_AND_ASSIGN(double from_int, gguf_->GetFloat("i32.neg"));
  EXPECT_EQ(from_int, -7.0);
  ASSERT_OK_AND_ASSIGN(double from_uint, gguf_->GetFloat("u8"));
  EXPECT_EQ(from_uint, 200.0);
  EXPECT_THAT(gguf_->GetFloat("bool"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'bool' has type bool")));
}

TEST_F(GgufGetterTest, GetBoolAndString) {
  ASSERT_OK_AND_ASSIGN(bool b, gguf_->GetBool("bool"));
  EXPECT_TRUE(b);
  ASSERT_OK_AND_ASSIGN(std::string s, gguf_->GetString("str"));
  EXPECT_EQ(s, "llama");
  EXPECT_THAT(gguf_->GetBool("u8"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'u8'"), HasSubstr("uint8"), HasSubstr("bool"))));
  EXPECT_THAT(gguf_->GetString("tokens"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'tokens'"), HasSubstr("array of string"))));
}

TEST_F(GgufGetterTest, ArrayGetters) {
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> tokens, gguf_->GetStringArray("tokens"));
  EXPECT_THAT(tokens, ElementsAre("a", "bc"));
  ASSERT_OK_AND_ASSIGN(std::vector<float> scores, gguf_->GetFloatArray("scores"));
  EXPECT_THAT(scores, ElementsAre(-1.0f, 0.5f));
  ASSERT_OK_AND_ASSIGN(std::vector<float> scores64, gguf_->GetFloatArray("scores64"));
  EXPECT_THAT(scores64, ElementsAre(2.5f));
  ASSERT_OK_AND_ASSIGN(std::vector<float> int_scores, gguf_->GetFloatArray("types"));
  EXPECT_THAT(int_scores, ElementsAre(1.0f, -6.0f));
  ASSERT_OK_AND_ASSIGN(std::vector<int64_t> types, gguf_->GetIntArray("types"));
  EXPECT_THAT(types, ElementsAre(1, -6));
  ASSERT_OK_AND_ASSIGN(std::vector<int64_t> ids, gguf_->GetIntArray("ids"));
  EXPECT_THAT(ids, ElementsAre(3, 4294967295ll));

  EXPECT_THAT(gguf_->GetStringArray("scores"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'scores'"), HasSubstr("array of float32"))));
  EXPECT_THAT(gguf_->GetStringArray("str"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'str' has type string")));
  EXPECT_THAT(gguf_->GetFloatArray("tokens"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("array of string")));
  EXPECT_THAT(gguf_->GetIntArray("scores"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("array of float32")));
  EXPECT_THAT(gguf_->GetIntArray("nested"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("array of array")));
  EXPECT_THAT(
      gguf_->GetIntArray("u64s.big"),
      StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("element 1"), HasSubstr("'u64s.big'"))));
}

TEST_F(GgufGetterTest, MissingKeyIsNotFound) {
  const auto missing = StatusIs(absl::StatusCode::kNotFound, HasSubstr("'no.such.key'"));
  EXPECT_THAT(gguf_->GetUint("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetInt("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetFloat("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetBool("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetString("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetStringArray("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetFloatArray("no.such.key"), missing);
  EXPECT_THAT(gguf_->GetIntArray("no.such.key"), missing);
}

// ---------------------------------------------------------------------------
// Malformed input.

TEST(GgufTest, EveryTruncationIsAnErrorWithAnOffset) {
  GgufWriter w = RichWriter(3);
  const std::string file = w.Build();
  ASSERT_GT(file.size(), w.data_offset());
  for (size_t n = 0; n < file.size(); ++n) {
    SCOPED_TRACE(absl::StrCat("prefix of ", n, " of ", file.size(), " bytes"));
    const absl::StatusOr<std::unique_ptr<GgufFile>> gguf =
        GgufFile::FromBuffer(std::string_view(file).substr(0, n));
    ASSERT_THAT(gguf, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte offset")));
  }
  EXPECT_OK(GgufFile::FromBuffer(file));  // The whole file parses.
}

TEST(GgufTest, TruncationMessagesNameTheField) {
  GgufWriter w = RichWriter(3);
  const std::string file = w.Build();
  auto prefix = [&](size_t n) { return GgufFile::FromBuffer(std::string_view(file).substr(0, n)); };
  EXPECT_THAT(prefix(0),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("truncated"), HasSubstr("magic"), HasSubstr("byte offset 0"))));
  EXPECT_THAT(prefix(6), StatusIs(absl::StatusCode::kInvalidArgument,
                                  AllOf(HasSubstr("version"), HasSubstr("byte offset 4"))));
  EXPECT_THAT(prefix(w.data_offset() + 10),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("'token_embd.weight'"), HasSubstr("past the end"))));
}

// A small valid file whose fields the corruption tests change one at a time.
struct SmallFile {
  GgufWriter w;
  std::string bytes;
};
SmallFile MakeSmallFile() {
  SmallFile f;
  f.w.Add("general.architecture", Str("llama"))
      .Add("test.count", U32(7))
      .Add("tokenizer.ggml.tokens", Arr(GgufType::kString, {Str("a"), Str("bc")}));
  f.w.AddTensor("a", {4, 2}, kGgmlF32).AddTensor("b", {32, 1}, kGgmlQ8_0);
  f.bytes = f.w.Build();
  return f;
}

TEST(GgufTest, SmallFileIsValid) {
  SmallFile f = MakeSmallFile();
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(f.bytes));
  EXPECT_EQ(gguf->tensors().size(), 2u);
}

struct Corruption {
  std::string name;
  std::function<void(std::string& file, const GgufWriter& w)> patch;
  absl::StatusCode code;
  std::vector<std::string> substrings;
};

TEST(GgufTest, EachFieldOutOfRange) {
  using absl::StatusCode;
  constexpr uint64_t kHuge = uint64_t{1} << 40;
  const std::vector<Corruption> corruptions = {
      {"magic",
       [](std::string& f, const GgufWriter&) { f[3] = 'X'; },
       StatusCode::kInvalidArgument,
       {"bad magic", "byte offset 0"}},
      {"version 1",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("version"), 1); },
       StatusCode::kInvalidArgument,
       {"version 1", "not supported", "byte offset 4"}},
      {"version 0",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("version"), 0); },
       StatusCode::kInvalidArgument,
       {"unsupported version 0", "byte offset 4"}},
      {"version 4",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("version"), 4); },
       StatusCode::kInvalidArgument,
       {"unsupported version 4", "byte offset 4"}},
      {"big-endian version",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("version"), 0x03000000); },
       StatusCode::kInvalidArgument,
       {"big-endian", "byte offset 4"}},
      {"tensor count",
       [=](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("tensor_count"), kHuge); },
       StatusCode::kInvalidArgument,
       {"tensor count 1099511627776", "byte offset 8"}},
      {"tensor count max",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("tensor_count"), ~0ull); },
       StatusCode::kInvalidArgument,
       {"tensor count", "byte offset 8"}},
      {"kv count",
       [=](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("kv_count"), kHuge); },
       StatusCode::kInvalidArgument,
       {"kv count 1099511627776", "byte offset 16"}},
      {"key length",
       [=](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("key:test.count"), kHuge); },
       StatusCode::kInvalidArgument,
       {"string length 1099511627776 of metadata key", "byte offset"}},
      {"value type",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("type:test.count"), 13); },
       StatusCode::kInvalidArgument,
       {"value type of metadata key 'test.count' is 13", "not a known value type", "byte offset"}},
      {"string length",
       [](std::string& f, const GgufWriter& w) {
         PatchU64(f, w.at("value:general.architecture"), 4294967295u);
       },
       StatusCode::kInvalidArgument,
       {"string length 4294967295", "'general.architecture'", "byte offset"}},
      {"array type",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("array_type:tokenizer.ggml.tokens"), 99); },
       StatusCode::kInvalidArgument,
       {"array element type of metadata key 'tokenizer.ggml.tokens' is 99", "byte offset"}},
      {"array length",
       [=](std::string& f, const GgufWriter& w) {
         PatchU64(f, w.at("array_len:tokenizer.ggml.tokens"), kHuge);
       },
       StatusCode::kInvalidArgument,
       {"array length 1099511627776", "'tokenizer.ggml.tokens'", "byte offset"}},
      {"array element string length",
       [](std::string& f, const GgufWriter& w) {
         PatchU64(f, w.at("array_len:tokenizer.ggml.tokens") + 8, ~0ull);
       },
       StatusCode::kInvalidArgument,
       {"string length", "element 0", "byte offset"}},
      {"n_dims 0",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("n_dims:a"), 0); },
       StatusCode::kInvalidArgument,
       {"n_dims 0", "'a'", "byte offset"}},
      {"n_dims 5",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("n_dims:a"), 5); },
       StatusCode::kInvalidArgument,
       {"n_dims 5", "'a'", "byte offset"}},
      {"dim 0",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("dim1:a"), 0); },
       StatusCode::kInvalidArgument,
       {"dimension 1 of tensor 'a' is 0", "byte offset"}},
      {"dim product overflow",
       [](std::string& f, const GgufWriter& w) {
         PatchU64(f, w.at("dim0:a"), uint64_t{1} << 32);
         PatchU64(f, w.at("dim1:a"), uint64_t{1} << 32);
       },
       StatusCode::kInvalidArgument,
       {"overflows", "'a'", "byte offset"}},
      {"dim huge",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("dim0:a"), ~0ull); },
       StatusCode::kInvalidArgument,
       {"overflows", "'a'", "byte offset"}},
      {"size overflow",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("dim0:a"), uint64_t{1} << 61); },
       StatusCode::kInvalidArgument,
       {"size in bytes", "overflows", "'a'", "byte offset"}},
      {"data too big",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("dim0:a"), 1000); },
       StatusCode::kInvalidArgument,
       {"'a'", "past the end", "byte offset"}},
      {"q8_0 innermost dim",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("dim0:b"), 16); },
       StatusCode::kInvalidArgument,
       {"Q8_0", "'b'", "multiple of 32", "byte offset"}},
      {"tensor type Q6_K",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("ggml_type:a"), kGgmlQ6_K); },
       StatusCode::kUnimplemented,
       {"'a'", "14 (Q6_K)", "byte offset"}},
      {"tensor type unknown",
       [](std::string& f, const GgufWriter& w) { PatchU32(f, w.at("ggml_type:b"), 1000); },
       StatusCode::kUnimplemented,
       {"'b'", "ggml type 1000", "byte offset"}},
      {"tensor offset misaligned",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("offset:b"), 33); },
       StatusCode::kInvalidArgument,
       {"data offset 33", "'b'", "alignment 32", "byte offset"}},
      {"tensor offset past end",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("offset:b"), 1 << 20); },
       StatusCode::kInvalidArgument,
       {"'b'", "past the end", "byte offset"}},
      {"tensor offset wraps",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("offset:b"), ~0ull << 5); },
       StatusCode::kInvalidArgument,
       {"'b'", "past the end", "byte offset"}},
      {"tensor name length",
       [](std::string& f, const GgufWriter& w) { PatchU64(f, w.at("name:b"), 1000); },
       StatusCode::kInvalidArgument,
       {"string length 1000 of tensor name", "byte offset"}},
  };
  for (const Corruption& c : corruptions) {
    SCOPED_TRACE(c.name);
    SmallFile f = MakeSmallFile();
    c.patch(f.bytes, f.w);
    const absl::Status status = GgufFile::FromBuffer(f.bytes).status();
    EXPECT_EQ(status.code(), c.code) << status;
    const std::string message(status.message());
    for (const std::string& s : c.substrings) EXPECT_THAT(message, HasSubstr(s));
    EXPECT_THAT(message, HasSubstr("offset"));
  }
}

// Malformed files that the writer builds directly rather than by patching.
TEST(GgufTest, StructuralErrors) {
  const auto invalid = [](const std::string& file, std::vector<std::string> substrings) {
    const absl::Status status = GgufFile::FromBuffer(file).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    const std::string message(status.message());
    for (const std::string& s : substrings) EXPECT_THAT(message, HasSubstr(s));
    EXPECT_THAT(message, HasSubstr("byte offset"));
  };
  {
    SCOPED_TRACE("duplicate key");
    GgufWriter w;
    w.Add("a.b", U8(1)).Add("a.c", U8(2)).Add("a.b", U8(3));
    invalid(w.Build(), {"duplicate metadata key 'a.b'"});
  }
  {
    SCOPED_TRACE("duplicate tensor name");
    GgufWriter w;
    w.AddTensor("t", {4}, kGgmlF32).AddTensor("u", {4}, kGgmlF32).AddTensor("t", {4}, kGgmlF32);
    invalid(w.Build(), {"duplicate tensor name 't'"});
  }
  for (uint64_t alignment : {0u, 3u, 48u}) {
    SCOPED_TRACE(absl::StrCat("alignment ", alignment));
    GgufWriter w;
    w.Add("general.alignment", U32(alignment));
    w.AddTensor("t", {4}, kGgmlF32);
    invalid(w.Build(), {"general.alignment", "power of two"});
  }
  {
    SCOPED_TRACE("negative alignment");
    GgufWriter w;
    w.Add("general.alignment", I32(-32));
    invalid(w.Build(), {"general.alignment -32", "power of two"});
  }
  {
    SCOPED_TRACE("alignment of the wrong type");
    GgufWriter w;
    w.Add("general.alignment", Str("32"));
    invalid(w.Build(), {"general.alignment", "type string"});
  }
  {
    SCOPED_TRACE("bool out of range");
    GgufWriter w;
    w.Add("x", Bool(true));
    std::string file = w.Build();
    file[w.at("value:x")] = 2;
    invalid(file, {"bool value of metadata key 'x' is 2"});
  }
  {
    SCOPED_TRACE("arrays nested too deep");
    GgufValue v = Arr(GgufType::kUint8, {U8(1)});
    for (int i = 0; i < 9; ++i) v = Arr(GgufType::kArray, {v});
    GgufWriter w;
    w.Add("deep", v);
    invalid(w.Build(), {"nested", "'deep'"});
  }
}

TEST(GgufTest, NestingUpToTheLimitIsAccepted) {
  GgufValue v = Arr(GgufType::kUint8, {U8(1)});
  for (int i = 0; i < 7; ++i) v = Arr(GgufType::kArray, {v});
  GgufWriter w;
  w.Add("deep", v);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(w.Build()));
  EXPECT_EQ(Dump(*gguf->Find("deep")), Dump(v));
}

TEST(GgufTest, UnsupportedTypeIsReportedAfterStructuralErrors) {
  // A Q6_K tensor followed by a malformed one: the file is malformed first.
  GgufWriter w;
  w.AddTensor("q", {256}, kGgmlQ6_K).AddTensor("bad", {4}, kGgmlF32);
  std::string file = w.Build();
  PatchU32(file, w.at("n_dims:bad"), 9);
  EXPECT_THAT(GgufFile::FromBuffer(file),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_dims 9")));
}

// Q4_K (GGML type 12): 144-byte super-blocks of 256 along the innermost
// dimension; a row that is not whole super-blocks is malformed.
TEST(GgufTest, Q4_KTensorsOfWholeSuperBlocks) {
  GgufWriter w;
  w.AddTensor("q", {512, 3}, kGgmlQ4_K);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::FromBuffer(w.Build()));
  const GgufTensorInfo* t = gguf->FindTensor("q");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, DType::kQ4_K);
  EXPECT_EQ(t->size_bytes, 3u * 2 * 144);

  GgufWriter bad;
  bad.AddTensor("q", {512, 3}, kGgmlQ4_K);
  std::string file = bad.Build();
  PatchU64(file, bad.at("dim0:q"), 32);
  EXPECT_THAT(GgufFile::FromBuffer(file),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a multiple of 256")));
}

TEST(GgufTest, LongNamesAreShortenedInMessages) {
  GgufWriter w;
  const std::string key(10000, 'k');
  w.Add(key, U8(1)).Add(key, U8(2));
  const absl::Status status = GgufFile::FromBuffer(w.Build()).status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate")));
  EXPECT_LT(status.message().size(), 300u);
}

// ---------------------------------------------------------------------------
// Open (mmap).

std::string WriteTempFile(const std::string& name, const std::string& bytes) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/gguf_test_", getpid(), "_", name);
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
  return path;
}

TEST(GgufOpenTest, MapsAndParsesAFile) {
  GgufWriter w = RichWriter(3);
  const std::string path = WriteTempFile("rich.gguf", w.Build());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  ExpectRichFile(*gguf, w, 3);
  unlink(path.c_str());
}

TEST(GgufOpenTest, MissingFileIsNotFound) {
  const std::string path = "/nonexistent/dir/model.gguf";
  EXPECT_THAT(GgufFile::Open(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
}

TEST(GgufOpenTest, EmptyFileIsMalformed) {
  const std::string path = WriteTempFile("empty.gguf", "");
  EXPECT_THAT(GgufFile::Open(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("truncated"), HasSubstr("byte offset 0"), HasSubstr(path))));
  unlink(path.c_str());
}

TEST(GgufOpenTest, MalformedFileErrorNamesThePath) {
  SmallFile f = MakeSmallFile();
  PatchU32(f.bytes, f.w.at("n_dims:b"), 7);
  const std::string path = WriteTempFile("bad.gguf", f.bytes);
  EXPECT_THAT(GgufFile::Open(path),
              StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("n_dims 7"), HasSubstr(path))));
  unlink(path.c_str());
}

TEST(GgufOpenTest, DirectoryIsRejected) {
  EXPECT_THAT(GgufFile::Open(::testing::TempDir()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a regular file")));
}

// ---------------------------------------------------------------------------
// The real model in ../shared.

TEST(GgufOpenTest, Stories260K) {
  const std::string path = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  if (access(path.c_str(), R_OK) != 0) {
    GTEST_SKIP() << path << " is not available";
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  EXPECT_EQ(gguf->version(), 3u);
  EXPECT_EQ(gguf->tensors().size(), 48u);
  EXPECT_EQ(gguf->keys().size(), 19u);
  EXPECT_EQ(gguf->alignment(), 32u);
  EXPECT_EQ(gguf->data_offset(), 14176u);
  ASSERT_OK_AND_ASSIGN(uint64_t layers, gguf->GetUint("llama.block_count"));
  EXPECT_EQ(layers, 5u);
  ASSERT_OK_AND_ASSIGN(std::string arch, gguf->GetString("general.architecture"));
  EXPECT_EQ(arch, "llama");
  ASSERT_OK_AND_ASSIGN(double eps, gguf->GetFloat("llama.attention.layer_norm_rms_epsilon"));
  EXPECT_FLOAT_EQ(eps, 1e-5f);
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> tokens, gguf->GetStringArray("tokenizer.ggml.tokens"));
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  ASSERT_OK_AND_ASSIGN(std::vector<float> scores, gguf->GetFloatArray("tokenizer.ggml.scores"));
  EXPECT_EQ(scores.size(), 512u);
  ASSERT_OK_AND_ASSIGN(uint64_t sep, gguf->GetUint("tokenizer.ggml.seperator_token_id"));
  EXPECT_EQ(sep, 4294967295u);

  const GgufTensorInfo* emb = gguf->FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_THAT(emb->dims, ElementsAre(64, 512));
  EXPECT_EQ(emb->type, DType::kF32);
  EXPECT_EQ(emb->size_bytes, 64u * 512 * 4);
  const GgufTensorInfo* out = gguf->FindTensor("output.weight");
  ASSERT_NE(out, nullptr);
  // llama2.c ties the classifier to the embedding: the bytes are identical.
  EXPECT_EQ(std::memcmp(emb->data, out->data, emb->size_bytes), 0);
  uint64_t end = 0;
  for (const GgufTensorInfo& t : gguf->tensors()) {
    EXPECT_EQ(t.type, DType::kF32) << t.name;
    end = std::max(end, gguf->data_offset() + t.offset + t.size_bytes);
  }
  EXPECT_EQ(end, 1185376u);  // The data runs to the end of the file.
}

}  // namespace
}  // namespace tandem::model
