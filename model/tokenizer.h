// Tokenizers: one interface over the three kinds a model can bring.
//
//   TANDEM_ASSIGN_OR_RETURN(auto tok, Tokenizer::FromGguf(*gguf));
//   std::vector<int32_t> ids = tok->Encode("Once upon a time", /*add_bos=*/true);
//   std::string text = tok->Decode(ids);
//   // Chat-template output, where "<|im_start|>" must become its token:
//   ids = tok->Encode(rendered_chat, /*add_bos=*/false, /*parse_special=*/true);
//
// Kinds:
//  - GGUF `tokenizer.ggml.model == "llama"`: the SentencePiece-style BPE
//    llama.cpp implements (this file; merge the adjacent pair whose merged
//    piece has the best score, leftmost first on ties; byte fallback to
//    <0xXX> tokens for text no piece covers; spaces become U+2581 "▁"; a
//    dummy-prefix "▁" in front of the text unless
//    `tokenizer.ggml.add_space_prefix` is false). Ids equal llama.cpp's
//    llama_tokenize(add_special=true, parse_special).
//  - GGUF `tokenizer.ggml.model == "gpt2"`: byte-level BPE with
//    `tokenizer.ggml.merges` and the `tokenizer.ggml.pre` pre-tokenizer
//    (llama-bpe, qwen2, default); see bpe_tokenizer.h.
//  - Hugging Face tokenizer.json BPE, byte-level (Llama 3, Qwen2/3) or
//    SentencePiece-style (Llama 2, Mistral); see tokenizer_json.h.
// Any other tokenizer model is an Unimplemented "unsupported tokenizer" error.
//
// Thread safety: immutable after construction; safe to share across threads.
#ifndef TANDEM_MODEL_TOKENIZER_H_
#define TANDEM_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

// A vocabulary in the shape GGUF stores it; also how synthetic models and
// tokenizer.json files build their tokenizer.
struct Vocabulary {
  std::string model = "llama";  // tokenizer.ggml.model: "llama" or "gpt2"
  // Piece text as the vocabulary spells it: "▁" for spaces and "<0xAB>" for
  // bytes (llama), GPT-2's byte-to-unicode characters (gpt2); control and
  // user-defined (added) tokens are raw text.
  std::vector<std::string> tokens;
  std::vector<float> scores;     // same length as tokens
  std::vector<TokenType> types;  // same length as tokens
  int32_t unk_id = 0;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  bool add_bos = true;              // tokenizer.ggml.add_bos_token
  bool add_space_prefix = true;     // tokenizer.ggml.add_space_prefix (llama)
  std::vector<std::string> merges;  // tokenizer.ggml.merges, "left right" by rank (gpt2)
  std::string pre = "default";      // tokenizer.ggml.pre (gpt2)
  // End-of-generation tokens besides eos_id (<|eot_id|>, <|im_end|>, ...).
  std::vector<int32_t> eog_ids;
};

// Adds to vocab->eog_ids every control or user-defined token whose text is a
// known end-of-turn marker (<|eot_id|>, <|eom_id|>, <|end_of_text|>,
// <|im_end|>, <|endoftext|>, <|end|>, <end_of_turn>, ...), as llama.cpp does.
void AddKnownEndOfGenerationTokens(Vocabulary* vocab);

// The interface every tokenizer kind implements. Construct with the factories
// here, BpeTokenizer::Create (bpe_tokenizer.h) or LoadHfTokenizer
// (tokenizer_json.h).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Reads tokenizer.ggml.* keys ("llama" or "gpt2"). Errors: NotFound for a
  // missing required key, InvalidArgument for inconsistent arrays or ids out
  // of range, Unimplemented ("unsupported tokenizer model 'bert'") for other
  // models or an unknown gpt2 pre-tokenizer.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  // vocab.model "llama" or "gpt2" (with merges and pre).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabulary(Vocabulary vocab);

  // Text -> ids. Prepends BOS (and whatever else the tokenizer's template
  // adds) when add_bos && vocabulary().add_bos. With parse_special, the text
  // of a control token such as "<|im_start|>" or "<s>" becomes that token
  // (leftmost-longest); without, it is encoded as plain text. User-defined
  // (non-special added) tokens are always matched, as llama.cpp and Hugging
  // Face do.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special = false) const {
    return EncodeImpl(text, add_bos, parse_special);
  }

  // The bytes of one token, raw (a byte-level token can be part of a UTF-8
  // character: TextStream holds such bytes back). Control and unknown tokens
  // give "" unless `special`, which gives their text. For llama, as
  // llama.cpp's llama_token_to_piece(special): "▁" becomes " ", byte tokens
  // become their byte. Out-of-range ids give "".
  std::string TokenToPiece(int32_t id, bool special = false) const { return PieceImpl(id, special); }

  // Concatenated TokenToPiece of every id (a leading dummy-prefix space is
  // kept, as in llama.cpp's streamed output).
  std::string Decode(absl::Span<const int32_t> ids, bool special = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  // End of generation: EOS and every end-of-turn token in eog_ids.
  bool IsEndOfGeneration(int32_t id) const;
  const Vocabulary& vocabulary() const { return vocab_; }

 protected:
  explicit Tokenizer(Vocabulary vocab) : vocab_(std::move(vocab)) {}

  virtual std::vector<int32_t> EncodeImpl(std::string_view text, bool add_bos, bool parse_special) const = 0;
  virtual std::string PieceImpl(int32_t id, bool special) const = 0;

  Vocabulary vocab_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_TOKENIZER_H_
