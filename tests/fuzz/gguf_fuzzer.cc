// libFuzzer target for the GGUF reader: any byte string must parse or give an
// error Status, never crash or read out of bounds (ASan/UBSan watch). On
// success every getter runs on every key and every tensor's bytes are read,
// so a tensor pointer or size that strayed past the buffer is caught too.
//
// Build and run: see docs/FUZZING.md.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/gguf.h"

namespace {

// Keeps results observable so the optimiser cannot drop the reads.
volatile uint64_t g_sink;

uint64_t Walk(const tandem::model::GgufValue& v) {
  uint64_t h = static_cast<uint64_t>(v.type) + v.u + static_cast<uint64_t>(v.i) + v.b;
  for (unsigned char c : v.s) h = h * 31 + c;
  for (const tandem::model::GgufValue& e : v.array) {
    h += Walk(e);
    if (e.type != v.array_type) __builtin_trap();  // Elements must all have the array's type.
  }
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tandem::model::GgufFile;
  auto gguf = GgufFile::FromBuffer(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!gguf.ok()) return 0;
  const GgufFile& f = **gguf;
  uint64_t h = f.version() + f.alignment() + f.data_offset();

  for (const std::string& key : f.keys()) {
    const tandem::model::GgufValue* v = f.Find(key);
    if (v == nullptr) __builtin_trap();  // Every listed key must be found.
    h += Walk(*v);
    if (auto x = f.GetUint(key); x.ok()) h += *x;
    if (auto x = f.GetInt(key); x.ok()) h += static_cast<uint64_t>(*x);
    if (auto x = f.GetFloat(key); x.ok()) h += static_cast<uint64_t>(*x != 0);
    if (auto x = f.GetBool(key); x.ok()) h += *x;
    if (auto x = f.GetString(key); x.ok()) h += x->size();
    if (auto x = f.GetStringArray(key); x.ok()) h += x->size();
    if (auto x = f.GetFloatArray(key); x.ok()) h += x->size();
    if (auto x = f.GetIntArray(key); x.ok()) h += x->size();
  }
  h += f.GetUint("no.such.key").ok();

  for (const tandem::model::GgufTensorInfo& t : f.tensors()) {
    if (f.FindTensor(t.name) != &t) __builtin_trap();
    if (t.data == nullptr || t.size_bytes == 0) __builtin_trap();
    if (t.offset % f.alignment() != 0) __builtin_trap();
    // Touch every byte: ASan reports any byte outside the copied buffer.
    for (uint64_t i = 0; i < t.size_bytes; ++i) h += t.data[i];
    for (uint64_t d : t.dims) h += d;
  }
  g_sink = h;
  return 0;
}
