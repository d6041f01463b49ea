// Cuts a request's text stream at the first of its stop strings.
//
//   StopFilter filter({"END", "\n\n"});
//   for (each chunk from the decode worker) {
//     send(filter.Push(chunk.text()));   // what is safe to show now
//     if (filter.stopped()) break;       // a stop string began; nothing after it is sent
//   }
//   send(filter.Flush());                // the held-back tail of a stream that did not stop
//
// Push holds back the text that could still become the start of a stop
// string (at most the longest stop string's length - 1 bytes), widened to a
// UTF-8 code-point boundary: what it returns never ends inside a character
// when its input is whole characters (tandem.proto's TokenChunk.text
// promise). The stop string itself and everything after it are never
// returned. Matching is by bytes, which for valid UTF-8 on both sides only
// ever matches at character boundaries.
//
// Thread safety: none; one request's stream uses it from one callback at a
// time.
#ifndef TANDEM_ROUTER_STOP_FILTER_H_
#define TANDEM_ROUTER_STOP_FILTER_H_

#include <cstddef>
#include <string>
#include <vector>

namespace tandem::router {

class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops);

  // Appends `text`; returns what may be sent now. Sets stopped() at a match.
  std::string Push(const std::string& text);
  // What is held back, at the end of a stream that did not stop ("" after a
  // stop).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  const std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;  // everything pushed so far
  size_t sent_ = 0;   // bytes of text_ already returned
  bool stopped_ = false;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_STOP_FILTER_H_
