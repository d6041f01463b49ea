#include "model/safetensors.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::tandem::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using OJson = nlohmann::ordered_json;

// The bytes of a safetensors file: length, header (space-padded to a
// multiple of 8, as the reference writer does), data.
std::string FileBytes(const std::string& header, const std::string& data, bool pad = true) {
  std::string h = header;
  if (pad) {
    while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  }
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + h + data;
}

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string data;
};

// Writes tensors contiguously in the given order.
std::string Serialize(const std::vector<Tensor>& tensors, const OJson& metadata = nullptr) {
  OJson header = OJson::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string data;
  for (const Tensor& t : tensors) {
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.data.size()}}};
    data += t.data;
  }
  return FileBytes(header.dump(), data);
}

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 37 + seed * 11 + 5) & 255);
  return s;
}

std::vector<Tensor> SampleTensors() {
  return {{"model.embed_tokens.weight", "F32", {4, 3}, Pattern(48, 1)},
          {"model.layers.0.mlp.up_proj.weight", "BF16", {2, 3}, Pattern(12, 2)},
          {"model.norm.weight", "F16", {3}, Pattern(6, 3)},
          {"empty", "F32", {0, 5}, ""},
          {"scalar", "F32", {}, Pattern(4, 4)}};
}

void ExpectSame(const SafetensorsTensor* got, const Tensor& want) {
  ASSERT_NE(got, nullptr) << want.name;
  EXPECT_EQ(got->dtype_name, want.dtype);
  EXPECT_EQ(got->shape, want.shape);
  ASSERT_EQ(got->size_bytes, want.data.size());
  if (!want.data.empty()) {
    EXPECT_EQ(std::memcmp(got->data, want.data.data(), want.data.size()), 0);
  }
}

TEST(SafetensorsTest, SingleFileRoundTrips) {
  TempDir dir("safetensors_test_");
  const std::vector<Tensor> tensors = SampleTensors();
  dir.Write("model.safetensors", Serialize(tensors, {{"format", "pt"}}));
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::Open(dir.path()));
  EXPECT_EQ(ckpt->num_files(), 1u);
  EXPECT_EQ(ckpt->tensors().size(), tensors.size());
  for (const Tensor& t : tensors) ExpectSame(ckpt->FindTensor(t.name), t);
  ASSERT_OK_AND_ASSIGN(const SafetensorsTensor* emb, ckpt->GetTensor("model.embed_tokens.weight"));
  EXPECT_EQ(emb->dtype, DType::kF32);
  EXPECT_EQ(emb->num_elements, 12u);
  EXPECT_EQ(ckpt->FindTensor("model.norm.weight")->dtype, DType::kF16);
  EXPECT_EQ(ckpt->FindTensor("model.layers.0.mlp.up_proj.weight")->dtype, DType::kBF16);
  EXPECT_THAT(ckpt->GetTensor("nope"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("'nope'")));

  // The file itself, opened by path, has the metadata.
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::Open(dir.path() + "/model.safetensors"));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->data_offset() % 8, 0u);
}

TEST(SafetensorsTest, ShardedRoundTrips) {
  TempDir dir("safetensors_test_");
  const std::vector<Tensor> tensors = SampleTensors();
  const std::vector<Tensor> a(tensors.begin(), tensors.begin() + 2);
  const std::vector<Tensor> b(tensors.begin() + 2, tensors.end());
  dir.Write("model-00001-of-00002.safetensors", Serialize(a));
  dir.Write("model-00002-of-00002.safetensors", Serialize(b));
  OJson index = {{"metadata", {{"total_size", 70}}}, {"weight_map", OJson::object()}};
  for (const Tensor& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const Tensor& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  dir.Write("model.safetensors.index.json", index.dump());
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::Open(dir.path()));
  EXPECT_EQ(ckpt->num_files(), 2u);
  EXPECT_EQ(ckpt->tensors().size(), tensors.size());
  for (const Tensor& t : tensors) ExpectSame(ckpt->FindTensor(t.name), t);
}

TEST(SafetensorsTest, IndexErrors) {
  auto shard = [](const std::vector<Tensor>& ts) {
    auto f = SafetensorsFile::FromBuffer(Serialize(ts));
    EXPECT_OK(f);
    return std::move(*f);
  };
  const Tensor x{"x", "F32", {1}, Pattern(4, 1)};
  const Tensor y{"y", "F32", {1}, Pattern(4, 2)};
  auto shards = [&](std::vector<Tensor> a, std::vector<Tensor> b) {
    std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> s;
    s.emplace_back("a.safetensors", shard(a));
    s.emplace_back("b.safetensors", shard(b));
    return s;
  };
  EXPECT_OK(SafetensorsCheckpoint::FromIndex(
      R"({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})", shards({x}, {y})));
  struct Case {
    std::string index;
    std::vector<Tensor> a, b;
    std::string want;
  };
  const Case cases[] = {
      {R"({"weight_map": {"x": "a.safetensors", "y": "c.safetensors"}})", {x}, {y}, "which is not a shard"},
      {R"({"weight_map": {"x": "b.safetensors"}})", {x}, {y}, "does not hold it"},
      {R"({"weight_map": {"x": "a.safetensors"}})", {x}, {x}, "also in another shard"},
      {R"({"weight_map": {"x": "../a.safetensors"}})", {x}, {y}, "not a plain file name"},
      {R"({"weight_map": {"x": 3}})", {x}, {y}, "not a file name"},
      {R"({"weight_map": []})", {x}, {y}, "weight_map is a array"},
      {R"({"metadata": {}})", {x}, {y}, "has no weight_map"},
      {R"({"weight_map": {"x": "a.safetensors", "x": "a.safetensors"}})", {x}, {y}, "duplicate key 'x'"},
      {R"({"weight_map": {"x": "a.safe)", {x}, {y}, "invalid JSON at byte"},
      {R"([1])", {x}, {y}, "not an object"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(SafetensorsCheckpoint::FromIndex(c.index, shards(c.a, c.b)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.want)))
        << c.index;
  }
}

TEST(SafetensorsTest, DirectoryWithoutCheckpointIsNotFound) {
  TempDir dir("safetensors_test_");
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("model.safetensors")));
  EXPECT_THAT(SafetensorsCheckpoint::Open(dir.path() + "/missing"), StatusIs(absl::StatusCode::kNotFound));
}

TEST(SafetensorsTest, TruncationAtEveryOffsetIsAnError) {
  const std::string full = Serialize(SampleTensors());
  ASSERT_OK(SafetensorsFile::FromBuffer(full));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(full[i]);
  for (size_t k = 0; k < full.size(); ++k) {
    // The file cut at k: the length field or the data no longer fits.
    EXPECT_THAT(SafetensorsFile::FromBuffer(full.substr(0, k)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte")))
        << "cut at " << k;
  }
  // The header JSON cut at every offset (with a length that matches): a
  // syntax error naming the byte, up to the closing brace.
  const std::string header = full.substr(8, n);
  const size_t close = header.rfind('}');
  for (size_t k = 0; k < close + 1; ++k) {
    auto r = SafetensorsFile::FromBuffer(FileBytes(header.substr(0, k), "", /*pad=*/false));
    EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument,
                            AllOf(HasSubstr("invalid JSON at byte"), HasSubstr("offset"))))
        << "header cut at " << k;
  }
}

TEST(SafetensorsTest, SyntaxErrorNamesTheByte) {
  // '{"a": x}': the parser stops at the 'x', header offset 6, file byte 14.
  EXPECT_THAT(SafetensorsFile::FromBuffer(FileBytes(R"({"a": x})", "", false)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("at byte 14"), HasSubstr("offset 6 in the JSON"))));
}

TEST(SafetensorsTest, MalformedHeadersGiveTheRightError) {
  const std::string d16 = Pattern(16, 7);
  struct Case {
    std::string header;
    std::string data;
    std::string want;
  };
  const Case cases[] = {
      {R"([])", "", "not an object"},
      {R"("x")", "", "not an object"},
      {R"({"t": 1})", "", "tensor 't' is a number"},
      {R"({"t": {"shape": [4], "data_offsets": [0, 16]}})", d16, "tensor 't' has no dtype"},
      {R"({"t": {"dtype": 4, "shape": [4], "data_offsets": [0, 16]}})", d16, "dtype is a number"},
      {R"({"t": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}})", d16, "unknown dtype 'Q4'"},
      {R"({"t": {"dtype": "F32", "data_offsets": [0, 16]}})", d16, "has no shape"},
      {R"({"t": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}})", d16, "shape is a number"},
      {R"({"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", d16, "dimension 0 (-4)"},
      {R"({"t": {"dtype": "F32", "shape": [2, 1.5], "data_offsets": [0, 16]}})", d16, "dimension 1 (1.5)"},
      {R"({"t": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]}})", d16,
       "not a non-negative integer"},
      {R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})", d16,
       "element count overflows at dimension 1"},
      {R"({"t": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 16]}})", d16,
       "overflows at dimension 0"},
      {R"({"t": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 16]}})", d16,
       "byte size"},
      {R"({"t": {"dtype": "F32", "shape": [4]}})", d16, "has no data_offsets"},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", d16, "not [begin, end]"},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, -16]}})", d16, "not [begin, end]"},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": {"a": 1}}})", d16, "not [begin, end]"},
      {R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", d16, "begin 8 > end 4"},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 17]}})", d16, "end 17 (file byte"},
      {R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 18446744073709551615]}})", d16,
       "past the 16-byte data section"},
      {R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", d16,
       "hold 16 bytes but shape and dtype F32 need 12"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       d16, "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
       d16, "duplicate key 'a'"},
      {R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})", d16,
       "duplicate key 'dtype' in entry 'a'"},
      {R"({"__metadata__": [1]})", "", "__metadata__ is a array"},
      {R"({"__metadata__": {"k": 1}})", "", "__metadata__ value 'k' is a number"},
      {std::string(100, '[') + std::string(100, ']'), "", "nested deeper than"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(SafetensorsFile::FromBuffer(FileBytes(c.header, c.data)),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.want)))
        << c.header;
  }
}

TEST(SafetensorsTest, HeaderLengthChecks) {
  EXPECT_THAT(SafetensorsFile::FromBuffer(""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("too short")));
  std::string bytes = FileBytes("{}", "");
  bytes[0] = static_cast<char>(bytes[0] + 1);  // one more than the file holds
  EXPECT_THAT(SafetensorsFile::FromBuffer(bytes),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("header length 9 at byte 0"), HasSubstr("exceeds"))));
  std::string huge(8, '\xff');
  EXPECT_THAT(SafetensorsFile::FromBuffer(huge),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("header length")));
  // An empty header object and trailing padding are fine.
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::FromBuffer(FileBytes("{}", "")));
  EXPECT_TRUE(f->tensors().empty());
}

TEST(SafetensorsTest, UnsupportedDtypeIsUnimplementedOnUse) {
  const std::string bytes =
      Serialize({{"position_ids", "I64", {2}, Pattern(16, 1)}, {"w", "F32", {1}, Pattern(4, 2)}});
  ASSERT_OK_AND_ASSIGN(auto file, SafetensorsFile::FromBuffer(bytes));
  std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> shards;
  shards.emplace_back("m.safetensors", std::move(file));
  ASSERT_OK_AND_ASSIGN(auto ckpt, SafetensorsCheckpoint::FromIndex(
                                      R"({"weight_map": {"w": "m.safetensors"}})", std::move(shards)));
  EXPECT_OK(ckpt->GetTensor("w"));
  EXPECT_THAT(
      ckpt->GetTensor("position_ids"),
      StatusIs(absl::StatusCode::kUnimplemented, AllOf(HasSubstr("'position_ids'"), HasSubstr("I64"))));
}

TEST(SafetensorsTest, HolesBetweenTensorsAreAllowed) {
  const std::string data = Pattern(24, 3);
  ASSERT_OK_AND_ASSIGN(auto f, SafetensorsFile::FromBuffer(FileBytes(
                                   R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
                                       "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                   data)));
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");  // data order
  EXPECT_EQ(std::memcmp(f->FindTensor("b")->data, data.data() + 16, 8), 0);
}

}  // namespace
}  // namespace tandem::model
