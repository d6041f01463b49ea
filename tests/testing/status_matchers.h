// GoogleTest helpers for absl::Status, which Debian's Abseil does not ship.
//
//   EXPECT_OK(file.Write(...));
//   ASSERT_OK_AND_ASSIGN(auto gguf, GgufFile::Open(path));
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("offset")));
#ifndef TANDEM_TESTS_TESTING_STATUS_MATCHERS_H_
#define TANDEM_TESTS_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER_P2(StatusIs, code, message_matcher, "status code " + ::testing::PrintToString(code)) {
  const absl::Status& s = ::tandem::testing::GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(s.message()), result_listener);
}

MATCHER_P(StatusIs, code, "status code " + ::testing::PrintToString(code)) {
  const absl::Status& s = ::tandem::testing::GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code;
}

}  // namespace tandem::testing

#define TANDEM_TESTING_CONCAT_INNER_(a, b) a##b
#define TANDEM_TESTING_CONCAT_(a, b) TANDEM_TESTING_CONCAT_INNER_(a, b)

// Prints the failing Status (RocksDB's test macros do the same).
#define EXPECT_OK(expr)                                                \
  do {                                                                 \
    const absl::Status tandem_s_ = ::tandem::testing::GetStatus(expr); \
    EXPECT_TRUE(tandem_s_.ok()) << tandem_s_.ToString();               \
  } while (0)
#define ASSERT_OK(expr)                                                \
  do {                                                                 \
    const absl::Status tandem_s_ = ::tandem::testing::GetStatus(expr); \
    ASSERT_TRUE(tandem_s_.ok()) << tandem_s_.ToString();               \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(TANDEM_TESTING_CONCAT_(tandem_statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr)       \
  auto statusor = (expr);                                     \
  ASSERT_TRUE(statusor.ok()) << statusor.status().ToString(); \
  lhs = std::move(statusor).value()

#endif  // TANDEM_TESTS_TESTING_STATUS_MATCHERS_H_
