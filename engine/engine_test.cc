#include "engine/engine.h"

#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/generate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/loader.h"
#include "nlohmann/json.hpp"
#include "tests/testing/device.h"
#include "tests/testing/status_matchers.h"

namespace tandem::engine {
namespace {

using ::tandem::testing::StatusIs;

struct Outcome {
  std::vector<int32_t> tokens;
  SequenceEnd end = SequenceEnd::kNone;
  int32_t cached_tokens = 0;
};

class EngineTest : public ::testing::Test {
 protected:
  void Load(const std::string& spec) {
    auto m = model::LoadModel(spec);
    ASSERT_OK(m);
    model_ = std::move(*m);
    backend_ = ::tandem::testing::TestBackend(2);
    auto l = model::LlamaModel::Create(model_->config, model_->weights, backend_.get());
    ASSERT_OK(l);
    llama_ = std::move(*l);
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options) {
    auto e = Engine::Create(options, llama_.get(), backend_.get(), model_->tokenizer.get());
    EXPECT_OK(e);
    return e.ok() ? std::move(*e) : nullptr;
  }

  // An engine of 8-token steps that has computed one step of `first`, with
  // `second` added before it.
  std::unique_ptr<Engine> OneChunkIn(EngineRequest first, EngineRequest second) {
    auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
    EXPECT_OK(engine->Add(std::move(first)));
    EXPECT_OK(engine->Add(std::move(second)));
    EXPECT_OK(engine->Step().status());
    return engine;
  }

  // Steps until idle, checking invariants after every step.
  std::map<int64_t, Outcome> RunAll(Engine& engine) {
    std::map<int64_t, Outcome> out;
    while (engine.HasWork()) {
      auto updates = engine.Step();
      EXPECT_OK(updates);
      if (!updates.ok()) break;
      EXPECT_OK(engine.CheckInvariants());
      for (const SequenceUpdate& u : *updates) {
        Outcome& o = out[u.id];
        o.tokens.insert(o.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
        if (u.end != SequenceEnd::kNone) o.end = u.end;
        o.cached_tokens = u.cached_tokens;
      }
    }
    return out;
  }

  // The reference: the sequence run alone by the single-sequence path.
  std::vector<int32_t> Alone(const std::string& prompt, int32_t max_tokens) {
    GenerateRequest r;
    r.prompt = prompt;
    r.max_tokens = max_tokens;
    auto g = GenerateOne(*llama_, *backend_, *model_->tokenizer, r);
    EXPECT_OK(g);
    return g.ok() ? g->generated_token_ids : std::vector<int32_t>{};
  }

  std::unique_ptr<model::LoadedModel> model_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::LlamaModel> llama_;
};

std::vector<std::string> PromptVariations(const std::vector<std::string>& base, size_t n) {
  static const char* kSuffixes[] = {"",         " there",   " a little",    ". One day", ", she",
                                    " and the", " big dog", " in the park", " Tom and",  " happy"};
  std::vector<std::string> prompts = base;
  for (size_t i = 0; prompts.size() < n; ++i) {
    prompts.push_back(base[i % base.size()] + kSuffixes[1 + i % 9] + std::string(i / base.size() % 3, '!'));
  }
  return prompts;
}

TEST_F(EngineTest, BatchOf32MatchesEachAloneAndTheReference) {
  const std::string model = TANDEM_SHARED_DIR "/models/stories260K.gguf";
  const std::string ref = TANDEM_SHARED_DIR "/data/reference/stories260K_greedy.jsonl";
  if (!std::ifstream(model) || !std::ifstream(ref)) GTEST_SKIP() << "shared data absent";
  Load(model);
  std::vector<nlohmann::json> records;
  std::ifstream in(ref);
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  std::vector<std::string> base;
  for (const auto& r : records) base.push_back(r["prompt"]);
  const std::vector<std::string> prompts = PromptVariations(base, 36);
  // A small step budget forces chunked prefill mixed with decodes.
  auto engine = MakeEngine({.max_running = 64, .max_step_tokens = 48, .max_prefill_chunk = 7});
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_OK(engine->Add({.id = static_cast<int64_t>(i),
                           .prompt_tokens = model_->tokenizer->Encode(prompts[i], true),
                           .max_tokens = 48}));
  }
  std::map<int64_t, Outcome> out = RunAll(*engine);
  ASSERT_EQ(out.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(out[i].tokens, Alone(prompts[i], 48)) << "prompt " << i << ": " << prompts[i];
    if (i < records.size()) {
      EXPECT_EQ(out[i].tokens, records[i]["generated_token_ids"].get<std::vector<int32_t>>());
    }
  }
}

TEST_F(EngineTest, SyntheticBatchMatchesEachAlone) {
  Load("synthetic:tiny");
  const std::vector<std::string> prompts =
      PromptVariations({"once upon a time", "the little dog", "she saw a big red ball"}, 33);
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 40, .max_prefill_chunk = 5});
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_OK(engine->Add({.id = static_cast<int64_t>(i),
                           .prompt_tokens = model_->tokenizer->Encode(prompts[i], true),
                           .max_tokens = 20,
                           .stop_at_eos = false}));
  }
  std::map<int64_t, Outcome> out = RunAll(*engine);
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r{.prompt = prompts[i], .max_tokens = 20, .stop_at_eos = false};
    ASSERT_OK_AND_ASSIGN(GenerateResult alone, GenerateOne(*llama_, *backend_, *model_->tokenizer, r));
    EXPECT_EQ(out[i].tokens, alone.generated_token_ids) << prompts[i];
    EXPECT_EQ(out[i].end, SequenceEnd::kLength);
  }
}

TEST_F(EngineTest, PrefixCacheComputesOnlyUncachedTokens) {
  Load("synthetic:tiny");
  std::mt19937 rng(5);
  std::vector<int32_t> first(200);
  for (int32_t& t : first) t = 3 + rng() % (model_->config.vocab_size - 3);
  first[0] = 1;
  std::vector<int32_t> second(first.begin(), first.begin() + 180);  // 90% shared
  for (int i = 0; i < 20; ++i) second.push_back(3 + rng() % 200);

  auto engine = MakeEngine({.block_size = 16});
  ASSERT_OK(engine->Add({.id = 1, .prompt_tokens = first, .max_tokens = 4, .stop_at_eos = false}));
  RunAll(*engine);
  const EngineStats before = engine->stats();
  EXPECT_EQ(before.prompt_tokens_computed, 200);
  ASSERT_OK(engine->Add({.id = 2, .prompt_tokens = second, .max_tokens = 8, .stop_at_eos = false}));
  std::map<int64_t, Outcome> out = RunAll(*engine);
  const int32_t cached = 180 / 16 * 16;  // full shared blocks
  EXPECT_EQ(out[2].cached_tokens, cached);
  EXPECT_EQ(engine->stats().cached_prompt_tokens - before.cached_prompt_tokens, cached);
  EXPECT_EQ(engine->stats().prompt_tokens_computed - before.prompt_tokens_computed, 200 - cached);

  // Same output as without the cache: a fresh engine.
  auto fresh = MakeEngine({.block_size = 16});
  ASSERT_OK(fresh->Add({.id = 2, .prompt_tokens = second, .max_tokens = 8, .stop_at_eos = false}));
  std::map<int64_t, Outcome> uncached = RunAll(*fresh);
  EXPECT_EQ(uncached[2].cached_tokens, 0);
  EXPECT_EQ(fresh->stats().prompt_tokens_computed, 200);
  EXPECT_EQ(out[2].tokens, uncached[2].tokens);
}

// Two requests sharing a prefix, submitted together: the second waits for
// the blocks the first is computing and reuses them, so the shared prefix is
// computed once, in one-shot and in chunked prefill, with the same tokens as
// each request alone.
TEST_F(EngineTest, SamePrefixSubmittedTogetherIsComputedOnce) {
  Load("synthetic:tiny");
  std::mt19937 rng(11);
  std::vector<int32_t> first(200);
  for (int32_t& t : first) t = 3 + rng() % (model_->config.vocab_size - 3);
  first[0] = 1;
  std::vector<int32_t> second(first.begin(), first.begin() + 180);
  for (int i = 0; i < 20; ++i) second.push_back(3 + rng() % 200);
  const int32_t shared = 180 / 16 * 16;  // full shared blocks

  std::map<int64_t, std::vector<int32_t>> alone;
  for (const auto& [id, prompt] : {std::pair{1, first}, std::pair{2, second}}) {
    auto e = MakeEngine({.block_size = 16});
    ASSERT_OK(e->Add({.id = id, .prompt_tokens = prompt, .max_tokens = 6, .stop_at_eos = false}));
    alone[id] = RunAll(*e)[id].tokens;
  }
  for (int32_t chunk : {0, 32}) {
    SCOPED_TRACE(chunk);
    auto engine = MakeEngine({.block_size = 16, .max_prefill_chunk = chunk});
    ASSERT_OK(engine->Add({.id = 1, .prompt_tokens = first, .max_tokens = 6, .stop_at_eos = false}));
    ASSERT_OK(engine->Add({.id = 2, .prompt_tokens = second, .max_tokens = 6, .stop_at_eos = false}));
    std::map<int64_t, Outcome> out = RunAll(*engine);
    EXPECT_EQ(engine->stats().prompt_tokens_computed, 200 + (200 - shared));
    EXPECT_EQ(out[2].cached_tokens, shared);
    EXPECT_GT(engine->stats().prefix_waits, 0);
    EXPECT_EQ(out[1].tokens, alone[1]);
    EXPECT_EQ(out[2].tokens, alone[2]);
  }
}

TEST_F(EngineTest, PreemptionLeavesOutputsUnchanged) {
  Load("synthetic:tiny");
  const std::vector<std::string> prompts =
      PromptVariations({"once upon a time there was", "the little dog and the cat"}, 10);
  auto run = [&](EngineOptions options, EngineStats* stats) {
    auto engine = MakeEngine(options);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_OK(engine->Add({.id = static_cast<int64_t>(i),
                             .prompt_tokens = model_->tokenizer->Encode(prompts[i], true),
                             .max_tokens = 24,
                             .stop_at_eos = false}));
    }
    auto out = RunAll(*engine);
    *stats = engine->stats();
    return out;
  };
  EngineStats roomy_stats, tight_stats;
  auto roomy = run({.block_size = 4, .num_blocks = 1024}, &roomy_stats);
  // 14 blocks of 4 tokens: two sequences of ~45 tokens cannot both grow.
  auto tight = run({.block_size = 4, .num_blocks = 14}, &tight_stats);
  EXPECT_EQ(roomy_stats.preemptions, 0);
  EXPECT_GT(tight_stats.preemptions, 0);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(tight[i].tokens, roomy[i].tokens) << i;
}

// What a runner with reserve_beside_step does (EngineRunner): Reserve and
// ReleaseReserved between BeginStep and EndStep, on prompts that share the
// running sequences' cached prefixes, in a pool tight enough that
// reservations evict cached blocks and fail for room. The running
// sequences get the tokens they get with no reservation, and the engine's
// invariants hold after every step.
TEST_F(EngineTest, ReservationsBesideAStepChangeNothingInIt) {
  Load("synthetic:tiny");
  const std::vector<std::string> prompts =
      PromptVariations({"once upon a time there was", "the little dog and the cat"}, 6);
  auto run = [&](bool reserve, int* reserved, int* refused) {
    auto engine = MakeEngine({.block_size = 4, .num_blocks = 36});
    std::vector<std::vector<int32_t>> encoded;
    for (size_t i = 0; i < prompts.size(); ++i) {
      encoded.push_back(model_->tokenizer->Encode(prompts[i], true));
      EXPECT_OK(engine->Add({.id = static_cast<int64_t>(i),
                             .prompt_tokens = encoded.back(),
                             .max_tokens = 24,
                             .stop_at_eos = false}));
    }
    std::map<int64_t, std::vector<int32_t>> tokens;
    std::vector<int64_t> held;
    for (int step = 0; engine->HasWork(); ++step) {
      absl::StatusOr<bool> compute = engine->BeginStep();
      EXPECT_OK(compute);
      if (!compute.ok()) break;
      if (reserve && step % 2 == 0) {
        // A prompt sharing a running one's prefix, one token longer.
        std::vector<int32_t> prompt = encoded[step % encoded.size()];
        prompt.push_back(5);
        const int64_t id = 1000 + step;
        absl::StatusOr<KvReservation> r =
            engine->Reserve({.id = id, .prompt_tokens = prompt, .max_tokens = 4});
        if (r.ok()) {
          held.push_back(id);
          ++*reserved;
        } else {
          EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
          ++*refused;
        }
      }
      if (reserve && step % 3 == 2 && !held.empty()) {
        EXPECT_OK(engine->ReleaseReserved(held.front()));
        held.erase(held.begin());
      }
      if (*compute) EXPECT_OK(engine->ComputeStep());
      for (const SequenceUpdate& u : engine->EndStep()) {
        tokens[u.id].insert(tokens[u.id].end(), u.new_tokens.begin(), u.new_tokens.end());
      }
      EXPECT_OK(engine->CheckInvariants());
    }
    for (int64_t id : held) EXPECT_OK(engine->ReleaseReserved(id));
    EXPECT_EQ(engine->num_reserved(), 0);
    return tokens;
  };
  int reserved = 0, refused = 0;
  const auto plain = run(false, &reserved, &refused);
  const auto beside = run(true, &reserved, &refused);
  EXPECT_GT(reserved, 0);
  EXPECT_GT(refused, 0);  // the pool was full at times
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(plain.at(static_cast<int64_t>(i)).size(), 24u);
    EXPECT_EQ(beside.at(static_cast<int64_t>(i)), plain.at(static_cast<int64_t>(i))) << i;
  }
}

// A forward pass stopped before a layer of its first half (ComputeStep's
// `stop`, as EngineRunner::Options::preempt_prompt_steps asks when a request
// that goes first arrives) computes nothing: the rows are planned and
// computed again, over KV the stopped pass partly wrote, and every token
// equals an undisturbed run's. A stop asked only in the second half is not
// taken.
TEST_F(EngineTest, StoppedStepsChangeNothingInTheOutput) {
  Load("synthetic:tiny");  // 4 layers: a pass may stop before layer 0, 1 or 2
  const std::vector<std::string> prompts =
      PromptVariations({"once upon a time there was", "the little dog and the cat"}, 6);
  // `stop_before(step)`: the layer before which that step's pass is asked to
  // stop, -1 for none.
  auto run = [&](const std::function<int(int)>& stop_before, int64_t* stopped) {
    auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});  // prompts in chunks
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_OK(engine->Add({.id = static_cast<int64_t>(i),
                             .prompt_tokens = model_->tokenizer->Encode(prompts[i], true),
                             .max_tokens = 12,
                             .stop_at_eos = false}));
    }
    std::map<int64_t, std::vector<int32_t>> tokens;
    for (int step = 0; engine->HasWork() && step < 2000; ++step) {
      absl::StatusOr<bool> compute = engine->BeginStep();
      EXPECT_OK(compute);
      if (!compute.ok()) break;
      int asked = 0;
      const int layer = stop_before(step);
      if (*compute) EXPECT_OK(engine->ComputeStep([&] { return asked++ == layer; }));
      for (const SequenceUpdate& u : engine->EndStep()) {
        tokens[u.id].insert(tokens[u.id].end(), u.new_tokens.begin(), u.new_tokens.end());
      }
      EXPECT_OK(engine->CheckInvariants());
    }
    EXPECT_FALSE(engine->HasWork());
    *stopped = engine->stats().steps_stopped;
    return tokens;
  };
  int64_t none = 0, early = 0, late = 0;
  const auto plain = run([](int) { return -1; }, &none);
  // Every third pass stops, before layer 0, 1 or 2 in turn.
  const auto stopped = run([](int step) { return step % 3 == 0 ? (step / 3) % 3 : -1; }, &early);
  const auto second_half = run([](int) { return 3; }, &late);
  EXPECT_EQ(none, 0);
  EXPECT_GE(early, 5);
  EXPECT_EQ(late, 0) << "a pass past its first half is finished, not stopped";
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t id = static_cast<int64_t>(i);
    EXPECT_EQ(plain.at(id).size(), 12u);
    EXPECT_EQ(stopped.at(id), plain.at(id)) << i;
    EXPECT_EQ(second_half.at(id), plain.at(id)) << i;
  }
}

TEST_F(EngineTest, CancellationFreesBlocksAtOnce) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .num_blocks = 64});
  ASSERT_OK(engine->Add({.id = 7, .prompt_tokens = {1, 5, 6, 7, 8, 9, 10, 11, 12}, .max_tokens = 30}));
  ASSERT_OK(engine->Step().status());
  EXPECT_LT(engine->kv_manager().pool().num_free_blocks(), 64);
  ASSERT_OK(engine->Cancel(7));
  EXPECT_EQ(engine->kv_manager().pool().num_free_blocks(), 64);
  EXPECT_OK(engine->CheckInvariants());
  ASSERT_OK_AND_ASSIGN(auto updates, engine->Step());
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].end, SequenceEnd::kCancelled);
  EXPECT_FALSE(engine->HasWork());
  EXPECT_THAT(engine->Cancel(7), StatusIs(absl::StatusCode::kNotFound));
}

// The order in which requests of 8 tokens each finish when one fits a step
// (max_tokens 1: a request finishes in the step that computes its prompt).
std::vector<int64_t> FinishOrder(Engine& engine) {
  std::vector<int64_t> order;
  while (engine.HasWork()) {
    auto updates = engine.Step();
    EXPECT_OK(updates);
    if (!updates.ok()) break;
    for (const SequenceUpdate& u : *updates) {
      if (u.end != SequenceEnd::kNone) order.push_back(u.id);
    }
  }
  return order;
}

// A prompt of `n` tokens distinct from every other id's (n <= 40), one token
// to generate.
EngineRequest Tokens(int64_t id, int32_t n, std::string tenant, int32_t priority = 0) {
  std::vector<int32_t> tokens;
  for (int32_t i = 0; i < n; ++i) tokens.push_back(1 + static_cast<int32_t>(id) * 40 + i);
  return {
      .id = id, .prompt_tokens = tokens, .max_tokens = 1, .priority = priority, .tenant = std::move(tenant)};
}

EngineRequest EightTokens(int64_t id, std::string tenant, int32_t priority = 0) {
  return Tokens(id, 8, std::move(tenant), priority);
}

TEST_F(EngineTest, HigherPriorityFirstThenTenantsShareAdmissions) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  // A heavy tenant's backlog, a light tenant's request behind it, then one
  // more heavy request and a priority-1 heavy request.
  for (int64_t id : {1, 2, 3}) ASSERT_OK(engine->Add(EightTokens(id, "heavy")));
  ASSERT_OK(engine->Add(EightTokens(4, "light")));
  ASSERT_OK(engine->Add(EightTokens(5, "heavy")));
  ASSERT_OK(engine->Add(EightTokens(6, "heavy", /*priority=*/1)));
  // Priority first; then the light tenant, which has had nothing, before
  // the heavy tenant's second request; the heavy backlog in arrival order.
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(6, 4, 1, 2, 3, 5));
}

TEST_F(EngineTest, OneTenantIsAdmittedInArrivalOrder) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  for (int64_t id : {1, 2, 3, 4}) ASSERT_OK(engine->Add(EightTokens(id, "")));
  ASSERT_OK(engine->Add(EightTokens(5, "", /*priority=*/2)));
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(5, 1, 2, 3, 4));
}

TEST_F(EngineTest, TenantsAlternateWhenBothAreBacklogged) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  for (int64_t id : {1, 2, 3}) ASSERT_OK(engine->Add(EightTokens(id, "a")));
  for (int64_t id : {4, 5, 6}) ASSERT_OK(engine->Add(EightTokens(id, "b")));
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(1, 4, 2, 5, 3, 6));
}

TEST_F(EngineTest, ATenantReturningFromIdleGoesFirstForAFewSteps) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  // A backlogged heavy tenant, six of its prompts admitted (one per step).
  // Prompts of 8 distinct tokens (ids up to 28 within the vocabulary).
  auto eight = [](int64_t id, std::string tenant) {
    EngineRequest r = EightTokens(id, std::move(tenant));
    for (int32_t i = 0; i < 8; ++i) r.prompt_tokens[i] = 1 + static_cast<int32_t>(id) * 8 + i;
    return r;
  };
  for (int64_t id = 1; id <= 12; ++id) ASSERT_OK(engine->Add(eight(id, "heavy")));
  for (int step = 0; step < 6; ++step) ASSERT_OK(engine->Step().status());
  // A burst of eight from a light tenant that was idle: its credit (four
  // steps' worth, kIdleTenantCreditSteps) puts its first five before the
  // heavy tenant's next; then the two alternate. Plain start-time fair
  // queueing alternates from the light tenant's second prompt.
  for (int64_t id = 21; id <= 28; ++id) ASSERT_OK(engine->Add(eight(id, "light")));
  EXPECT_THAT(FinishOrder(*engine),
              ::testing::ElementsAre(21, 22, 23, 24, 25, 7, 26, 8, 27, 9, 28, 10, 11, 12));
}

// A tenant past its fair share (and credit) does not overtake a running
// prompt by having fewer tokens left while another tenant's request is next
// in fair order: it waits for that one's admission, then goes before its
// chunks. StepPromptClasses (what a runner asks before stopping a step)
// agrees with the plans that follow.
TEST_F(EngineTest, APromptGoesAheadOfRunningOnesOnlyWhenNextInFairOrder) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  // Two 32-token heavy prompts: the step computes the first's first chunk.
  ASSERT_OK(engine->Add(Tokens(7, 32, "heavy")));
  ASSERT_OK(engine->Add(Tokens(8, 32, "heavy")));
  ASSERT_OK_AND_ASSIGN(bool compute, engine->BeginStep());
  ASSERT_TRUE(compute);
  Engine::StepPromptClasses fresh = engine->StepClasses();
  // A light tenant new to the engine would go ahead; the heavy tenant's own,
  // or a light prompt with more tokens left than the heavy tenant's 64, not;
  // a higher priority always.
  EXPECT_TRUE(fresh.GoesBefore(0, "light", 8));
  EXPECT_FALSE(fresh.GoesBefore(0, "heavy", 8));
  EXPECT_FALSE(fresh.GoesBefore(0, "light", 64));
  EXPECT_TRUE(fresh.GoesBefore(1, "heavy", 8));
  ASSERT_OK(engine->ComputeStep());
  engine->EndStep();
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(7, 8));

  // The light tenant spends its credit alone (six 8-token prompts), then
  // the same two heavy prompts, the first one chunk in; the second waits
  // with a start tag below the light tenant's.
  auto spent = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  for (int64_t id = 1; id <= 6; ++id) ASSERT_OK(spent->Add(EightTokens(id, "light")));
  EXPECT_THAT(FinishOrder(*spent), ::testing::ElementsAre(1, 2, 3, 4, 5, 6));
  ASSERT_OK(spent->Add(Tokens(7, 32, "heavy")));
  ASSERT_OK(spent->Add(Tokens(8, 32, "heavy")));
  ASSERT_OK_AND_ASSIGN(compute, spent->BeginStep());
  ASSERT_TRUE(compute);
  EXPECT_FALSE(spent->StepClasses().GoesBefore(0, "light", 8)) << "a stop here would be wasted";
  ASSERT_OK(spent->ComputeStep());
  spent->EndStep();
  // A light prompt now waits for the heavy prompt in progress and for the
  // waiting one's admission, then goes before its chunks.
  ASSERT_OK(spent->Add(Tokens(9, 8, "light")));
  EXPECT_THAT(FinishOrder(*spent), ::testing::ElementsAre(7, 9, 8));
  EXPECT_OK(spent->CheckInvariants());
}

TEST_F(EngineTest, LightTenantsPromptGoesBeforeTheRestOfARunningHeavyPrompt) {
  Load("synthetic:tiny");
  // Two 32-token heavy prompts (4 steps each), the first one chunk in,
  // then a light 8-token prompt arrives.
  auto engine = OneChunkIn(Tokens(1, 32, "heavy"), Tokens(2, 32, "heavy"));
  ASSERT_OK(engine->Add(Tokens(3, 8, "light")));
  // It takes the next step whole: done before the heavy prompt's 3 chunks.
  ASSERT_OK_AND_ASSIGN(auto updates, engine->Step());
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].id, 3);
  EXPECT_NE(updates[0].end, SequenceEnd::kNone);
  EXPECT_OK(engine->CheckInvariants());
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(1, 2));
}

TEST_F(EngineTest, ALightPromptLongerThanAStepKeepsGoingFirst) {
  Load("synthetic:tiny");
  auto engine = OneChunkIn(Tokens(1, 32, "heavy"), Tokens(2, 32, "heavy"));
  // 16 tokens: two steps, both before the heavy prompt's next chunk (the
  // light tenant has 16 then 8 tokens left, the heavy one 56 then 56).
  ASSERT_OK(engine->Add(Tokens(3, 16, "light")));
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(3, 1, 2));
  EXPECT_OK(engine->CheckInvariants());
}

TEST_F(EngineTest, OneTenantsLaterPromptDoesNotOvertakeARunningOne) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .max_step_tokens = 8});
  ASSERT_OK(engine->Add(Tokens(1, 32, "a")));
  ASSERT_OK(engine->Step().status());
  ASSERT_OK(engine->Add(Tokens(2, 8, "a")));
  // A higher priority overtakes the running prompt; the same class does not.
  ASSERT_OK(engine->Add(Tokens(3, 8, "a", /*priority=*/1)));
  EXPECT_THAT(FinishOrder(*engine), ::testing::ElementsAre(3, 1, 2));
}

TEST_F(EngineTest, BadRequestsAreRejected) {
  Load("synthetic:tiny");
  auto engine = MakeEngine({.block_size = 4, .num_blocks = 8});
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {}}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {1, 100000}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {1, 2}, .max_tokens = 100}),
              StatusIs(absl::StatusCode::kInvalidArgument));  // 26 blocks > 8
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {1}, .max_tokens = 1 << 20}),
              StatusIs(absl::StatusCode::kInvalidArgument));  // context length
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {1}, .sampling = {.top_p = 2}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(engine->Add({.id = 1, .prompt_tokens = {1}, .max_tokens = 2}));
  EXPECT_THAT(engine->Add({.id = 1, .prompt_tokens = {1}, .max_tokens = 2}),
              StatusIs(absl::StatusCode::kAlreadyExists));
}

// ≥ 10,000 arrivals, with cancellations and completions interleaved, on a
// pool small enough that eviction and preemption happen; invariants after
// every step, and every block back at the end.
// Once with one tenant, once with three tenants and two priorities (prompts
// overtaking running ones, PromptClassOrder).
class EngineRandomizedTest : public EngineTest, public ::testing::WithParamInterface<bool> {};

TEST_P(EngineRandomizedTest, ArrivalsCancellationsCompletions) {
  const bool tenants = GetParam();
  Load("synthetic:tiny");
  const uint64_t seed = 20261123;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto engine = MakeEngine(
      {.block_size = 4, .num_blocks = 40, .max_running = 12, .max_step_tokens = 24, .max_prefill_chunk = 6});
  std::vector<std::vector<int32_t>> prefixes(6);
  for (auto& p : prefixes) {
    p.push_back(1);
    for (int i = 0; i < 12; ++i) p.push_back(3 + rng() % 300);
  }
  constexpr int kArrivals = 10000;
  int arrived = 0, cancelled = 0, completed = 0;
  std::vector<int64_t> live;
  int64_t steps = 0;
  while (arrived < kArrivals || engine->HasWork()) {
    const int burst = arrived < kArrivals ? static_cast<int>(rng() % 4) : 0;
    for (int b = 0; b < burst && arrived < kArrivals; ++b) {
      std::vector<int32_t> prompt = prefixes[rng() % prefixes.size()];
      prompt.resize(1 + rng() % prompt.size());
      for (int extra = rng() % 4; extra > 0; --extra) prompt.push_back(3 + rng() % 300);
      const int64_t id = arrived++;
      EngineRequest request{.id = id,
                            .prompt_tokens = prompt,
                            .max_tokens = static_cast<int32_t>(1 + rng() % 3),
                            .stop_at_eos = false};
      if (tenants) {
        request.priority = static_cast<int32_t>(rng() % 5 == 0);
        request.tenant = absl::StrCat("t", rng() % 3);
      }
      ASSERT_OK(engine->Add(std::move(request)));
      live.push_back(id);
    }
    if (!live.empty() && rng() % 5 == 0) {
      const size_t k = rng() % live.size();
      ASSERT_OK(engine->Cancel(live[k]));
      live.erase(live.begin() + k);
      ASSERT_OK(engine->CheckInvariants());
    }
    ASSERT_OK_AND_ASSIGN(auto updates, engine->Step());
    ++steps;
    ASSERT_OK(engine->CheckInvariants());
    for (const SequenceUpdate& u : updates) {
      if (u.end == SequenceEnd::kNone) continue;
      if (u.end == SequenceEnd::kCancelled) {
        ++cancelled;
      } else {
        ++completed;
        live.erase(std::remove(live.begin(), live.end(), u.id), live.end());
      }
    }
  }
  EXPECT_EQ(arrived, kArrivals);
  EXPECT_EQ(cancelled + completed, kArrivals);
  EXPECT_GT(cancelled, 100);
  EXPECT_GT(engine->stats().cached_prompt_tokens, 0);
  EXPECT_GT(engine->kv_manager().pool().stats().evictions, 0);
  EXPECT_EQ(engine->kv_manager().pool().num_free_blocks(), 40);
  EXPECT_EQ(engine->kv_manager().num_sequences(), 0);
}

INSTANTIATE_TEST_SUITE_P(OneOrSeveralTenants, EngineRandomizedTest, ::testing::Bool());

}  // namespace
}  // namespace tandem::engine
