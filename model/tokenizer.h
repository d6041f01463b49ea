// Tokenizer built from a model's vocabulary.
//
//   TANDEM_ASSIGN_OR_RETURN(auto tok, Tokenizer::FromGguf(*gguf));
//   std::vector<int32_t> ids = tok->Encode("Once upon a time", /*add_bos=*/true);
//   std::string text = tok->Decode(ids);
//
// Supported: GGUF `tokenizer.ggml.model == "llama"`, the SentencePiece-style
// BPE llama.cpp implements (merge the adjacent pair whose merged piece has the
// best score, leftmost first on ties; byte fallback to <0xXX> tokens for text
// no piece covers; spaces become U+2581 "▁"; a dummy-prefix "▁" in front of
// the text unless `tokenizer.ggml.add_space_prefix` is false). Ids equal
// llama.cpp's llama_tokenize(add_special=true, parse_special=false).
// Any other tokenizer model is an Unimplemented "unsupported tokenizer" error.
//
// Thread safety: immutable after construction; safe to share across threads.
#ifndef TANDEM_MODEL_TOKENIZER_H_
#define TANDEM_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/gguf.h"

namespace tandem::model {

// Token types as stored in `tokenizer.ggml.token_type`.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A vocabulary in the shape GGUF stores it; also how synthetic models build
// their tokenizer.
struct Vocabulary {
  std::string model = "llama";       // tokenizer.ggml.model
  std::vector<std::string> tokens;   // piece text, "▁" for spaces, "<0xAB>" for bytes
  std::vector<float> scores;         // same length as tokens
  std::vector<TokenType> types;      // same length as tokens
  int32_t unk_id = 0;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  bool add_bos = true;               // tokenizer.ggml.add_bos_token
  bool add_space_prefix = true;      // tokenizer.ggml.add_space_prefix
};

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* keys. Errors: NotFound for a missing required key,
  // InvalidArgument for inconsistent arrays or ids out of range, Unimplemented
  // ("unsupported tokenizer model 'gpt2'") for a model other than "llama".
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabulary(Vocabulary vocab);

  // Text -> ids. Prepends BOS when add_bos && vocabulary().add_bos. Special
  // token text such as "<s>" in `text` is encoded as plain text.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const;

  // The text of one token as llama.cpp's llama_token_to_piece(special=false):
  // "▁" becomes " ", byte tokens become their byte, control/unknown tokens
  // give "". Out-of-range ids give "".
  std::string TokenToPiece(int32_t id) const;

  // Concatenated TokenToPiece of every id (a leading space is kept, as in
  // llama.cpp's streamed output).
  std::string Decode(absl::Span<const int32_t> ids) const;

  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  // End of generation: EOS (and, later, other end-of-turn tokens).
  bool IsEndOfGeneration(int32_t id) const { return id == vocab_.eos_id; }
  const Vocabulary& vocabulary() const { return vocab_; }

 private:
  explicit Tokenizer(Vocabulary vocab);

  // Id of `piece`, or -1.
  int32_t PieceId(std::string_view piece) const;
  // The token byte fallback emits for `byte`: <0xXX>, else the one-byte
  // piece, else unk_id.
  int32_t ByteToToken(uint8_t byte) const;
  // SentencePiece merge of one run of raw text (no user-defined tokens in it),
  // appending ids to `out`.
  void EncodeSpm(std::string_view raw, bool space_prefix, std::vector<int32_t>* out) const;

  Vocabulary vocab_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  int32_t byte_token_[256];  // id of <0xXX>, or -1
  // User-defined tokens, longest text first: matched in the input before the
  // merge, as llama.cpp does even with parse_special=false.
  std::vector<int32_t> user_defined_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_TOKENIZER_H_
