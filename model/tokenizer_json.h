// Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json,
// generation_config.json) to a Tokenizer.
//
//   TANDEM_ASSIGN_OR_RETURN(HfTokenizer hf, LoadHfTokenizer("/models/Qwen3-0.6B"));
//   std::vector<int32_t> ids = hf.tokenizer->Encode(chat, /*add_bos=*/true, /*parse_special=*/true);
//
// Supported: model "BPE" (vocab; merges as "a b" strings or [a, b] pairs;
// byte_fallback; ignore_merges; unk_token); normalizers null, NFC (ICU),
// Prepend("▁"), Replace(" " -> "▁") and Sequences of them; pre-tokenizers
// null, Split (Regex or String, Isolated), ByteLevel (add_prefix_space,
// use_regex), Metaspace, Digits and Sequences of them; added_tokens (special
// ones are control tokens, matched only with parse_special; others are
// user-defined, always matched; lstrip/rstrip swallow neighbouring
// whitespace; single_word and normalized are ignored); post_processor TemplateProcessing (its
// `single` template is what Encode(add_bos=true) adds), alone or in a
// Sequence. Anything else is an Unimplemented error naming it.
//
// bos/eos come from tokenizer_config.json's bos_token/eos_token;
// end-of-generation tokens from eos_token, generation_config.json's
// eos_token_id (a number or a list) and the known end-of-turn texts.
//
// The result owns its tokenizer; thread safety as Tokenizer.
#ifndef TANDEM_MODEL_TOKENIZER_JSON_H_
#define TANDEM_MODEL_TOKENIZER_JSON_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace tandem::model {

// The files' contents; "" for an absent optional file.
struct HfTokenizerFiles {
  std::string tokenizer_json;          // required
  std::string tokenizer_config_json;   // optional
  std::string generation_config_json;  // optional
};

struct HfTokenizer {
  std::unique_ptr<Tokenizer> tokenizer;
  // tokenizer_config.json's chat_template (the "default" one where it is a
  // list of named templates); "" when there is none.
  std::string chat_template;
};

// Errors: InvalidArgument for malformed JSON or inconsistent contents (the
// message names the field), Unimplemented for an unsupported component.
absl::StatusOr<HfTokenizer> TokenizerFromHfFiles(const HfTokenizerFiles& files);

// Reads DIR/tokenizer.json (NotFound when missing) and, where present,
// DIR/tokenizer_config.json and DIR/generation_config.json. Errors name the file.
absl::StatusOr<HfTokenizer> LoadHfTokenizer(std::string_view dir);

}  // namespace tandem::model

#endif  // TANDEM_MODEL_TOKENIZER_JSON_H_
