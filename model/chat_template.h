// Chat templates: turn a conversation into the prompt text a model was
// trained on, by rendering the model's Jinja chat template (GGUF
// `tokenizer.chat_template`, or tokenizer_config.json's `chat_template`) the
// way Hugging Face's apply_chat_template does (trim_blocks, lstrip_blocks,
// `messages`, `bos_token`, `eos_token`, `add_generation_prompt`).
//
//   TANDEM_ASSIGN_OR_RETURN(auto tmpl, ChatTemplate::Create(model->chat_template));
//   std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
//   TANDEM_ASSIGN_OR_RETURN(std::string prompt,
//                           tmpl->Render(messages, {.bos_token = "<s>", .eos_token = "</s>"}));
//
// Templates known to render byte-identically to @huggingface/jinja
// (tests/chat_template_reference_test.cc): Llama 3, Qwen2, Qwen3, Mistral
// Instruct, ChatML. A model without a template uses Default() (ChatML).
// Thread safety: a ChatTemplate is immutable; Render may run concurrently.
#ifndef TANDEM_MODEL_CHAT_TEMPLATE_H_
#define TANDEM_MODEL_CHAT_TEMPLATE_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "jinja/template.h"

namespace tandem::model {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatTemplateOptions {
  // End the prompt with the opening of an assistant turn. Default: true.
  bool add_generation_prompt = true;
  // The model's BOS/EOS token text, as the template sees `bos_token` and
  // `eos_token`. Default: empty.
  std::string bos_token;
  std::string eos_token;
};

// The built-in default (ChatML, as Hugging Face's former default template):
//   <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
inline constexpr std::string_view kDefaultChatTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% "
    "endif %}";

class ChatTemplate {
 public:
  // Parses once. Errors: InvalidArgument naming the template line and column.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Create(std::string_view source);
  // The documented default (kDefaultChatTemplate), for a model with no template.
  static std::unique_ptr<ChatTemplate> Default();

  // Errors: InvalidArgument when the template raises (raise_exception, e.g.
  // roles that do not alternate) or fails on this conversation, naming the
  // line; ResourceExhausted past the render limits.
  absl::StatusOr<std::string> Render(absl::Span<const ChatMessage> messages,
                                     const ChatTemplateOptions& options) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(std::string source, std::unique_ptr<jinja::Template> tmpl)
      : source_(std::move(source)), template_(std::move(tmpl)) {}
  std::string source_;
  std::unique_ptr<jinja::Template> template_;
};

}  // namespace tandem::model

#endif  // TANDEM_MODEL_CHAT_TEMPLATE_H_
