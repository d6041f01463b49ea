// Byte-pair-encoding tokenizers of the Hugging Face `tokenizers` kind: GGUF
// `tokenizer.ggml.model == "gpt2"` and tokenizer.json "BPE" models, both
// byte-level (GPT-2, Llama 3, Qwen2/3) and SentencePiece-style (Llama 2,
// Mistral: "▁" for spaces, <0xXX> byte fallback).
//
//   BpeOptions options;
//   options.pre_tokenizer = {{.pattern = R"('s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+)"}};
//   TANDEM_ASSIGN_OR_RETURN(auto tok, BpeTokenizer::Create(std::move(vocab), std::move(options)));
//   std::vector<int32_t> ids = tok->Encode("Hello world", /*add_bos=*/false);
//
// Encode, as Hugging Face's tokenizers: split out added tokens (user-defined
// always, control only with parse_special; leftmost-longest), then for each
// text section: normalize (NFC, spaces to "▁", a "▁" prepended), pre-tokenize
// (regex splits with PCRE2 in UTF+UCP mode, JIT where available; GPT-2 byte
// mapping), and merge each piece by merge rank, lowest first, leftmost on ties
// (a heap over a linked list of symbols: O(n log n) in the piece length).
// Text that is not valid UTF-8 is tokenized too: each invalid byte is a piece
// of its own (a byte token, or byte fallback). Regex `\s` also matches U+0085
// as Rust's regex (which tokenizers uses) does and PCRE2 does not.
//
// Not supported: BPE dropout, fuse_unk, continuing_subword_prefix and
// end_of_word_suffix (tokenizer_json.h refuses the last two), added tokens'
// single_word and normalized flags (ignored: matched on the raw text).
//
// Thread safety: immutable after construction; safe to share across threads.
#ifndef TANDEM_MODEL_BPE_TOKENIZER_H_
#define TANDEM_MODEL_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace tandem::model {

// One pre-tokenizer step, applied to every piece the steps before it made.
struct PreTokenizerStep {
  enum class Kind {
    kSplit,        // split each piece into matches of `pattern` and the text between ("Isolated")
    kPrefixSpace,  // a ' ' in front of each piece that does not start with one (ByteLevel add_prefix_space)
  };
  Kind kind = Kind::kSplit;
  std::string pattern;  // kSplit: a regex in the syntax tokenizer.json writes (PCRE2-compatible)
};

struct BpeOptions {
  // Pre-tokenizer steps in order. Default: none (each text section is one piece).
  std::vector<PreTokenizerStep> pre_tokenizer;
  // GPT-2 byte level: pieces are merged as bytes, which the vocabulary spells
  // with GPT-2's byte-to-unicode characters ("Ġ" for ' '). Otherwise pieces
  // are merged as UTF-8 characters spelled as they are. Default: true.
  bool byte_level = true;
  // Unicode NFC normalization of each text section (Qwen2/3). Default: false.
  bool nfc = false;
  // Every ' ' becomes "▁" (U+2581) before pre-tokenization (Llama 2's Replace
  // normalizer, Metaspace). Default: false.
  bool spaces_to_metaspace = false;
  enum class Prepend {
    kNever,
    kAlways,  // "▁" in front of every text section (Llama 2's Prepend normalizer)
    kFirst,   // only in front of the section at the start of the text (Metaspace "first")
  };
  // Where a "▁" is prepended. Default: kNever.
  Prepend prepend_metaspace = Prepend::kNever;
  // Metaspace: prepend only where the section does not already start with
  // "▁". Default: false (the Prepend normalizer always prepends).
  bool prepend_only_if_absent = false;
  // A character no token covers becomes its <0xXX> byte tokens (else unk_id,
  // or nothing when unk_id < 0). Default: false.
  bool byte_fallback = false;
  // A piece that is a token as a whole is that token, without merging
  // (Llama 3). Default: false.
  bool ignore_merges = false;
  // Token for uncovered text when there is no byte fallback; -1 for none.
  // Default: -1.
  int32_t unk_id = -1;
  // Merges by rank, as (left, right) spelled as the vocabulary spells them.
  // Empty: vocabulary.merges ("left right" strings) are used.
  std::vector<std::pair<std::string, std::string>> merges;
  // Tokens Encode(add_bos=true) puts around the text (TemplateProcessing).
  // Both empty: {vocabulary.bos_id} in front when vocabulary.add_bos.
  std::vector<int32_t> prefix_ids;
  std::vector<int32_t> suffix_ids;
  // Added tokens that swallow the whitespace (Unicode White_Space) before
  // them (lstrip) or after them (rstrip), as tokenizers' AddedToken.
  // Default: none.
  std::vector<int32_t> lstrip_ids;
  std::vector<int32_t> rstrip_ids;
};

// The options llama.cpp uses for GGUF `tokenizer.ggml.pre`: "llama-bpe"
// (also "llama3", "llama-v3"; Llama 3's regex and ignore_merges), "qwen2",
// "default"/"gpt2". Unimplemented names the supported ones.
absl::StatusOr<BpeOptions> BpeOptionsForGgufPre(std::string_view pre);

class BpeTokenizer final : public Tokenizer {
 public:
  // `vocab.types` says which tokens are added: kControl (special) and
  // kUserDefined are matched in the text as whole strings and never come out
  // of a merge; kByte tokens are <0xXX>. Errors: InvalidArgument for
  // inconsistent sizes, ids out of range, a merge naming a piece not in the
  // vocabulary, or a regex PCRE2 rejects (with its message and offset).
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(Vocabulary vocab, BpeOptions options);
  ~BpeTokenizer() override;

  const BpeOptions& options() const { return options_; }

 protected:
  std::vector<int32_t> EncodeImpl(std::string_view text, bool add_bos, bool parse_special) const override;
  std::string PieceImpl(int32_t id, bool special) const override;

 private:
  struct Regex;  // a compiled PCRE2 pattern
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  struct TrieNode {
    absl::flat_hash_map<char, int32_t> next;
    int32_t id = -1;  // the added token ending here
  };

  BpeTokenizer(Vocabulary vocab, BpeOptions options);
  absl::Status Init();

  // Normalizes, pre-tokenizes and merges one section of text between added
  // tokens; `at_start`: the section begins the text.
  void EncodeSection(std::string_view section, bool at_start, std::vector<int32_t>* out) const;
  // Merges one pre-tokenized piece (in the normalized text's bytes).
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  // Emits the tokens for text no token covers (byte fallback or unk).
  void EmitUncovered(std::string_view bytes, std::vector<int32_t>* out) const;

  BpeOptions options_;
  std::vector<std::unique_ptr<Regex>> regexes_;  // one per kSplit step, in order
  // Non-added tokens by their merge key: raw bytes (byte level) or spelling.
  absl::flat_hash_map<std::string, int32_t> key_to_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id << 32 | right id)
  int32_t byte_id_[256];                         // token of each single byte, or -1
  int32_t byte_fallback_id_[256];                // <0xXX>, or -1
  std::vector<std::string> pieces_;              // TokenToPiece bytes of each token
  std::vector<TrieNode> trie_;                   // added tokens; trie_[0] is the root
  std::vector<uint8_t> strip_;                   // per token: 1 lstrip, 2 rstrip
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_BPE_TOKENIZER_H_
