// Turns a stream of token ids into text deltas that are valid UTF-8 and never
// split a character: a byte-fallback token can carry the first byte of a character
// whose other bytes come in later tokens; those bytes are held back until the
// character completes (or the stream ends).
//
//   TextStream stream(tokenizer);
//   for (int32_t id : ids) send(stream.Push(id));
//   send(stream.Finish());
#ifndef TANDEM_MODEL_TEXT_STREAM_H_
#define TANDEM_MODEL_TEXT_STREAM_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "model/tokenizer.h"

namespace tandem::model {

class TextStream {
 public:
  explicit TextStream(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // The text `id` completes: everything held plus its piece, up to the last
  // complete character.
  std::string Push(int32_t id);
  // Whatever is still held (an incomplete character at the end of the stream).
  std::string Finish();

  // Length of the longest prefix of `bytes` that does not end inside an
  // incomplete (but so far valid) UTF-8 sequence.
  static size_t CompletePrefix(const std::string& bytes);

  // `bytes` with every invalid UTF-8 sequence replaced by U+FFFD, so text
  // can travel in protobuf strings and JSON (byte-fallback tokens can produce
  // byte sequences that are not UTF-8 at all).
  static std::string ToValidUtf8(std::string_view bytes);

 private:
  const Tokenizer* tokenizer_;  // borrowed
  std::string held_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_TEXT_STREAM_H_
