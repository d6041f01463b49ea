#include "loadgen/trace.h"

#include <set>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace tandem::loadgen {
namespace {

using ::tandem::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

absl::StatusOr<std::vector<TraceRequest>> Parse(const std::string& text, int64_t max = 0) {
  std::istringstream in(text);
  return ParseMooncakeTrace(in, "t.jsonl", max);
}

TEST(ParseMooncakeTraceTest, ReadsGoodLinesAndSkipsBlankOnes) {
  ASSERT_OK_AND_ASSIGN(auto trace,
                       Parse("{\"timestamp\": 0, \"input_length\": 6758, \"output_length\": 500, "
                             "\"hash_ids\": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]}\n"
                             "\n"
                             "{\"timestamp\": 3000, \"input_length\": 915, \"output_length\": 355, "
                             "\"hash_ids\": [0, 462]}\n"));
  ASSERT_EQ(trace.size(), 2u);
  EXPECT_EQ(trace[0].timestamp_ms, 0);
  EXPECT_EQ(trace[0].input_length, 6758);
  EXPECT_EQ(trace[0].output_length, 500);
  EXPECT_EQ(trace[0].hash_ids.size(), 14u);
  EXPECT_EQ(trace[0].hash_ids[13], 13);
  EXPECT_EQ(trace[1].timestamp_ms, 3000);
  EXPECT_EQ(trace[1].hash_ids, (std::vector<int64_t>{0, 462}));
}

TEST(ParseMooncakeTraceTest, StopsAtMaxRequests) {
  const std::string line =
      "{\"timestamp\": 1, \"input_length\": 512, \"output_length\": 1, \"hash_ids\": [0]}\n";
  ASSERT_OK_AND_ASSIGN(auto trace, Parse(line + line + line + "not json\n", 3));
  EXPECT_EQ(trace.size(), 3u);  // the bad fourth line is never read
}

TEST(ParseMooncakeTraceTest, MalformedLinesNameTheLineAndTheProblem) {
  const std::string good =
      "{\"timestamp\": 5, \"input_length\": 513, \"output_length\": 2, \"hash_ids\": [0, 1]}\n";
  struct Case {
    std::string bad_line;
    std::string message;
  };
  const Case cases[] = {
      {"{\"timestamp\": 5, \"input_length\": 10", "not valid JSON"},
      {"[1, 2]", "not a JSON object"},
      {"{\"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}", "missing key \"timestamp\""},
      {"{\"timestamp\": \"5\", \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}",
       "\"timestamp\" is not an integer"},
      {"{\"timestamp\": 5, \"input_length\": 10.5, \"output_length\": 1, \"hash_ids\": [0]}",
       "\"input_length\" is not an integer"},
      {"{\"timestamp\": 5, \"input_length\": 0, \"output_length\": 1, \"hash_ids\": []}",
       "\"input_length\" must be >= 1"},
      {"{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 0, \"hash_ids\": [0]}",
       "\"output_length\" must be >= 1"},
      {"{\"timestamp\": 4, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}",
       "before the previous line's 5"},
      {"{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 1}", "missing key \"hash_ids\""},
      {"{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": 0}", "not a list"},
      {"{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [-1]}",
       "not a non-negative integer"},
      {"{\"timestamp\": 5, \"input_length\": 1025, \"output_length\": 1, \"hash_ids\": [0, 1]}",
       "2 hash_ids for input_length 1025; expected ceil(1025 / 512) = 3"},
      {"{\"timestamp\": 5, \"input_length\": 99999999999, \"output_length\": 1, \"hash_ids\": [0]}",
       "\"input_length\" is out of range"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.bad_line);
    EXPECT_THAT(
        Parse(good + "\n" + c.bad_line + "\n"),
        StatusIs(absl::StatusCode::kInvalidArgument, AllOf(StartsWith("t.jsonl:3: "), HasSubstr(c.message))));
  }
}

TEST(ReadMooncakeTraceTest, MissingFileIsNotFound) {
  EXPECT_THAT(ReadMooncakeTrace("/nonexistent/trace.jsonl"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent/trace.jsonl")));
}

TEST(ReadMooncakeTraceTest, ReadsTheSharedTrace) {
  const std::string path = std::string(TANDEM_SHARED_DIR) + "/data/traces/mooncake_conversation.jsonl";
  absl::StatusOr<std::vector<TraceRequest>> trace = ReadMooncakeTrace(path, 40);
  if (absl::IsNotFound(trace.status())) GTEST_SKIP() << "no shared trace at " << path;
  ASSERT_OK(trace.status());
  ASSERT_EQ(trace->size(), 40u);
  for (const TraceRequest& r : *trace) EXPECT_EQ(r.hash_ids.front(), 0);  // the common system prompt
}

TEST(GenerateSyntheticTraceTest, SharesWholeBlocksOfOneOfTheDistinctPrefixes) {
  ASSERT_OK_AND_ASSIGN(auto trace, GenerateSyntheticTrace({.num_requests = 200,
                                                           .input_length = 100,
                                                           .output_length = 7,
                                                           .shared_prefix_fraction = 0.5,
                                                           .num_prefixes = 3,
                                                           .block_tokens = 16,
                                                           .seed = 1}));
  ASSERT_EQ(trace.size(), 200u);
  // 100 tokens: 7 blocks; floor(0.5 * 100 / 16) = 3 shared.
  std::set<std::vector<int64_t>> prefixes;
  std::set<int64_t> unique_ids;
  for (const TraceRequest& r : trace) {
    EXPECT_EQ(r.input_length, 100);
    EXPECT_EQ(r.output_length, 7);
    ASSERT_EQ(r.hash_ids.size(), 7u);
    prefixes.insert({r.hash_ids.begin(), r.hash_ids.begin() + 3});
    for (size_t i = 3; i < 7; ++i) EXPECT_TRUE(unique_ids.insert(r.hash_ids[i]).second);
  }
  EXPECT_EQ(prefixes.size(), 3u);
  for (const auto& p : prefixes) {
    for (int64_t id : p) EXPECT_FALSE(unique_ids.contains(id));
  }
  // Seeded: the same options give the same trace.
  ASSERT_OK_AND_ASSIGN(auto again, GenerateSyntheticTrace({.num_requests = 200,
                                                           .input_length = 100,
                                                           .output_length = 7,
                                                           .shared_prefix_fraction = 0.5,
                                                           .num_prefixes = 3,
                                                           .block_tokens = 16,
                                                           .seed = 1}));
  for (size_t i = 0; i < trace.size(); ++i) EXPECT_EQ(trace[i].hash_ids, again[i].hash_ids);
}

TEST(GenerateSyntheticTraceTest, RejectsOutOfRangeOptions) {
  EXPECT_THAT(GenerateSyntheticTrace({.shared_prefix_fraction = 1.5}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shared_prefix_fraction")));
  EXPECT_THAT(GenerateSyntheticTrace({.num_prefixes = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_prefixes")));
  EXPECT_THAT(GenerateSyntheticTrace({.input_length = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input_length")));
}

}  // namespace
}  // namespace tandem::loadgen
