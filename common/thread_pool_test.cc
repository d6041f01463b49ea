#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(ThreadPoolTest, EveryItemRunsExactlyOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool({.num_threads = threads});
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 7, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " threads, item " << i;
    }
  }
}

TEST(ThreadPoolTest, ManyJobsBackToBack) {
  // spin_us 0: workers always sleep between jobs; 1: they mostly miss the
  // window; 200: they catch most jobs spinning.
  for (int spin_us : {0, 1, 200}) {
    ThreadPool pool({.num_threads = 3, .spin_us = spin_us});
    std::atomic<int64_t> sum{0};
    for (int job = 0; job < 500; ++job) {
      pool.ParallelFor(17, [&](int64_t i) { sum.fetch_add(i); });
    }
    EXPECT_EQ(sum.load(), 500 * (16 * 17 / 2)) << spin_us;
  }
}

TEST(ThreadPoolTest, WorkersTakePartInJobs) {
  // Items block until a second thread arrives, so a pool whose workers never
  // woke would hang here rather than pass.
  for (int spin_us : {0, 100000}) {
    ThreadPool pool({.num_threads = 2, .spin_us = spin_us});
    for (int job = 0; job < 50; ++job) {
      std::atomic<int> arrived{0};
      pool.ParallelFor(2, [&](int64_t) {
        arrived.fetch_add(1);
        while (arrived.load() < 2) {
        }
      });
      EXPECT_EQ(arrived.load(), 2);
    }
  }
}

}  // namespace
}  // namespace tandem
