#include "engine/engine_runner.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/loader.h"
#include "tests/testing/faulty_backend.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::StatusIs;

class EngineRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = *model::LoadModel("synthetic:tiny");
    backend_ = kernels::CreateCpuBackend({.num_threads = 1});
    llama_ = *model::LlamaModel::Create(model_->config, model_->weights, backend_.get());
    engine_ = *Engine::Create({.block_size = 4, .num_blocks = 256}, llama_.get(), backend_.get(),
                              model_->tokenizer.get());
  }

  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
  std::unique_ptr<Engine> engine_;
};

// A device fault mid-stream (the backend's sticky error, as CUDA reports an
// illegal address): every request in the step ends with an error naming it,
// none hangs, and the engine stays failed for new requests.
TEST_F(EngineRunnerTest, ADeviceFaultFailsItsRequestsAndNothingHangs) {
  testing::FaultyBackend faulty(kernels::CreateCpuBackend({.num_threads = 1}));
  auto llama = *model::LlamaModel::Create(model_->config, model_->weights, &faulty);
  auto engine =
      *Engine::Create({.block_size = 4, .num_blocks = 600}, llama.get(), &faulty, model_->tokenizer.get());
  EngineRunner runner(engine.get(), {});
  std::vector<std::shared_ptr<UpdateQueue>> queues;
  for (int64_t id = 0; id < 2; ++id) {
    queues.push_back(std::make_shared<UpdateQueue>());
    ASSERT_OK(runner.Submit(
        {.id = id, .prompt_tokens = {1, 5, 6}, .max_tokens = 1000, .stop_at_eos = false},
        [q = queues.back()](const SequenceUpdate& u) { q->Push(u); }, absl::Now() + absl::Seconds(30)));
  }
  for (auto& q : queues) {  // both are decoding
    std::optional<SequenceUpdate> first = q->Pop(absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(first.has_value());
    ASSERT_EQ(first->end, SequenceEnd::kNone);
  }
  faulty.Fail(absl::InternalError("an illegal memory access was encountered"));
  for (auto& q : queues) {
    for (;;) {
      std::optional<SequenceUpdate> u = q->Pop(absl::Now() + absl::Seconds(10));
      ASSERT_TRUE(u.has_value()) << "a request hung after the device fault";
      if (u->end == SequenceEnd::kNone) continue;
      EXPECT_EQ(u->end, SequenceEnd::kError);
      EXPECT_THAT(u->error,
                  StatusIs(absl::StatusCode::kInternal, ::testing::HasSubstr("illegal memory access")));
      break;
    }
  }
  auto late = std::make_shared<UpdateQueue>();
  ASSERT_OK(runner.Submit(
      {.id = 7, .prompt_tokens = {1, 2}, .max_tokens = 2}, [late](const SequenceUpdate& u) { late->Push(u); },
      absl::Now() + absl::Seconds(30)));
  std::optional<SequenceUpdate> u = late->Pop(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->end, SequenceEnd::kError) << "the fault is sticky";
  runner.Stop();
}

// Requests submitted from many threads at once each get their own updates,
// in order, ending once, with the tokens a lone run gives.
TEST_F(EngineRunnerTest, ConcurrentSubmittersGetTheirOwnOrderedUpdates) {
  EngineRunner runner(engine_.get(), {});
  constexpr int kThreads = 4, kPerThread = 6;
  std::vector<std::vector<int32_t>> tokens(kThreads * kPerThread);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t id = t * kPerThread + i;
        auto queue = std::make_shared<UpdateQueue>();
        EngineRequest req{.id = id,
                          .prompt_tokens = {1, static_cast<int32_t>(10 + id), 20, 30},
                          .max_tokens = 5,
                          .stop_at_eos = false};
        ASSERT_OK(runner.Submit(
            req, [queue](const SequenceUpdate& u) { queue->Push(u); }, absl::Now() + absl::Seconds(10)));
        for (;;) {
          std::optional<SequenceUpdate> u = queue->Pop(absl::Now() + absl::Seconds(10));
          ASSERT_TRUE(u.has_value()) << "no update within the deadline";
          ASSERT_EQ(u->id, id);
          tokens[id].insert(tokens[id].end(), u->new_tokens.begin(), u->new_tokens.end());
          if (u->end != SequenceEnd::kNone) {
            EXPECT_EQ(u->end, SequenceEnd::kLength);
            break;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  runner.Stop();
  for (int64_t id = 0; id < kThreads * kPerThread; ++id) {
    EXPECT_EQ(tokens[id].size(), 5u) << id;
  }
  // Same tokens as a lone run of the same prompt (batch invariance through
  // the runner).
  const std::vector<int32_t> prompt = {1, 10, 20, 30};
  auto engine = *Engine::Create({.block_size = 4, .num_blocks = 64}, llama_.get(), backend_.get(),
                                model_->tokenizer.get());
  ASSERT_OK(engine->Add({.id = 0, .prompt_tokens = prompt, .max_tokens = 5, .stop_at_eos = false}));
  std::vector<int32_t> lone;
  while (engine->HasWork()) {
    absl::StatusOr<std::vector<SequenceUpdate>> updates = engine->Step();
    ASSERT_OK(updates);
    for (const SequenceUpdate& u : *updates)
      lone.insert(lone.end(), u.new_tokens.begin(), u.new_tokens.end());
  }
  EXPECT_EQ(tokens[0], lone);
}

TEST_F(EngineRunnerTest, RunExecutesOnTheEngineThreadAndReportsLoad) {
  EngineRunner runner(engine_.get(), {});
  std::thread::id engine_thread;
  ASSERT_OK(runner.Run(
      [&](Engine& e) {
        engine_thread = std::this_thread::get_id();
        return absl::OkStatus();
      },
      absl::Now() + absl::Seconds(5)));
  EXPECT_NE(engine_thread, std::this_thread::get_id());
  EXPECT_THAT(runner.Run([](Engine&) { return absl::InternalError("boom"); }, absl::Now() + absl::Seconds(5)),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(runner.load().total_blocks, 256);
}

TEST_F(EngineRunnerTest, StopFailsLiveRequestsAndRefusesNewWork) {
  auto runner = std::make_unique<EngineRunner>(engine_.get(), EngineRunner::Options{});
  auto queue = std::make_shared<UpdateQueue>();
  // Long enough that it is still running when Stop comes.
  ASSERT_OK(runner->Submit(
      {.id = 1, .prompt_tokens = {1, 2, 3}, .max_tokens = 1000, .stop_at_eos = false},
      [queue](const SequenceUpdate& u) { queue->Push(u); }, absl::Now() + absl::Seconds(5)));
  runner->Stop();
  SequenceEnd last = SequenceEnd::kNone;
  while (std::optional<SequenceUpdate> u = queue->Pop(absl::Now() + absl::Milliseconds(100))) {
    last = u->end;
  }
  EXPECT_TRUE(last == SequenceEnd::kError || last == SequenceEnd::kLength);
  EXPECT_THAT(runner->Run([](Engine&) { return absl::OkStatus(); }, absl::Now() + absl::Seconds(1)),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(EngineRunnerTest, TickRunsOnTheEngineThread) {
  std::atomic<int> ticks{0};
  EngineRunner runner(engine_.get(), {.on_tick = [&](Engine&) { ++ticks; }, .tick = absl::Milliseconds(5)});
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ticks.load() < 3 && absl::Now() < deadline) {
    ASSERT_OK(runner.Run([](Engine&) { return absl::OkStatus(); }, deadline));
  }
  EXPECT_GE(ticks.load(), 3);
}

}  // namespace
}  // namespace tandem::engine

namespace tandem::engine {
namespace {

// Every block held by reservations: a queued request waits (the engine
// thread idles instead of spinning) and runs once the reservation is released.
TEST_F(EngineRunnerTest, RequestWaitsForReservedBlocksThenRuns) {
  auto engine = *Engine::Create({.block_size = 4, .num_blocks = 8}, llama_.get(), backend_.get(),
                                model_->tokenizer.get());
  EngineRunner runner(engine.get(), {});
  std::vector<int32_t> prompt(28, 5);  // 7 of the 8 blocks
  prompt[0] = 1;
  ASSERT_OK(runner.Run(
      [&](Engine& e) { return e.Reserve({.id = 100, .prompt_tokens = prompt, .max_tokens = 4}).status(); },
      absl::Now() + absl::Seconds(5)));
  auto queue = std::make_shared<UpdateQueue>();
  ASSERT_OK(runner.Submit(
      {.id = 1, .prompt_tokens = {1, 6, 7, 8, 9, 10}, .max_tokens = 3, .stop_at_eos = false},
      [queue](const SequenceUpdate& u) { queue->Push(u); }, absl::Now() + absl::Seconds(5)));
  // Two blocks needed, one free: nothing can run yet.
  EXPECT_FALSE(queue->Pop(absl::Now() + absl::Milliseconds(300)).has_value());
  EXPECT_EQ(runner.load().waiting, 1);
  ASSERT_OK(runner.Run([](Engine& e) { return e.ReleaseReserved(100); }, absl::Now() + absl::Seconds(5)));
  int32_t tokens = 0;
  for (;;) {
    std::optional<SequenceUpdate> u = queue->Pop(absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(u.has_value());
    tokens += static_cast<int32_t>(u->new_tokens.size());
    if (u->end != SequenceEnd::kNone) break;
  }
  EXPECT_EQ(tokens, 3);
}

// With reserve_beside_step a reservation is made and answered while a
// step's forward pass computes (the pass is held open by the test hook until
// the reservation's answer came, or 10 s), and the decoding request beside
// it gets the tokens it gets with no reservation at all. Without the option
// the reservation waits behind the step, which this test sees as a failure.
TEST_F(EngineRunnerTest, ReservationIsAnsweredWhileAStepComputes) {
  const EngineRequest decoding{
      .id = 1, .prompt_tokens = {1, 6, 7, 8, 9}, .max_tokens = 40, .stop_at_eos = false};
  auto run = [&](bool reserve) -> std::vector<int32_t> {
    auto engine = *Engine::Create({.block_size = 4, .num_blocks = 64}, llama_.get(), backend_.get(),
                                  model_->tokenizer.get());
    // The sixth forward pass (the prompt's and five decode steps in) is held
    // open until the reservation is answered.
    int passes = 0;
    absl::Notification in_compute, answered, hook_done;
    bool answered_during_compute = false;
    EngineRunner::Options options{.reserve_beside_step = true, .before_compute = [&] {
                                    if (!reserve || ++passes != 6) return;
                                    in_compute.Notify();
                                    answered_during_compute =
                                        answered.WaitForNotificationWithTimeout(absl::Seconds(10));
                                    hook_done.Notify();
                                  }};
    EngineRunner runner(engine.get(), options);
    auto queue = std::make_shared<UpdateQueue>();
    EXPECT_OK(runner.Submit(
        decoding, [queue](const SequenceUpdate& u) { queue->Push(u); }, absl::Now() + absl::Seconds(30)));
    std::vector<int32_t> tokens;
    auto next = [&]() -> std::optional<SequenceUpdate> {
      std::optional<SequenceUpdate> u = queue->Pop(absl::Now() + absl::Seconds(10));
      if (u.has_value()) tokens.insert(tokens.end(), u->new_tokens.begin(), u->new_tokens.end());
      return u;
    };
    if (reserve) {
      EXPECT_TRUE(in_compute.WaitForNotificationWithTimeout(absl::Seconds(10)));
      std::vector<int32_t> prompt(20, 5);
      prompt[0] = 1;
      absl::Status reserved = absl::UnknownError("no answer");
      EXPECT_OK(runner.PostBesideStep(
          [&](Engine& e) {
            return e.Reserve({.id = 100, .prompt_tokens = prompt, .max_tokens = 4}).status();
          },
          absl::Now() + absl::Seconds(10),
          [&](const absl::Status& s) {
            reserved = s;
            answered.Notify();
          }));
      EXPECT_TRUE(hook_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
      EXPECT_TRUE(answered_during_compute) << "the reservation waited for the step";
      EXPECT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));
      EXPECT_OK(reserved);
      // Released beside the steps too; the engine's invariants hold.
      absl::Notification released;
      EXPECT_OK(runner.PostBesideStep([](Engine& e) { return e.ReleaseReserved(100); },
                                      absl::Now() + absl::Seconds(10),
                                      [&](const absl::Status& s) {
                                        EXPECT_OK(s);
                                        released.Notify();
                                      }));
      EXPECT_TRUE(released.WaitForNotificationWithTimeout(absl::Seconds(10)));
    }
    for (;;) {
      std::optional<SequenceUpdate> u = next();
      if (!u.has_value()) {
        ADD_FAILURE() << "the decoding request hung";
        break;
      }
      if (u->end != SequenceEnd::kNone) break;
    }
    int32_t reservations = -1;
    EXPECT_OK(runner.Run(
        [&](Engine& e) {
          reservations = e.num_reserved();
          return e.CheckInvariants();
        },
        absl::Now() + absl::Seconds(10)));
    EXPECT_EQ(reservations, 0);
    return tokens;
  };
  const std::vector<int32_t> alone = run(/*reserve=*/false);
  EXPECT_EQ(alone.size(), 40u);
  EXPECT_EQ(run(/*reserve=*/true), alone);
}

}  // namespace
}  // namespace tandem::engine

namespace tandem::engine {
namespace {

// What a reactor sees through a listener: every update, and when the final
// one came (waitable with a deadline).
class Collected {
 public:
  EngineRunner::Listener Listener() {
    return [this](const SequenceUpdate& u) {
      absl::MutexLock lock(&mu_);
      EXPECT_EQ(finals_, 0) << "an update after the final one";
      updates_.push_back(u);
      if (u.end != SequenceEnd::kNone) ++finals_;
    };
  }
  // The final update, or nullopt when none came by `deadline`.
  std::optional<SequenceUpdate> WaitFinal(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](int* finals) { return *finals > 0; }, &finals_),
                          deadline);
    if (finals_ == 0) return std::nullopt;
    return updates_.back();
  }
  int32_t tokens() {
    absl::MutexLock lock(&mu_);
    int32_t n = 0;
    for (const SequenceUpdate& u : updates_) n += static_cast<int32_t>(u.new_tokens.size());
    return n;
  }

 private:
  absl::Mutex mu_;
  std::vector<SequenceUpdate> updates_ ABSL_GUARDED_BY(mu_);
  int finals_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_F(EngineRunnerTest, SubmitAsyncDeliversEveryTokenThenOneFinalUpdate) {
  EngineRunner runner(engine_.get(), {});
  Collected got;
  ASSERT_OK(runner.SubmitAsync({.id = 1, .prompt_tokens = {1, 2, 3}, .max_tokens = 4, .stop_at_eos = false},
                               got.Listener(), absl::InfiniteFuture()));
  std::optional<SequenceUpdate> last = got.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->end, SequenceEnd::kLength);
  EXPECT_EQ(got.tokens(), 4);
}

TEST_F(EngineRunnerTest, SubmitAsyncReportsARefusedRequestAsItsFinalUpdate) {
  EngineRunner runner(engine_.get(), {});
  Collected got;
  ASSERT_OK(runner.SubmitAsync({.id = 1, .prompt_tokens = {}}, got.Listener(), absl::InfiniteFuture()));
  std::optional<SequenceUpdate> last = got.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->end, SequenceEnd::kError);
  EXPECT_THAT(last->error, StatusIs(absl::StatusCode::kInvalidArgument));
}

// A request still live at its deadline (here: waiting for blocks that a
// reservation holds) is cancelled by the engine thread and ends with
// DeadlineExceeded.
TEST_F(EngineRunnerTest, SubmitAsyncEndsARequestAtItsDeadline) {
  auto engine = *Engine::Create({.block_size = 4, .num_blocks = 8}, llama_.get(), backend_.get(),
                                model_->tokenizer.get());
  EngineRunner runner(engine.get(), {.tick = absl::Milliseconds(5)});
  std::vector<int32_t> prompt(28, 5);  // 7 of the 8 blocks
  prompt[0] = 1;
  ASSERT_OK(runner.Run(
      [&](Engine& e) { return e.Reserve({.id = 100, .prompt_tokens = prompt, .max_tokens = 4}).status(); },
      absl::Now() + absl::Seconds(5)));
  Collected got;
  ASSERT_OK(runner.SubmitAsync({.id = 1, .prompt_tokens = {1, 6, 7, 8, 9, 10}, .max_tokens = 3},
                               got.Listener(), absl::Now() + absl::Milliseconds(50)));
  std::optional<SequenceUpdate> last = got.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  ASSERT_EQ(last->end, SequenceEnd::kError);
  EXPECT_THAT(last->error, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(got.tokens(), 0);
  // Gone from the engine, not just from the runner.
  EXPECT_THAT(runner.Run([](Engine& e) { return e.Cancel(1); }, absl::Now() + absl::Seconds(5)),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(EngineRunnerTest, CancelAsyncEndsALiveRequestAndLeavesHeldBlocksAlone) {
  // Live for sure: it waits for blocks a reservation holds.
  auto small = *Engine::Create({.block_size = 4, .num_blocks = 8}, llama_.get(), backend_.get(),
                               model_->tokenizer.get());
  EngineRunner blocked(small.get(), {});
  std::vector<int32_t> prompt(28, 5);  // 7 of the 8 blocks
  prompt[0] = 1;
  ASSERT_OK(blocked.Run(
      [&](Engine& e) { return e.Reserve({.id = 100, .prompt_tokens = prompt, .max_tokens = 4}).status(); },
      absl::Now() + absl::Seconds(5)));
  Collected waiting;
  ASSERT_OK(blocked.SubmitAsync({.id = 1, .prompt_tokens = {1, 6, 7, 8, 9, 10}, .max_tokens = 3},
                                waiting.Listener(), absl::InfiniteFuture()));
  ASSERT_OK(blocked.CancelAsync(1));
  std::optional<SequenceUpdate> last = waiting.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->end, SequenceEnd::kCancelled);

  EngineRunner runner(engine_.get(), {});
  // A finished request holding its blocks (a prefill worker's, until sent).
  Collected held;
  ASSERT_OK(runner.SubmitAsync({.id = 2,
                                .prompt_tokens = {1, 2, 3, 4, 5},
                                .max_tokens = 1,
                                .stop_at_eos = false,
                                .hold_blocks_on_finish = true},
                               held.Listener(), absl::InfiniteFuture()));
  last = held.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  ASSERT_EQ(last->end, SequenceEnd::kLength);
  ASSERT_OK(runner.CancelAsync(2));
  // Still held: the release finds it (FIFO: after the cancel).
  EXPECT_OK(runner.Run([](Engine& e) { return e.ReleaseReserved(2); }, absl::Now() + absl::Seconds(5)));
}

TEST_F(EngineRunnerTest, ListenAndRunAsyncEndsTheListenerWhenItsCommandFails) {
  EngineRunner runner(engine_.get(), {});
  Collected got;
  ASSERT_OK(runner.ListenAndRunAsync(
      7, got.Listener(), [](Engine& e) { return e.Activate(7, 1); }, absl::InfiniteFuture()));
  std::optional<SequenceUpdate> last = got.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->end, SequenceEnd::kError);
  EXPECT_THAT(last->error, StatusIs(absl::StatusCode::kNotFound));
}

// Its command decides an existing request's fate, so it runs however late:
// a reservation activated past its deadline is then ended (its blocks
// freed), never stranded.
TEST_F(EngineRunnerTest, ListenAndRunAsyncPastItsDeadlineStrandsNothing) {
  EngineRunner runner(engine_.get(), {.tick = absl::Milliseconds(5)});
  ASSERT_OK(runner.Run(
      [](Engine& e) {
        return e.Reserve({.id = 7, .prompt_tokens = {1, 2, 3, 4, 5}, .max_tokens = 50, .stop_at_eos = false})
            .status();
      },
      absl::Now() + absl::Seconds(5)));
  Collected got;
  ASSERT_OK(runner.ListenAndRunAsync(
      7, got.Listener(), [](Engine& e) { return e.Activate(7, 1); }, absl::InfinitePast()));
  std::optional<SequenceUpdate> last = got.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value());
  // Ended by the deadline, unless the 50 tokens beat the first tick.
  if (last->end == SequenceEnd::kError) {
    EXPECT_THAT(last->error, StatusIs(absl::StatusCode::kDeadlineExceeded));
  } else {
    EXPECT_EQ(last->end, SequenceEnd::kLength);
  }
  EXPECT_OK(runner.Run(
      [](Engine& e) {
        return e.num_reserved() == 0 && e.num_running() == 0 ? absl::OkStatus()
                                                             : absl::InternalError("request 7 stranded");
      },
      absl::Now() + absl::Seconds(5)));
}

// Options::preempt_prompt_steps: a prompt step in progress stops when a
// request arrives that goes before every prompt in it (a light tenant's
// 8-token prompt beside a heavy tenant's 16): the light prompt's token
// comes before the heavy prompt's first, and the heavy request's tokens are
// those of a run without the stop. Without the option the step in progress
// finishes first.
TEST_F(EngineRunnerTest, APromptStepStopsForARequestThatGoesBeforeIt) {
  std::vector<int32_t> heavy_prompt = {1};
  for (int32_t t = 10; t < 25; ++t) heavy_prompt.push_back(t);
  const std::vector<int32_t> light_prompt = {1, 30, 31, 32, 33, 34, 35, 36};
  struct Outcome {
    std::vector<int64_t> first_token_order;
    std::vector<int32_t> heavy_tokens;
    int64_t steps_stopped = -1;
  };
  auto run = [&](bool preempt) {
    auto engine = *Engine::Create({.block_size = 4, .num_blocks = 64, .max_step_tokens = 16}, llama_.get(),
                                  backend_.get(), model_->tokenizer.get());
    // The first forward pass (the heavy prompt's, all of it) is held until
    // the light request is submitted.
    absl::Notification in_compute, light_submitted;
    int passes = 0;
    EngineRunner::Options options{
        .preempt_prompt_steps = preempt, .before_compute = [&] {
          if (++passes != 1) return;
          in_compute.Notify();
          EXPECT_TRUE(light_submitted.WaitForNotificationWithTimeout(absl::Seconds(10)));
        }};
    EngineRunner runner(engine.get(), options);
    auto queue = std::make_shared<UpdateQueue>();
    auto listener = [queue](const SequenceUpdate& u) { queue->Push(u); };
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    EXPECT_OK(runner.SubmitAsync(
        {.id = 1, .prompt_tokens = heavy_prompt, .max_tokens = 4, .stop_at_eos = false, .tenant = "heavy"},
        listener, deadline));
    EXPECT_TRUE(in_compute.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_OK(runner.SubmitAsync(
        {.id = 2, .prompt_tokens = light_prompt, .max_tokens = 1, .stop_at_eos = false, .tenant = "light"},
        listener, deadline));
    light_submitted.Notify();
    Outcome out;
    for (int ended = 0; ended < 2;) {
      std::optional<SequenceUpdate> u = queue->Pop(absl::Now() + absl::Seconds(10));
      if (!u.has_value()) {
        ADD_FAILURE() << "a request hung";
        break;
      }
      if (!u->new_tokens.empty() && std::find(out.first_token_order.begin(), out.first_token_order.end(),
                                              u->id) == out.first_token_order.end()) {
        out.first_token_order.push_back(u->id);
      }
      if (u->id == 1)
        out.heavy_tokens.insert(out.heavy_tokens.end(), u->new_tokens.begin(), u->new_tokens.end());
      if (u->end != SequenceEnd::kNone) {
        EXPECT_NE(u->end, SequenceEnd::kError) << u->error;
        ++ended;
      }
    }
    EXPECT_OK(runner.Run(
        [&](Engine& e) {
          out.steps_stopped = e.stats().steps_stopped;
          return e.CheckInvariants();
        },
        absl::Now() + absl::Seconds(10)));
    return out;
  };
  const Outcome with = run(true);
  const Outcome without = run(false);
  EXPECT_EQ(with.steps_stopped, 1);
  EXPECT_THAT(with.first_token_order, ::testing::ElementsAre(2, 1));
  EXPECT_EQ(without.steps_stopped, 0);
  EXPECT_THAT(without.first_token_order, ::testing::ElementsAre(1, 2));
  EXPECT_EQ(without.heavy_tokens.size(), 4u);
  EXPECT_EQ(with.heavy_tokens, without.heavy_tokens);
}

TEST_F(EngineRunnerTest, PostRunsOnTheEngineThreadAndStopEndsEverything) {
  auto runner = std::make_unique<EngineRunner>(engine_.get(), EngineRunner::Options{});
  absl::Notification ran;
  ASSERT_OK(runner->Post([](Engine&) { return absl::InternalError("boom"); }, absl::InfiniteFuture(),
                         [&](const absl::Status& s) {
                           EXPECT_THAT(s, StatusIs(absl::StatusCode::kInternal));
                           ran.Notify();
                         }));
  EXPECT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  // Work queued after its deadline never runs.
  absl::Notification expired;
  ASSERT_OK(runner->Post(
      [](Engine&) {
        ADD_FAILURE() << "ran after its deadline";
        return absl::OkStatus();
      },
      absl::InfinitePast(),
      [&](const absl::Status& s) {
        EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded));
        expired.Notify();
      }));
  EXPECT_TRUE(expired.WaitForNotificationWithTimeout(absl::Seconds(10)));

  Collected live;
  ASSERT_OK(
      runner->SubmitAsync({.id = 1, .prompt_tokens = {1, 2, 3}, .max_tokens = 1000, .stop_at_eos = false},
                          live.Listener(), absl::InfiniteFuture()));
  runner->Stop();
  std::optional<SequenceUpdate> last = live.WaitFinal(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(last.has_value()) << "Stop left a listener without its final update";
  EXPECT_TRUE(last->end == SequenceEnd::kError || last->end == SequenceEnd::kLength);
  EXPECT_THAT(runner->Post([](Engine&) { return absl::OkStatus(); }, absl::InfiniteFuture()),
              StatusIs(absl::StatusCode::kUnavailable));
  Collected refused;
  EXPECT_THAT(
      runner->SubmitAsync({.id = 2, .prompt_tokens = {1}}, refused.Listener(), absl::InfiniteFuture()),
      StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace tandem::engine
