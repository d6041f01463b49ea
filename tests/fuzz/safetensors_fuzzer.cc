// libFuzzer target for the safetensors reader: any byte string must parse or
// give an error Status, never crash or read out of bounds (ASan/UBSan watch).
// The input is a .safetensors image; when it parses, every tensor is checked
// (found by name, offsets inside the data section, size == elements x dtype
// size, data order without overlap) and every byte of its data is read.
// Inputs whose first byte is '#' are instead split at the first newline into
// an index.json and a shard named "s" (the rest), exercising the index
// parser and its checks against the shard.
//
// Build and run: see docs/FUZZING.md.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "model/safetensors.h"

namespace {

volatile uint64_t g_sink;

uint64_t Check(const tandem::model::SafetensorsFile& f) {
  uint64_t h = f.header_size() + f.metadata().size();
  uint64_t prev_end = 0;
  for (const tandem::model::SafetensorsTensor& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();
    if (t.begin > t.end || t.size_bytes != t.end - t.begin) __builtin_trap();
    if (t.begin < prev_end) __builtin_trap();  // sorted, no overlap
    prev_end = t.end;
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) __builtin_trap();
      n *= static_cast<uint64_t>(d);
    }
    if (n != t.num_elements) __builtin_trap();
    if ((t.size_bytes == 0) != (t.data == nullptr)) __builtin_trap();
    for (uint64_t i = 0; i < t.size_bytes; ++i) h += t.data[i];
  }
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tandem::model::SafetensorsCheckpoint;
  using tandem::model::SafetensorsFile;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (!in.empty() && in[0] == '#') {
    const size_t nl = in.find('\n');
    if (nl == std::string_view::npos) return 0;
    auto shard = SafetensorsFile::FromBuffer(in.substr(nl + 1));
    if (!shard.ok()) return 0;
    std::vector<std::pair<std::string, std::unique_ptr<SafetensorsFile>>> shards;
    shards.emplace_back("s", std::move(*shard));
    auto ckpt = SafetensorsCheckpoint::FromIndex(in.substr(1, nl - 1), std::move(shards));
    if (!ckpt.ok()) return 0;
    uint64_t h = 0;
    for (const tandem::model::SafetensorsTensor* t : (*ckpt)->tensors()) {
      if ((*ckpt)->FindTensor(t->name) != t) __builtin_trap();
      auto g = (*ckpt)->GetTensor(t->name);
      h += g.ok();
    }
    g_sink = h;
    return 0;
  }
  auto f = SafetensorsFile::FromBuffer(in);
  if (!f.ok()) return 0;
  g_sink = Check(**f);
  return 0;
}
