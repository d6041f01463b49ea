#include "model/text_stream.h"

namespace tandem::model {

size_t TextStream::CompletePrefix(const std::string& bytes) {
  const size_t n = bytes.size();
  // Look back at most 3 bytes for the lead byte of a trailing sequence.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking
    size_t need = 0;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    // ASCII or invalid lead: nothing to wait for. A lead byte whose sequence
    // is still short: hold it and its continuations back.
    return (need > back) ? n - back : n;
  }
  return n;  // only continuation bytes at the end: invalid, emit as is
}

std::string TextStream::ToValidUtf8(std::string_view bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    size_t len = 0;
    uint32_t min = 0;
    if (c < 0x80)
      len = 1;
    else if ((c & 0xE0) == 0xC0)
      len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
      len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
      len = 4, min = 0x10000;
    bool ok = len > 0 && i + len <= bytes.size();
    uint32_t cp = len == 1 ? c : (c & (0x7F >> len));
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(bytes[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid too.
    if (ok && len > 1 && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (ok) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      out.append(kReplacement);
      ++i;
    }
  }
  return out;
}

std::string TextStream::Push(int32_t id) {
  held_ += tokenizer_->TokenToPiece(id);
  const size_t complete = CompletePrefix(held_);
  std::string out = ToValidUtf8(std::string_view(held_).substr(0, complete));
  held_.erase(0, complete);
  return out;
}

std::string TextStream::Finish() {
  std::string out = ToValidUtf8(held_);
  held_.clear();
  return out;
}

}  // namespace tandem::model
