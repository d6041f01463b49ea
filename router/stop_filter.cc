#include "router/stop_filter.h"

#include <algorithm>
#include <utility>

namespace tandem::router {
namespace {

// 10xxxxxx: the second to fourth byte of a UTF-8 sequence.
bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

StopFilter::StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& s : stops_) longest_ = std::max(longest_, s.size());
}

std::string StopFilter::Push(const std::string& text) {
  text_ += text;
  size_t cut = std::string::npos;
  for (const std::string& stop : stops_) {
    // Text before sent_ held no match when it was sent, so a new match ends
    // after sent_.
    const size_t from = sent_ >= stop.size() ? sent_ - stop.size() + 1 : 0;
    const size_t pos = text_.find(stop, from);
    if (pos != std::string::npos && pos < cut) cut = pos;
  }
  size_t emit_to = text_.size();
  if (cut != std::string::npos) {
    emit_to = std::max(cut, sent_);
    stopped_ = true;
  } else if (longest_ > 0) {
    // The last longest-1 bytes could be the start of a stop string...
    emit_to = text_.size() >= longest_ - 1 ? text_.size() - (longest_ - 1) : 0;
    emit_to = std::max(emit_to, sent_);
    // ...and the bytes before them must not end inside a character: hold
    // back the character's first bytes too (sent_ is always a boundary).
    while (emit_to > sent_ && emit_to < text_.size() && IsContinuationByte(text_[emit_to])) --emit_to;
  }
  std::string out = text_.substr(sent_, emit_to - sent_);
  sent_ = emit_to;
  return out;
}

std::string StopFilter::Flush() {
  std::string out = stopped_ ? "" : text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

}  // namespace tandem::router
