// kill -9 of a process writing to the SSD tier, then reopen: every block
// whose Put had returned (the helper printed "acked N") is served again,
// bit-exact. Run in both sync_writes modes: the durability contract in
// ssd_tier.h promises process-crash durability in either.
#include <signal.h>
#include <sys/wait.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/ssd_tier.h"
#include "kvstore/test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/subprocess.h"

namespace tandem::kvstore {
namespace {

using ::tandem::kvstore::testing::PayloadFor;
using ::tandem::kvstore::testing::TempDir;
using ::tandem::kvstore::testing::TokensFor;

class SsdCrashTest : public ::testing::TestWithParam<bool> {};

TEST_P(SsdCrashTest, AcknowledgedBlocksSurviveSigkill) {
  const bool sync = GetParam();
  TempDir dir;
  uint64_t acked = 0;
  {
    tandem::testing::Subprocess writer({SSD_CRASH_WRITER, dir.path(), sync ? "sync" : "nosync"});
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    std::optional<std::string> line = writer.ReadLine(deadline);
    ASSERT_EQ(line, "ready");
    // Let it get well into writing (memtable, WAL, maybe a flush), then kill
    // it mid-stream: it is writing block acked+1 (or later) at that moment.
    while (acked < 300) {
      line = writer.ReadLine(deadline);
      ASSERT_TRUE(line.has_value()) << "writer stopped after " << acked;
      ASSERT_TRUE(absl::StartsWith(*line, "acked "));
      ASSERT_TRUE(absl::SimpleAtoi(line->substr(6), &acked));
    }
    writer.Signal(SIGKILL);
    const std::optional<int> status = writer.Wait(absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(status.has_value());
    ASSERT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL);
  }
  ASSERT_OK_AND_ASSIGN(auto ssd, SsdTier::Create({.path = dir.path(),
                                                  .capacity_bytes = size_t{1} << 30,
                                                  .model_id_hash = ModelIdHash("crash-test")}));
  EXPECT_GE(ssd->num_blocks(), acked);
  for (uint64_t n = 1; n <= acked; ++n) {
    absl::StatusOr<std::string> value = ssd->Get(n);
    ASSERT_TRUE(value.ok()) << value.status() << " block " << n << " of " << acked << " acknowledged";
    ASSERT_OK_AND_ASSIGN(BlockView view, DecodeBlock(*value, /*verify_checksum=*/true));
    EXPECT_EQ(view.Tokens(), TokensFor(n, 16));
    ASSERT_EQ(std::vector<uint8_t>(view.payload.begin(), view.payload.end()), PayloadFor(n, 16384)) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(BothModes, SsdCrashTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Sync" : "NoSync"; });

}  // namespace
}  // namespace tandem::kvstore
