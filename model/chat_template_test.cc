#include "model/chat_template.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::model {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ChatTemplateTest, DefaultIsChatMl) {
  auto tmpl = ChatTemplate::Default();
  ASSERT_NE(tmpl, nullptr);
  EXPECT_EQ(tmpl->source(), kDefaultChatTemplate);
  const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
  auto text = tmpl->Render(messages, {});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(
      *text,
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto no_prompt = tmpl->Render(messages, {.add_generation_prompt = false});
  ASSERT_TRUE(no_prompt.ok());
  EXPECT_FALSE(no_prompt->ends_with("assistant\n"));
}

TEST(ChatTemplateTest, PassesTokensAndFlags) {
  auto tmpl =
      ChatTemplate::Create("{{ bos_token }}{{ messages|length }}{{ add_generation_prompt }}{{ eos_token }}");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status();
  const std::vector<ChatMessage> messages = {{"user", "a"}, {"assistant", "b"}};
  auto text =
      (*tmpl)->Render(messages, {.add_generation_prompt = false, .bos_token = "<s>", .eos_token = "</s>"});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "<s>2False</s>");
}

TEST(ChatTemplateTest, ParseErrorNamesLine) {
  auto tmpl = ChatTemplate::Create("{% for m in messages %}\n{{ m.content }}\n{% endfro %}");
  EXPECT_THAT(tmpl, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 3")));
}

TEST(ChatTemplateTest, RaiseExceptionIsInvalidArgument) {
  auto tmpl = ChatTemplate::Create(
      "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% "
      "endif %}ok");
  ASSERT_TRUE(tmpl.ok());
  const std::vector<ChatMessage> bad = {{"assistant", "x"}};
  EXPECT_THAT((*tmpl)->Render(bad, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("first message must be from the user")));
  const std::vector<ChatMessage> good = {{"user", "x"}};
  auto text = (*tmpl)->Render(good, {});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "ok");
}

}  // namespace
}  // namespace tandem::model
