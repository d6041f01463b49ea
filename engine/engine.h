// The batched inference engine both kinds of worker run: a paged KV pool with
// a prefix cache, and a scheduler doing continuous batching with chunked
// prefill, FCFS admission and preemption by recomputation.
//
//   TANDEM_ASSIGN_OR_RETURN(auto engine, Engine::Create(options, llama.get(), backend.get(), tok));
//   TANDEM_RETURN_IF_ERROR(engine->Add({.id = 1, .prompt_tokens = ids, .max_tokens = 32}));
//   while (engine->HasWork()) {
//     TANDEM_ASSIGN_OR_RETURN(std::vector<SequenceUpdate> updates, engine->Step());
//     ... stream updates[i].new_tokens; a finished update ends its request ...
//   }
//
// Each Step runs one forward pass over a batch built as follows, within
// `max_step_tokens` rows:
//   1. every running sequence with one pending token (decode) gets its row,
//      oldest first; when the pool cannot give one of them a block, the most
//      recently admitted running sequence is preempted (its blocks freed, its
//      tokens kept, and it goes back to the front of the queue to be
//      recomputed);
//   2. running sequences still in prefill get the next chunk of their prompt
//      (oldest first). With several priorities or tenants computing prompts,
//      a higher priority's, then the tenant with fewer prompt tokens left's,
//      go first, and a waiting request of such a class is admitted before
//      the running prompts' chunks (PromptClassOrder): a light tenant's
//      prompt waits for the step in progress, not for a heavy tenant's long
//      prompt to finish (and with EngineRunner::Options::
//      preempt_prompt_steps for at most half of a prompt step in progress,
//      see ComputeStep);
//   3. waiting requests are admitted in arrival order (with several
//      priorities or tenants waiting: highest priority first, then fair
//      across tenants with a few steps' credit for a tenant returning from
//      idle, see EngineRequest and TenantStart) while the running count
//      (loading sequences included), the token budget and the pool allow; a
//      prompt's cached prefix (full blocks found by chained hash) is reused
//      and not recomputed. A request whose next uncached block a running
//      sequence is computing right now (same tokens up to the end of that
//      block) is not admitted yet: it waits, without blocks, until the
//      block is committed and then reuses it as cached prefix, instead of
//      computing it a second time (a burst of same-prefix requests computes
//      the prefix once). Requests behind it may be admitted meanwhile.
//
// Tier loads (EngineOptions::tiers with async_tier_loads): a request whose
// cached prefix continues into the DRAM/SSD tiers is admitted with pool
// blocks for it, but the copies run on the KvManager's loader thread; the
// sequence is "loading" (num_loading) and gets no rows until they end. Each
// Step first collects finished loads (KvManager::PollLoads): the sequence
// joins the running batch with the prefix that did load (a failed copy
// truncates it; the rest is computed like any uncached prompt) and is
// scheduled in that same step. Meanwhile the other sequences keep stepping.
// When a Step would schedule nothing while loads are outstanding it waits on
// the loader's condition (up to kTierLoadWait), then plans once more.
// Cancel of a loading sequence cancels its copies before freeing its blocks.
// Reserve always copies synchronously (its cached_tokens is a promise to the
// prefill worker, which will not send those tokens' KV).
//
// Batch invariance: the kernels compute each row independently of the rest of
// the batch, and a chunked or recomputed prefill writes the same KV as a
// one-shot prefill, so a greedy sequence produces the same tokens alone, in any
// batch, with or without its prefix cached, and after preemption.
//
// Thread safety: none; one thread (the engine thread) owns the engine, its
// backend and model, except that Reserve and ReleaseReserved may run on
// another thread while ComputeStep runs (see BeginStep).
#ifndef TANDEM_ENGINE_ENGINE_H_
#define TANDEM_ENGINE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/block_pool.h"
#include "engine/generate.h"
#include "engine/kv_events.h"
#include "engine/kv_manager.h"
#include "engine/kv_tiers.h"
#include "engine/sampler.h"
#include "engine/tier_loader.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace tandem::engine {

struct EngineOptions {
  // Tokens per KV block. Default: 16.
  int32_t block_size = 16;
  // Bytes of KV cache; the pool holds as many blocks as fit. Ignored when
  // num_blocks is set. Default: 256 MiB.
  size_t kv_cache_bytes = size_t{256} << 20;
  // Exact number of KV blocks (tests, tight pools). Default: 0 (use bytes).
  int32_t num_blocks = 0;
  // Element type of the KV pool: kF32, kBF16 or kF16 (kernels/kv_layout.h).
  // Every process that exchanges this engine's blocks (transfers, tiers, the
  // shared store) must use the same. Default: kF32.
  DType kv_dtype = DType::kF32;
  // Most sequences in the running batch. Default: 64.
  int32_t max_running = 64;
  // Most token rows in one forward pass (decode rows plus prefill chunks).
  // Default: 512 (DefaultMaxStepTokens picks one per backend).
  int32_t max_step_tokens = 512;
  // Most prompt tokens of one sequence per step (chunked prefill); 0 means
  // max_step_tokens. Default: 0.
  int32_t max_prefill_chunk = 0;
  // Where the engine reports blocks entering and leaving its prefix cache
  // (tier HBM), for the worker to publish as KV events. Borrowed; must
  // outlive the engine. Default: null (no events).
  KvEventLog* kv_events = nullptr;
  // Borrowed KV tiers below the pool (DRAM, SSD); null = off. Blocks the
  // pool evicts are copied into it, and admission continues a prompt's cached
  // prefix into it (KvManager, "Tiers"). Its block_tokens, payload_bytes and
  // model_id must match this engine's blocks; its own on_event reports the
  // tiers' KV events. Must outlive the engine. Default: null.
  KvTiers* tiers = nullptr;
  // With tiers: copy tier hits into the pool on a background thread while
  // other sequences compute (see "Tier loads" above), instead of inside the
  // admitting Step. Default: true.
  bool async_tier_loads = true;
  // Test hook for the tier copies (KvManager::Options::tier_load_hook; the
  // job id is the request id). Default: empty.
  TierLoader::Hook tier_load_hook;
};

// The step size for `backend` when the user gives none: 512 rows on a GPU,
// which needs large steps to fill its batch; 256 on the CPU backends, whose
// cost per row is flat above a few dozen rows, so a shorter step costs no
// throughput and halves the wait of a prompt that arrives mid-step (the
// light tenant's TTFT beside a heavy one, docs/PERFORMANCE.md).
int32_t DefaultMaxStepTokens(const kernels::Backend& backend);

struct EngineRequest {
  int64_t id = 0;  // unique among live requests
  std::vector<int32_t> prompt_tokens;
  // Default: 64. Must be >= 1.
  int32_t max_tokens = 64;
  SamplingParams sampling;
  // Default: true.
  bool stop_at_eos = true;
  // Prefill workers: when the request finishes, keep its blocks (the KV they
  // must send) until ReleaseReserved(id); the final update carries the block
  // table in held_blocks. Default: false.
  bool hold_blocks_on_finish = false;
  // Prefill workers streaming KV (chunked prefill): after a step that
  // completes full prompt blocks without finishing the prompt, a kNone
  // update lists them (computed_blocks), so they can be sent while the next
  // chunk computes. The blocks stay valid only while the update is delivered
  // (the listener runs on the engine thread; a later preemption may reuse
  // them): a listener copies what it sends. The prompt's remaining blocks
  // come with the final update's held_blocks. Default: false.
  bool stream_prompt_blocks = false;
  // Admission order among waiting requests: a higher priority first; within
  // a priority, tenants share admissions fairly by prompt tokens (start-time
  // fair queueing, as the router's FlowQueue: a tenant that has not been
  // admitted lately goes before a backlogged one); then arrival order.
  // Requests that all share one priority and tenant (the defaults) are
  // admitted in arrival order.
  int32_t priority = 0;
  std::string tenant;
};

// Blocks reserved for a prompt whose KV another process will write.
struct KvReservation {
  std::vector<int32_t> block_ids;  // cover the prompt, in position order
  int32_t cached_tokens = 0;       // leading tokens whose KV this pool already holds
};

enum class SequenceEnd { kNone, kLength, kStop, kCancelled, kError };
const char* SequenceEndName(SequenceEnd end);  // "length", "stop", "cancelled", "error"

// What one Step did for one request.
struct SequenceUpdate {
  int64_t id = 0;
  std::vector<int32_t> new_tokens;  // sampled this step (0 or 1)
  SequenceEnd end = SequenceEnd::kNone;
  absl::Status error;  // set when end == kError
  // Prompt tokens whose KV came from the prefix cache at first admission.
  int32_t cached_tokens = 0;
  // hold_blocks_on_finish requests: the held block table, on the final update.
  std::vector<int32_t> held_blocks;
  // stream_prompt_blocks requests: full prompt blocks computed this step,
  // blocks [first_computed_block, first_computed_block + size) of the
  // sequence's table (each reported once, in order).
  std::vector<int32_t> computed_blocks;
  int32_t first_computed_block = 0;
};

struct EngineStats {
  int64_t steps = 0;
  int64_t prompt_tokens_computed = 0;  // forward rows for prompt positions
  int64_t decode_tokens_computed = 0;  // forward rows past the prompt
  int64_t cached_prompt_tokens = 0;    // prompt tokens skipped via prefix cache
  int64_t preemptions = 0;
  // Admission passes that left a request waiting because a running
  // sequence was computing its next prefix block (header comment, step 3).
  int64_t prefix_waits = 0;
  // Asynchronous tier loads: sequences admitted loading, those whose prefix
  // was truncated by a failed copy, forward steps run while at least one
  // sequence was loading, and Steps that waited for a load (nothing else to
  // run). Blocks: KvManager::Stats.
  int64_t tier_load_sequences = 0;
  int64_t tier_load_failures = 0;
  int64_t steps_with_tier_loads = 0;
  int64_t tier_load_waits = 0;
  // Forward passes stopped early for a request that goes before every
  // prompt in them (ComputeStep's `stop`); their rows computed again later.
  int64_t steps_stopped = 0;
};

class Engine {
 public:
  // Borrowed: llama, backend and tokenizer must outlive the engine.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        model::LlamaModel* llama, kernels::Backend* backend,
                                                        const model::Tokenizer* tokenizer);
  ~Engine();

  // Queues a request. InvalidArgument for an empty prompt, a token id outside
  // the vocabulary, prompt + max_tokens beyond the context length, bad
  // sampling parameters, or a prompt that could never fit in the KV pool;
  // AlreadyExists for a live id.
  absl::Status Add(EngineRequest request);

  // Ends a request now, freeing its blocks; its next Step update says
  // kCancelled. NotFound for an unknown id.
  absl::Status Cancel(int64_t id);

  bool HasWork() const {
    return !waiting_.empty() || !running_.empty() || !loading_.empty() || !pending_.empty();
  }

  // How long a Step with nothing else to run waits for a tier load.
  static constexpr absl::Duration kTierLoadWait = absl::Milliseconds(20);

  // Disaggregated decode: reserves blocks for `prompt_tokens` (reusing this
  // pool's cached prefix) so another process can write the rest of their KV.
  // The sequence is neither waiting nor running until Activate. Validation
  // as Add; ResourceExhausted when the pool cannot hold the prompt now.
  absl::StatusOr<KvReservation> Reserve(EngineRequest request);
  // The reserved prompt's KV is in place and `first_token` was sampled
  // elsewhere (consuming one draw of a seeded sampler): the sequence joins the
  // running batch and decodes from there. NotFound for an unknown reservation.
  absl::Status Activate(int64_t id, int32_t first_token);
  // Drops a reservation (or a held request) and frees its blocks. NotFound
  // when there is none.
  absl::Status ReleaseReserved(int64_t id);
  int32_t num_reserved() const { return static_cast<int32_t>(reserved_.size()); }
  // Prompt tokens waiting to be computed (queued requests and unfinished
  // prefills): the queue-wait term of a TTFT estimate.
  int64_t QueuedPrefillTokens() const;

  // The KV pool's memory (backend memory) and layout, for registration with
  // the transfer engine.
  const kernels::KvCacheView& kv_view() const { return kv_view_; }

  // Runs one step (see the header comment). An error Status means the
  // backend failed and the engine cannot go on; per-request failures come
  // back as kError updates.
  absl::StatusOr<std::vector<SequenceUpdate>> Step();

  // Step in three calls, for a runner that answers reservations while the
  // forward pass computes (EngineRunner::Options::reserve_beside_step):
  //   TANDEM_ASSIGN_OR_RETURN(bool compute, engine->BeginStep());  // plan, build the batch
  //   if (compute) TANDEM_RETURN_IF_ERROR(engine->ComputeStep());  // the forward pass
  //   updates = engine->EndStep();                                  // commit, sample, finish
  // BeginStep returns false when there is nothing to compute (EndStep still
  // reports pending updates); errors as Step's. Between BeginStep and
  // EndStep only ComputeStep may run and, on another thread but never two
  // at once, Reserve and ReleaseReserved: they touch no block and no block
  // table of the step's sequences (Reserve takes free blocks, evicting only
  // cached blocks nobody holds; a reservation is in no step; BuildBatch
  // copied the step's tables), nor anything ComputeStep reads (the step's
  // scratch, the model, logits). With tiers, Reserve may copy tier blocks
  // into its new pool blocks through the engine's copier: only for a
  // backend whose copies any thread may make (Backend::host_accessible).
  // ComputeStep touches nothing else of the engine.
  //
  // With `stop`, ComputeStep asks it before each layer of the pass's first
  // half and, once it says true, stops the pass there: the step then computes
  // nothing (EndStep commits and samples nothing of it; its sequences keep
  // their state, admitted ones stay admitted, and are planned again, their
  // partly written KV overwritten), and stats().steps_stopped counts it.
  // Only the first half: a pass stopped later wastes more compute than the
  // wait it saves the request that asked (EngineRunner::Options::
  // preempt_prompt_steps: `stop` reads a flag any thread may set).
  absl::StatusOr<bool> BeginStep();
  absl::Status ComputeStep(const std::function<bool()>& stop = nullptr);
  std::vector<SequenceUpdate> EndStep();

  // The prompt classes (priority, tenant) of the step between BeginStep and
  // EndStep, for a runner that stops a prompt step early when a request
  // that would go before all of them arrives meanwhile (PromptClassOrder's
  // rule: a light tenant's prompt should not wait for a heavy tenant's step
  // in progress). No classes when the step decodes any row (a decode step
  // is never stopped: every sequence in it would wait) or none is planned.
  struct StepPromptClasses {
    struct Class {
      int32_t priority = 0;
      std::string tenant;
    };
    std::vector<Class> classes;
    // Prompt tokens left per tenant when the step was planned (running
    // prompts' remaining chunks and waiting prompts).
    absl::flat_hash_map<std::string, int64_t> tokens_left;
    // The fair-queueing state then (TenantStart's inputs), and the classes
    // waiting with their start tags: the next plan admits a request ahead
    // of the running prompts only if it is also next in fair order.
    double virtual_time = 0;
    double credit = 0;
    absl::flat_hash_map<std::string, double> tenant_finish;
    struct Waiting {
      int32_t priority = 0;
      std::string tenant;
      double start = 0;
    };
    std::vector<Waiting> waiting;
    // Whether a request of `priority` and `tenant` with `prompt_tokens`,
    // arriving now, goes before every class of the step (PromptClassOrder)
    // and is next in fair order among the waiting requests of other
    // tenants (BringNextForward): the next plan would admit it ahead.
    bool GoesBefore(int32_t priority, const std::string& tenant, int64_t prompt_tokens) const;
  };
  StepPromptClasses StepClasses() const;

  const EngineStats& stats() const { return stats_; }
  const KvManager& kv_manager() const { return *kv_; }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // Admitted sequences whose prefix is still being copied from the tiers.
  int32_t num_loading() const { return static_cast<int32_t>(loading_.size()); }

  // Pool and block-table invariants plus the engine's own: every running
  // sequence has a table covering its computed tokens; waiting ones hold none;
  // loading ones are loading in the KvManager.
  absl::Status CheckInvariants() const;

 private:
  struct Sequence {
    EngineRequest request;
    std::vector<int32_t> tokens;  // prompt then generated
    int32_t num_generated = 0;
    int32_t num_computed = 0;     // tokens whose KV is in this sequence's blocks
    int32_t cached_tokens = -1;   // at first admission; -1 before
    int32_t loading_cached = 0;   // while loading: the prefix it will have if every copy succeeds
    int32_t streamed_blocks = 0;  // stream_prompt_blocks: leading blocks reported so far
    std::unique_ptr<Sampler> sampler;
  };

  Engine(const EngineOptions& options, model::LlamaModel* llama, kernels::Backend* backend,
         const model::Tokenizer* tokenizer)
      : options_(options), llama_(llama), backend_(backend), tokenizer_(tokenizer) {}

  // Frees `id`'s blocks and puts it back at the head of the queue.
  void Preempt(int64_t id);
  // Admits `seq` if the pool can hold its first chunk; returns rows scheduled.
  bool TryAdmit(Sequence& seq, int32_t budget, int32_t* rows);
  void Finish(int64_t id, SequenceEnd end, absl::Status error, std::vector<SequenceUpdate>* out);
  // Moves sequences whose tier loads ended from loading_ to running_.
  void CollectTierLoads();

  // One sequence's rows in a step's forward pass.
  struct Planned {
    int64_t id;
    int32_t rows;
  };
  // What a Step computes, built by its planning phases.
  struct StepPlan {
    std::vector<Planned> rows;  // in batch order
    int32_t budget = 0;         // rows left of max_step_tokens
    int32_t chunk_limit = 0;    // most rows of one sequence
    bool Contains(int64_t id) const;
  };
  // MakeRoom's outcome: room made, the sequence itself preempted, or no
  // victim left (everything else is in this step).
  enum class Room { kMade, kPreemptedSelf, kNone };

  // Step's phases, in order (steps 1-3 of the header comment, then the
  // forward pass and its bookkeeping).
  // Collects finished tier loads, then PlanDecodes, AdmitWaiting (the
  // prompts that go before running ones' chunks), PlanPrefillChunks and
  // AdmitWaiting (the rest); when that plans nothing, reports nothing
  // (`has_updates` false) and loads are in flight, waits for one
  // (kTierLoadWait) and plans once more.
  absl::StatusOr<StepPlan> Plan(bool has_updates);
  // Tokens of `seq` whose KV is not computed yet (1: it decodes).
  static int32_t Pending(const Sequence& seq);
  // Makes room for `n` more rows of `id` (MakeRoom, keeping `*index` on
  // it) and, when made, adds them to `plan`.
  absl::StatusOr<Room> PlanRows(int64_t id, int32_t n, StepPlan& plan, size_t* index);
  // Step 1: a decode row for each running sequence with one pending token.
  absl::Status PlanDecodes(StepPlan& plan);
  // Which prompt's rows go first when several priorities or tenants have
  // prompt tokens to compute (running prompts' remaining chunks and waiting
  // prompts): a higher priority, then the tenant with fewer prompt tokens
  // left to compute in this engine. A light tenant's prompt so goes before
  // the rest of a heavy tenant's running prompt and backlog (it waits for
  // the step in progress, not for the heavy prompt to finish); two tenants
  // alike take turns. Within a tenant, admission (then arrival) order.
  struct PromptClassOrder {
    absl::flat_hash_map<std::string, int64_t> tokens_left;  // per tenant
    // Whether `a`'s prompt rows go before `b`'s (false within one class).
    bool Before(const EngineRequest& a, const EngineRequest& b) const;
  };
  // The order for this step; nullopt when every prompt to compute shares
  // one priority and tenant (then admission order, and nothing overtakes).
  std::optional<PromptClassOrder> OrderPromptClasses() const;
  // Calls `fn(seq)` for every prompt to compute: running sequences past
  // their first token's row, then waiting ones.
  void ForEachPrompt(const std::function<void(const Sequence&)>& fn) const;
  // Prompt tokens left to compute per tenant (PromptClassOrder::tokens_left).
  absl::flat_hash_map<std::string, int64_t> PromptTokensLeft() const;
  // Step 2: the next chunk of each running prompt, in `order` (null:
  // admission order).
  absl::Status PlanPrefillChunks(StepPlan& plan, const PromptClassOrder* order);
  // Whether `request` goes before every running prompt not yet in `plan`
  // (false when there is none).
  bool GoesBeforeRunningPrompts(const EngineRequest& request, const PromptClassOrder& order,
                                const StepPlan& plan) const;
  // Preempts the most recently admitted running sequences not in `plan`
  // (possibly `id`) until the pool can grow `id` to `total_tokens`; keeps
  // `*index` (id's place in running_) on it.
  Room MakeRoom(int64_t id, int32_t total_tokens, const StepPlan& plan, size_t* index);
  // Step 3: admits waiting requests in arrival order (or by priority and
  // tenant, see EngineRequest). With `ahead_of_running`, only while the
  // next one goes before every running prompt (GoesBeforeRunningPrompts).
  absl::Status AdmitWaiting(StepPlan& plan, const PromptClassOrder* ahead_of_running);
  // Moves the waiting request to admit next among waiting_[from..] to
  // `from` (the others keep their order): the highest priority, then the
  // smallest fair-queueing start tag (TenantStart), then the earliest.
  void BringNextForward(size_t from);
  // Start-time fair queueing across tenants (Goyal, Vin and Cheng, 1996),
  // with a bounded credit for tenants below their share: a request of
  // tenant t would start at max(V - C, F_t), F_t being t's last admitted
  // request's finish tag (start + prompt tokens), V the largest start tag
  // admitted and C = TenantCredit(). Plain SFQ (C = 0) starts a tenant
  // returning from idle at V, level with a backlogged tenant's next
  // request, so a burst of its prompts (a light tenant's Poisson arrivals
  // bunch) alternates with the backlogged tenant's and its third prompt
  // waits five steps instead of three. With the credit the returning
  // tenant's next C tokens go first; a backlogged tenant loses at most C
  // tokens of turns per return, and two backlogged tenants alternate as
  // before.
  double TenantStart(const std::string& tenant) const;
  // C: kIdleTenantCreditSteps steps of max_step_tokens.
  double TenantCredit() const;
  static constexpr int32_t kIdleTenantCreditSteps = 4;
  // Charges an admission of `tokens` to `tenant`; forgets tenants whose
  // finish tag V - C has passed (they would start at V - C anyway).
  void ChargeTenant(const std::string& tenant, int64_t tokens);
  // Whether a running sequence is computing the full block of `seq` that
  // starts at `cached_tokens` (its first uncached one) and is reusable, with
  // the same tokens before it: `seq` will find it cached once committed.
  bool NextBlockBeingComputed(const Sequence& seq, int32_t cached_tokens) const;
  // Fills the step_* scratch with the plan's rows; returns the ids whose
  // last row yields logits (their prompt is done), in logit-row order.
  std::vector<int64_t> BuildBatch(const StepPlan& plan);
  // After the forward pass: counts the rows and commits full blocks.
  // Reports the prompt blocks this step completed, for stream_prompt_blocks
  // sequences still inside their prompt (see EngineRequest).
  void ReportComputedBlocks(const StepPlan& plan, std::vector<SequenceUpdate>* out);
  void CommitComputed(const StepPlan& plan);
  // Samples the next token of each of `sampled_ids` and finishes those at a
  // stop token or max_tokens.
  void SampleAndFinish(absl::Span<const int64_t> sampled_ids, std::vector<SequenceUpdate>* out);

  const EngineOptions options_;
  model::LlamaModel* const llama_;
  kernels::Backend* const backend_;
  const model::Tokenizer* const tokenizer_;

  void* kv_memory_ = nullptr;
  kernels::KvCacheView kv_view_;
  // The engine thread's copier for blocks evicted to the tiers (with tiers).
  std::unique_ptr<PoolCopier> evict_copier_;
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<KvManager> kv_;

  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> sequences_;
  std::deque<int64_t> waiting_;   // FCFS; preempted sequences go to the front
  std::vector<int64_t> running_;  // in admission order
  std::vector<int64_t> loading_;  // admitted, prefix being copied from the tiers
  // Reserved for a remote prefill, or finished but held for sending.
  std::vector<int64_t> reserved_;
  std::vector<SequenceUpdate> pending_;  // cancellations to report next Step
  // Fair admission across tenants (see TenantStart).
  double virtual_time_ = 0;
  absl::flat_hash_map<std::string, double> tenant_finish_;
  EngineStats stats_;

  // The step between BeginStep and EndStep: its plan (unset when nothing
  // is computed, or the forward pass failed), the ids sampled from its
  // logits, and the updates it reports.
  std::optional<StepPlan> step_plan_;
  std::vector<int64_t> step_sampled_ids_;
  std::vector<SequenceUpdate> step_out_;
  // Per-step scratch; step_seqs_' block tables point into step_tables_.
  std::vector<int32_t> step_tokens_, step_positions_, step_slots_, step_logit_rows_, step_tables_;
  std::vector<kernels::AttentionSequence> step_seqs_;
  std::vector<float> logits_;
};

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_ENGINE_H_
