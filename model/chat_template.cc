#include "model/chat_template.h"

#include <utility>

#include "common/status_macros.h"

namespace tandem::model {

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Create(std::string_view source) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<jinja::Template> tmpl, jinja::Template::Create(source));
  return std::unique_ptr<ChatTemplate>(new ChatTemplate(std::string(source), std::move(tmpl)));
}

std::unique_ptr<ChatTemplate> ChatTemplate::Default() {
  auto tmpl = Create(kDefaultChatTemplate);
  // The built-in source is a constant that chat_template_test parses.
  return tmpl.ok() ? std::move(*tmpl) : nullptr;
}

absl::StatusOr<std::string> ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                                 const ChatTemplateOptions& options) const {
  jinja::Value::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    list.push_back(jinja::Value(
        jinja::Value::Dict{{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}}));
  }
  const jinja::Value::Dict context = {
      {"messages", jinja::Value(std::move(list))},
      {"bos_token", jinja::Value(options.bos_token)},
      {"eos_token", jinja::Value(options.eos_token)},
      {"add_generation_prompt", jinja::Value(options.add_generation_prompt)},
  };
  return template_->Render(context);
}

}  // namespace tandem::model
