#include "engine/engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tandem::engine {
namespace {

// PromptClassOrder's rule: whether prompts of class (`priority`, `tenant`),
// its tenant's tally raised by `extra_tokens`, go before those of class
// (`other_priority`, `other_tenant`): a higher priority, then the tenant
// with fewer prompt tokens left.
bool ClassGoesBefore(const absl::flat_hash_map<std::string, int64_t>& tokens_left, int32_t priority,
                     const std::string& tenant, int64_t extra_tokens, int32_t other_priority,
                     const std::string& other_tenant) {
  if (priority != other_priority) return priority > other_priority;
  if (tenant == other_tenant) return false;
  auto left = [&](const std::string& t) {
    auto it = tokens_left.find(t);
    return it == tokens_left.end() ? int64_t{0} : it->second;
  };
  return left(tenant) + extra_tokens < left(other_tenant);
}

// TenantStart's rule on the fair-queueing state it is given.
double StartTag(const absl::flat_hash_map<std::string, double>& tenant_finish, double virtual_time,
                double credit, const std::string& tenant) {
  const double floor = virtual_time - credit;
  auto it = tenant_finish.find(tenant);
  return it == tenant_finish.end() ? floor : std::max(floor, it->second);
}

}  // namespace

int32_t DefaultMaxStepTokens(const kernels::Backend& backend) { return backend.name() == "cuda" ? 512 : 256; }

const char* SequenceEndName(SequenceEnd end) {
  switch (end) {
    case SequenceEnd::kNone:
      return "none";
    case SequenceEnd::kLength:
      return "length";
    case SequenceEnd::kStop:
      return "stop";
    case SequenceEnd::kCancelled:
      return "cancelled";
    case SequenceEnd::kError:
      return "error";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options, model::LlamaModel* llama,
                                                       kernels::Backend* backend,
                                                       const model::Tokenizer* tokenizer) {
  if (options.block_size < 1 || options.max_running < 1 || options.max_step_tokens < 1 ||
      options.max_prefill_chunk < 0 || options.num_blocks < 0) {
    return absl::InvalidArgumentError(
        "engine: block_size, max_running and max_step_tokens must be >= 1; "
        "max_prefill_chunk and num_blocks >= 0");
  }
  if (!kernels::IsKvDType(options.kv_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("engine: KV dtype %s is not f32, bf16 or f16", DTypeName(options.kv_dtype)));
  }
  std::unique_ptr<Engine> e(new Engine(options, llama, backend, tokenizer));
  const kernels::KvLayout layout = llama->config().KvLayoutFor(options.block_size, options.kv_dtype);
  const int32_t num_blocks = options.num_blocks > 0
                                 ? options.num_blocks
                                 : BlockPool::BlocksForBudget(options.kv_cache_bytes, layout);
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("engine: kv_cache_bytes %d holds no block of %d bytes",
                                                      options.kv_cache_bytes, layout.BlockBytes()));
  }
  TANDEM_ASSIGN_OR_RETURN(e->kv_memory_, backend->Allocate(num_blocks * layout.BlockBytes()));
  e->kv_view_ = kernels::KvCacheView{e->kv_memory_, layout, num_blocks};
  BlockPool::Options pool_options;
  pool_options.num_blocks = num_blocks;
  pool_options.block_size = options.block_size;
  Engine* raw = e.get();
  pool_options.block_bytes = [raw](int32_t block) {
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw->kv_view_.Block(block)),
                                     raw->kv_view_.layout.BlockBytes());
  };
  if (options.kv_events != nullptr) {
    KvEventLog* events = options.kv_events;
    pool_options.on_commit = [events](BlockHash hash) { events->Stored(hash, KvTier::kHbm); };
    pool_options.on_evict = [events](const EvictedBlock& b) { events->Removed(b.hash, KvTier::kHbm); };
  }
  KvManager::Options kv_options{.model_id = llama->config().model_id, .block_size = options.block_size};
  if (options.tiers != nullptr) {
    if (options.tiers->payload_bytes() != layout.BlockBytes()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("engine: the KV tiers hold %d-byte blocks, this model's are %d bytes",
                          options.tiers->payload_bytes(), layout.BlockBytes()));
    }
    // HBM eviction offers the block to the tiers (after the KV-event hook, if
    // any): read in place from a host pool, else copied device -> pinned host
    // by the engine thread's evict copier (the evicted block is not in use:
    // Allocate is about to hand it out). A failed copy or Offload (SSD write
    // queue full past put_timeout) drops the block: the tiers are a cache.
    TANDEM_ASSIGN_OR_RETURN(e->evict_copier_, PoolCopier::Create(backend, layout.BlockBytes()));
    KvTiers* tiers = options.tiers;
    PoolCopier* copier = e->evict_copier_.get();
    pool_options.on_evict = [tiers, copier,
                             hbm_events = std::move(pool_options.on_evict)](const EvictedBlock& b) {
      if (hbm_events) hbm_events(b);
      if (b.bytes.empty()) return;
      absl::StatusOr<absl::Span<const uint8_t>> host = copier->Read(b.bytes);
      if (host.ok()) (void)tiers->Offload(b.hash, b.tokens, *host);
    };
    kv_options.tiers = tiers;
    // Tier hits are copied into pool blocks (KvManager's PoolCopiers: in
    // place, or host -> device).
    kv_options.backend = backend;
    kv_options.block_memory = [raw](int32_t block) {
      return absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(raw->kv_view_.Block(block)),
                                 raw->kv_view_.layout.BlockBytes());
    };
    // The loader thread copies on its own copy stream, overlapping the
    // engine's compute.
    kv_options.async_tier_loads = options.async_tier_loads;
    kv_options.tier_load_hook = options.tier_load_hook;
  }
  TANDEM_ASSIGN_OR_RETURN(e->pool_, BlockPool::Create(pool_options));
  TANDEM_ASSIGN_OR_RETURN(e->kv_, KvManager::Create(kv_options, e->pool_.get()));
  e->logits_.resize(static_cast<size_t>(llama->config().vocab_size));
  return e;
}

Engine::~Engine() {
  kv_.reset();  // joins the tier loader, then releases every sequence's blocks before the pool goes
  pool_.reset();
  if (kv_memory_ != nullptr) backend_->Free(kv_memory_);
}

absl::Status Engine::Add(EngineRequest request) {
  const model::ModelConfig& config = llama_->config();
  if (request.prompt_tokens.empty()) return absl::InvalidArgumentError("prompt_tokens is empty");
  for (int32_t t : request.prompt_tokens) {
    if (t < 0 || t >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("prompt_tokens: id %d outside the vocabulary of %d", t, config.vocab_size));
    }
  }
  if (request.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("max_tokens must be >= 1, got %d", request.max_tokens));
  }
  TANDEM_RETURN_IF_ERROR(request.sampling.Validate());
  const int64_t total = static_cast<int64_t>(request.prompt_tokens.size()) + request.max_tokens - 1;
  if (total > config.context_length) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prompt of %d tokens plus max_tokens %d exceeds the model's context length %d",
                        request.prompt_tokens.size(), request.max_tokens, config.context_length));
  }
  const int64_t blocks = (total + options_.block_size - 1) / options_.block_size;
  if (blocks > kv_view_.num_blocks) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request needs %d KV blocks but the pool has %d", blocks, kv_view_.num_blocks));
  }
  if (sequences_.contains(request.id)) {
    return absl::AlreadyExistsError(absl::StrFormat("request id %d is already live", request.id));
  }
  auto seq = std::make_unique<Sequence>();
  seq->tokens = request.prompt_tokens;
  seq->sampler = std::make_unique<Sampler>(request.sampling);
  seq->request = std::move(request);
  const int64_t id = seq->request.id;
  sequences_.emplace(id, std::move(seq));
  waiting_.push_back(id);
  return absl::OkStatus();
}

absl::Status Engine::Cancel(int64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return absl::NotFoundError(absl::StrFormat("no live request %d", id));
  SequenceUpdate u;
  u.id = id;
  u.end = SequenceEnd::kCancelled;
  u.cached_tokens = std::max(it->second->cached_tokens, 0);
  kv_->FreeSequence(id);  // no-op when waiting
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  loading_.erase(std::remove(loading_.begin(), loading_.end(), id), loading_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
  reserved_.erase(std::remove(reserved_.begin(), reserved_.end(), id), reserved_.end());
  sequences_.erase(it);
  pending_.push_back(std::move(u));
  return absl::OkStatus();
}

void Engine::Preempt(int64_t id) {
  kv_->FreeSequence(id);
  sequences_.at(id)->num_computed = 0;
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  waiting_.push_front(id);
  ++stats_.preemptions;
}

void Engine::Finish(int64_t id, SequenceEnd end, absl::Status error, std::vector<SequenceUpdate>* out) {
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  const bool hold = sequences_.at(id)->request.hold_blocks_on_finish;
  for (SequenceUpdate& u : *out) {
    if (u.id == id && u.end == SequenceEnd::kNone) {
      u.end = end;
      u.error = std::move(error);
      if (hold) {
        const absl::Span<const int32_t> table = kv_->BlockTable(id);
        u.held_blocks.assign(table.begin(), table.end());
      }
      break;
    }
  }
  if (hold) {
    reserved_.push_back(id);  // blocks stay until ReleaseReserved
    return;
  }
  kv_->FreeSequence(id);
  sequences_.erase(id);
}

absl::StatusOr<KvReservation> Engine::Reserve(EngineRequest request) {
  const int64_t id = request.id;
  TANDEM_RETURN_IF_ERROR(Add(std::move(request)));
  // Add queued it; take it back out of the queue and give it blocks now.
  waiting_.pop_back();
  Sequence& seq = *sequences_.at(id);
  const int32_t prompt_len = static_cast<int32_t>(seq.tokens.size());
  if (kv_->BlocksToAdmit(seq.tokens, prompt_len) > pool_->num_free_blocks()) {
    sequences_.erase(id);
    return absl::ResourceExhaustedError(
        absl::StrFormat("KV pool full: %d free blocks, prompt of %d tokens needs more",
                        pool_->num_free_blocks(), prompt_len));
  }
  // Synchronous copies: cached_tokens is a promise to the prefill worker.
  absl::StatusOr<int32_t> cached = kv_->StartSequence(id, seq.tokens, /*wait_for_loads=*/true);
  absl::Status grown = cached.ok() ? kv_->EnsureCapacity(id, prompt_len) : cached.status();
  if (!grown.ok()) {
    kv_->FreeSequence(id);
    sequences_.erase(id);
    return grown;
  }
  seq.cached_tokens = *cached;
  stats_.cached_prompt_tokens += *cached;
  reserved_.push_back(id);
  KvReservation r;
  const absl::Span<const int32_t> table = kv_->BlockTable(id);
  r.block_ids.assign(table.begin(), table.end());
  r.cached_tokens = *cached;
  return r;
}

absl::Status Engine::Activate(int64_t id, int32_t first_token) {
  auto it = std::find(reserved_.begin(), reserved_.end(), id);
  if (it == reserved_.end() || !kv_->HasSequence(id)) {
    return absl::NotFoundError(absl::StrFormat("no reservation %d", id));
  }
  Sequence& seq = *sequences_.at(id);
  if (first_token < 0 || first_token >= llama_->config().vocab_size) {
    return absl::InvalidArgumentError(absl::StrFormat("first_token %d outside the vocabulary", first_token));
  }
  reserved_.erase(it);
  seq.num_computed = static_cast<int32_t>(seq.tokens.size());
  kv_->CommitFullBlocks(id, seq.tokens, seq.num_computed);
  seq.sampler->Advance(1);  // the prefill worker drew the first token
  seq.tokens.push_back(first_token);
  seq.num_generated = 1;
  running_.push_back(id);
  if (seq.num_generated >= seq.request.max_tokens) {
    SequenceUpdate u;
    u.id = id;
    u.cached_tokens = seq.cached_tokens;
    pending_.push_back(u);
    Finish(id, SequenceEnd::kLength, absl::OkStatus(), &pending_);
  }
  return absl::OkStatus();
}

absl::Status Engine::ReleaseReserved(int64_t id) {
  auto it = std::find(reserved_.begin(), reserved_.end(), id);
  if (it == reserved_.end()) return absl::NotFoundError(absl::StrFormat("no reservation %d", id));
  reserved_.erase(it);
  kv_->FreeSequence(id);
  sequences_.erase(id);
  return absl::OkStatus();
}

void Engine::CollectTierLoads() {
  for (const KvManager::LoadDone& done : kv_->PollLoads()) {
    Sequence& seq = *sequences_.at(done.seq_id);
    loading_.erase(std::remove(loading_.begin(), loading_.end(), done.seq_id), loading_.end());
    if (done.cached_tokens < seq.loading_cached) ++stats_.tier_load_failures;
    seq.num_computed = done.cached_tokens;
    seq.loading_cached = 0;
    if (seq.cached_tokens < 0) {
      seq.cached_tokens = done.cached_tokens;
      stats_.cached_prompt_tokens += done.cached_tokens;
    }
    running_.push_back(done.seq_id);
  }
}

bool Engine::StepPlan::Contains(int64_t id) const {
  return std::any_of(rows.begin(), rows.end(), [&](const Planned& p) { return p.id == id; });
}

absl::StatusOr<std::vector<SequenceUpdate>> Engine::Step() {
  TANDEM_ASSIGN_OR_RETURN(const bool compute, BeginStep());
  if (compute) TANDEM_RETURN_IF_ERROR(ComputeStep());
  return EndStep();
}

absl::StatusOr<bool> Engine::BeginStep() {
  step_out_ = std::move(pending_);
  pending_.clear();
  step_plan_.reset();
  step_sampled_ids_.clear();
  TANDEM_ASSIGN_OR_RETURN(StepPlan plan, Plan(/*has_updates=*/!step_out_.empty()));
  if (plan.rows.empty()) return false;
  step_sampled_ids_ = BuildBatch(plan);
  step_plan_ = std::move(plan);
  return true;
}

absl::Status Engine::ComputeStep(const std::function<bool()>& stop) {
  const int32_t vocab = llama_->config().vocab_size;
  logits_.resize(static_cast<size_t>(vocab) * std::max<size_t>(1, step_logit_rows_.size()));
  model::ForwardBatch batch{step_tokens_, step_positions_, step_slots_, step_seqs_, step_logit_rows_};
  bool stopped = false;
  if (stop) {
    const int32_t layers = llama_->config().num_layers;
    batch.stop_before_layer = [&stop, layers, &stopped](int32_t layer) {
      stopped = 2 * layer <= layers && stop();
      return stopped;
    };
  }
  absl::Status forward = llama_->Forward(batch, kv_view_, logits_.data());
  if (stopped && absl::IsAborted(forward)) {
    // Nothing of the step counts: its rows' KV is past their sequences'
    // num_computed, so nobody reads it before a later pass overwrites it.
    step_plan_.reset();
    ++stats_.steps_stopped;
    return absl::OkStatus();
  }
  // A device fault anywhere in the step (the backend's sticky error) fails
  // the step, and with it every request in it, before a token is sampled
  // from logits it produced.
  if (absl::Status device = backend_->status(); forward.ok() && !device.ok()) {
    forward = absl::Status(device.code(),
                           absl::StrCat("backend ", std::string(backend_->name()), ": ", device.message()));
  }
  if (!forward.ok()) step_plan_.reset();  // EndStep reports nothing of a failed pass
  return forward;
}

std::vector<SequenceUpdate> Engine::EndStep() {
  std::vector<SequenceUpdate> out = std::move(step_out_);
  step_out_.clear();
  if (!step_plan_.has_value()) return out;
  const StepPlan plan = *std::move(step_plan_);
  step_plan_.reset();
  ++stats_.steps;
  if (!loading_.empty()) ++stats_.steps_with_tier_loads;
  CommitComputed(plan);
  ReportComputedBlocks(plan, &out);
  SampleAndFinish(step_sampled_ids_, &out);
  return out;
}

absl::StatusOr<Engine::StepPlan> Engine::Plan(bool has_updates) {
  StepPlan plan;
  plan.budget = options_.max_step_tokens;
  plan.chunk_limit = options_.max_prefill_chunk > 0 ? options_.max_prefill_chunk : options_.max_step_tokens;
  // At most twice: when the first plan is empty while tier loads are
  // outstanding, wait for one to end and plan again.
  for (int attempt = 0;; ++attempt) {
    CollectTierLoads();
    TANDEM_RETURN_IF_ERROR(PlanDecodes(plan));
    // With several priorities or tenants, a waiting prompt that goes before
    // the running prompts' next chunks is admitted first (see
    // PromptClassOrder); with one, none does and this is a no-op.
    const std::optional<PromptClassOrder> order = OrderPromptClasses();
    if (order.has_value()) TANDEM_RETURN_IF_ERROR(AdmitWaiting(plan, &*order));
    TANDEM_RETURN_IF_ERROR(PlanPrefillChunks(plan, order.has_value() ? &*order : nullptr));
    TANDEM_RETURN_IF_ERROR(AdmitWaiting(plan, nullptr));
    if (!plan.rows.empty() || loading_.empty() || attempt > 0 || has_updates) break;
    // Nothing to run but loads in flight: wait for one (a condition with a
    // deadline, not a sleep), then plan again with what arrived.
    ++stats_.tier_load_waits;
    if (!kv_->WaitForLoads(absl::Now() + kTierLoadWait)) break;
  }
  return plan;
}

int32_t Engine::Pending(const Sequence& seq) {
  return static_cast<int32_t>(seq.tokens.size()) - seq.num_computed;
}

absl::StatusOr<Engine::Room> Engine::PlanRows(int64_t id, int32_t n, StepPlan& plan, size_t* index) {
  const int32_t total = sequences_.at(id)->num_computed + n;
  const Room room = MakeRoom(id, total, plan, index);
  if (room != Room::kMade) return room;
  if (absl::Status s = kv_->EnsureCapacity(id, total); !s.ok()) {
    return s;  // cannot happen after MakeRoom: a broken invariant
  }
  plan.rows.push_back({id, n});
  plan.budget -= n;
  return room;
}

absl::Status Engine::PlanDecodes(StepPlan& plan) {
  for (size_t i = 0; i < running_.size() && plan.budget > 0;) {
    const int64_t id = running_[i];
    if (Pending(*sequences_.at(id)) != 1 || plan.Contains(id)) {
      ++i;
      continue;
    }
    TANDEM_ASSIGN_OR_RETURN(const Room room, PlanRows(id, 1, plan, &i));
    if (room != Room::kPreemptedSelf) ++i;  // else running_[i] is now the next sequence
  }
  return absl::OkStatus();
}

void Engine::ForEachPrompt(const std::function<void(const Sequence&)>& fn) const {
  for (int64_t id : running_) {
    const Sequence& seq = *sequences_.at(id);
    if (Pending(seq) > 1) fn(seq);
  }
  for (int64_t id : waiting_) fn(*sequences_.at(id));
}

absl::flat_hash_map<std::string, int64_t> Engine::PromptTokensLeft() const {
  absl::flat_hash_map<std::string, int64_t> left;
  ForEachPrompt([&](const Sequence& seq) { left[seq.request.tenant] += Pending(seq); });
  return left;
}

std::optional<Engine::PromptClassOrder> Engine::OrderPromptClasses() const {
  // Tallied only when the prompts to compute are of several classes (the
  // common single-tenant step builds no map).
  const EngineRequest* first = nullptr;
  bool several = false;
  ForEachPrompt([&](const Sequence& seq) {
    if (first == nullptr) first = &seq.request;
    several = several || seq.request.priority != first->priority || seq.request.tenant != first->tenant;
  });
  if (!several) return std::nullopt;
  return PromptClassOrder{.tokens_left = PromptTokensLeft()};
}

Engine::StepPromptClasses Engine::StepClasses() const {
  StepPromptClasses out;
  if (!step_plan_.has_value()) return out;
  for (const Planned& p : step_plan_->rows) {
    const EngineRequest& r = sequences_.at(p.id)->request;
    if (Pending(*sequences_.at(p.id)) == 1) return {};  // a decode row: never stopped
    const bool known = std::any_of(out.classes.begin(), out.classes.end(), [&](const auto& c) {
      return c.priority == r.priority && c.tenant == r.tenant;
    });
    if (!known) out.classes.push_back({r.priority, r.tenant});
  }
  out.tokens_left = PromptTokensLeft();
  out.virtual_time = virtual_time_;
  out.credit = TenantCredit();
  out.tenant_finish = tenant_finish_;
  for (int64_t id : waiting_) {
    const EngineRequest& r = sequences_.at(id)->request;
    const bool known = std::any_of(out.waiting.begin(), out.waiting.end(), [&](const auto& w) {
      return w.priority == r.priority && w.tenant == r.tenant;
    });
    if (!known) out.waiting.push_back({r.priority, r.tenant, TenantStart(r.tenant)});
  }
  return out;
}

bool Engine::StepPromptClasses::GoesBefore(int32_t priority, const std::string& tenant,
                                           int64_t prompt_tokens) const {
  // PromptClassOrder::Before against each class, the arrival's prompt
  // counted in its tenant's tally as it will be once it waits.
  if (classes.empty()) return false;
  for (const Class& c : classes) {
    if (!ClassGoesBefore(tokens_left, priority, tenant, prompt_tokens, c.priority, c.tenant)) return false;
  }
  // Next in fair order: no other tenant's waiting request of a higher
  // priority, or of its priority with a start tag at or below its own (a
  // tie goes to the earlier arrival).
  const double start = StartTag(tenant_finish, virtual_time, credit, tenant);
  for (const Waiting& w : waiting) {
    if (w.tenant == tenant) continue;  // its own tenant's go first, and go before the step too
    if (w.priority > priority || (w.priority == priority && w.start <= start)) return false;
  }
  return true;
}

bool Engine::PromptClassOrder::Before(const EngineRequest& a, const EngineRequest& b) const {
  return ClassGoesBefore(tokens_left, a.priority, a.tenant, 0, b.priority, b.tenant);
}

absl::Status Engine::PlanPrefillChunks(StepPlan& plan, const PromptClassOrder* order) {
  std::vector<int64_t> prefilling;
  for (int64_t id : running_) {
    if (Pending(*sequences_.at(id)) != 1 && !plan.Contains(id)) prefilling.push_back(id);
  }
  if (order != nullptr) {
    // Stable: within a class, admission order (the running_ order).
    std::stable_sort(prefilling.begin(), prefilling.end(), [&](int64_t a, int64_t b) {
      return order->Before(sequences_.at(a)->request, sequences_.at(b)->request);
    });
  }
  for (int64_t id : prefilling) {
    if (plan.budget <= 0) break;
    // An earlier chunk's MakeRoom may have preempted this one.
    auto it = std::find(running_.begin(), running_.end(), id);
    if (it == running_.end()) continue;
    size_t i = static_cast<size_t>(it - running_.begin());
    const int32_t n = std::min({Pending(*sequences_.at(id)), plan.budget, plan.chunk_limit});
    TANDEM_RETURN_IF_ERROR(PlanRows(id, n, plan, &i).status());
  }
  return absl::OkStatus();
}

bool Engine::GoesBeforeRunningPrompts(const EngineRequest& request, const PromptClassOrder& order,
                                      const StepPlan& plan) const {
  bool any = false;
  for (int64_t id : running_) {
    const Sequence& seq = *sequences_.at(id);
    if (Pending(seq) == 1 || plan.Contains(id)) continue;
    if (!order.Before(request, seq.request)) return false;
    any = true;
  }
  return any;
}

Engine::Room Engine::MakeRoom(int64_t id, int32_t total_tokens, const StepPlan& plan, size_t* index) {
  while (kv_->BlocksNeeded(id, total_tokens) > pool_->num_free_blocks()) {
    // Free room by preempting the most recently admitted sequence not yet
    // in this step (possibly this one).
    int64_t victim = -1;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      if (!plan.Contains(*it)) {
        victim = *it;
        break;
      }
    }
    if (victim == -1) return Room::kNone;  // everything else is in this step; wait for it
    const size_t victim_index = std::find(running_.begin(), running_.end(), victim) - running_.begin();
    Preempt(victim);
    if (victim == id) return Room::kPreemptedSelf;
    if (victim_index < *index) --*index;  // keep the index on this sequence
  }
  return Room::kMade;
}

bool Engine::NextBlockBeingComputed(const Sequence& seq, int32_t cached_tokens) const {
  const int32_t bs = options_.block_size;
  const int32_t end = cached_tokens + bs;
  // Only blocks a prefix match can reuse: full, and not holding the last
  // token (KvManager always leaves that one to compute).
  if (end > (static_cast<int32_t>(seq.tokens.size()) - 1) / bs * bs) return false;
  for (int64_t id : running_) {
    const Sequence& r = *sequences_.at(id);
    // It commits [cached_tokens, end) when it computes that far; past it,
    // the block is committed already (and matched unless evicted).
    if (r.num_computed >= end || static_cast<int32_t>(r.tokens.size()) < end) continue;
    if (std::equal(seq.tokens.begin(), seq.tokens.begin() + end, r.tokens.begin())) return true;
  }
  return false;
}

double Engine::TenantCredit() const {
  return static_cast<double>(kIdleTenantCreditSteps) * options_.max_step_tokens;
}

double Engine::TenantStart(const std::string& tenant) const {
  return StartTag(tenant_finish_, virtual_time_, TenantCredit(), tenant);
}

void Engine::ChargeTenant(const std::string& tenant, int64_t tokens) {
  const double start = TenantStart(tenant);
  virtual_time_ = std::max(virtual_time_, start);
  tenant_finish_[tenant] = start + static_cast<double>(tokens);
  // Bounded by the tenants with a finish tag ahead of V less the credit:
  // they were admitted within the last few admissions' worth of tokens.
  const double floor = virtual_time_ - TenantCredit();
  if (tenant_finish_.size() > 64)
    absl::erase_if(tenant_finish_, [&](const auto& t) { return t.second <= floor; });
}

void Engine::BringNextForward(size_t from) {
  size_t best = from;
  const Sequence* best_seq = sequences_.at(waiting_[from]).get();
  double best_start = TenantStart(best_seq->request.tenant);
  for (size_t j = from + 1; j < waiting_.size(); ++j) {
    const Sequence* seq = sequences_.at(waiting_[j]).get();
    if (seq->request.priority < best_seq->request.priority) continue;
    const double start = TenantStart(seq->request.tenant);
    if (seq->request.priority > best_seq->request.priority || start < best_start) {
      best = j;
      best_seq = seq;
      best_start = start;
    }
  }
  // A rotation, not a swap: the requests it passes keep their order.
  std::rotate(waiting_.begin() + static_cast<ptrdiff_t>(from),
              waiting_.begin() + static_cast<ptrdiff_t>(best),
              waiting_.begin() + static_cast<ptrdiff_t>(best) + 1);
}

absl::Status Engine::AdmitWaiting(StepPlan& plan, const PromptClassOrder* ahead_of_running) {
  // In arrival order, while the running count (loading included), the
  // budget and the pool allow; a request waiting for a block another
  // sequence is computing stays in its place and the next one is tried.
  // With several priorities or tenants waiting, each next request is chosen
  // by BringNextForward instead (a scan per admission; only then).
  const bool ordered = std::any_of(waiting_.begin(), waiting_.end(), [&](int64_t id) {
    const EngineRequest& r = sequences_.at(id)->request;
    const EngineRequest& first = sequences_.at(waiting_.front())->request;
    return r.priority != first.priority || r.tenant != first.tenant;
  });
  size_t i = 0;
  while (i < waiting_.size() && plan.budget > 0 &&
         static_cast<int32_t>(running_.size() + loading_.size()) < options_.max_running) {
    if (ordered) BringNextForward(i);
    const int64_t id = waiting_[i];
    Sequence& seq = *sequences_.at(id);
    // Ahead of the running prompts only while the next one in fair order
    // goes before them: a tenant past its fair share (and credit) does not
    // overtake a backlogged tenant's next request by having fewer tokens
    // left (the running prompts' tokens were charged at their admission).
    if (ahead_of_running != nullptr && !GoesBeforeRunningPrompts(seq.request, *ahead_of_running, plan)) break;
    const KvManager::PrefixMatch match = kv_->MatchPrefix(seq.tokens);
    if (NextBlockBeingComputed(seq, match.cached_tokens)) {
      ++stats_.prefix_waits;
      ++i;
      continue;
    }
    const int32_t pending = static_cast<int32_t>(seq.tokens.size()) - match.cached_tokens;
    const int32_t n = std::min({pending, plan.budget, plan.chunk_limit});
    if (kv_->BlocksToAdmit(seq.tokens, match.cached_tokens + n) > pool_->num_free_blocks()) {
      break;  // FCFS: nobody overtakes a request the pool cannot hold yet
    }
    TANDEM_ASSIGN_OR_RETURN(const int32_t cached, kv_->StartSequence(id, seq.tokens));
    // Blocks for this step's rows. With a remote tier StartSequence may
    // take more tier blocks than MatchPrefix foresaw (KvTiers::MayHold),
    // so grow only as far as the pool allows; PlanPrefillChunks grows the rest later.
    const int32_t table_tokens = static_cast<int32_t>(kv_->BlockTable(id).size()) * options_.block_size;
    const int32_t rows =
        std::clamp(std::min(cached + std::min(n, static_cast<int32_t>(seq.tokens.size()) - cached),
                            table_tokens + pool_->num_free_blocks() * options_.block_size) -
                       cached,
                   0, n);
    if (absl::Status s = kv_->EnsureCapacity(id, cached + rows); !s.ok()) {
      kv_->FreeSequence(id);
      return s;  // cannot happen after the clamp above: a broken invariant
    }
    waiting_.erase(waiting_.begin() + static_cast<ptrdiff_t>(i));
    ChargeTenant(seq.request.tenant, static_cast<int64_t>(seq.tokens.size()) - cached);
    if (kv_->IsLoading(id)) {
      // Its prefix is being copied from the tiers: no rows until it is in
      // (CollectTierLoads); the budget stays for the others.
      seq.num_computed = 0;
      seq.loading_cached = cached;
      loading_.push_back(id);
      ++stats_.tier_load_sequences;
      continue;
    }
    if (seq.cached_tokens < 0) {
      seq.cached_tokens = cached;
      stats_.cached_prompt_tokens += cached;
    }
    seq.num_computed = cached;
    running_.push_back(id);
    if (rows == 0) continue;  // no room this step; PlanPrefillChunks schedules it later
    plan.rows.push_back({id, rows});
    plan.budget -= rows;
  }
  return absl::OkStatus();
}

std::vector<int64_t> Engine::BuildBatch(const StepPlan& plan) {
  step_tokens_.clear();
  step_positions_.clear();
  step_slots_.clear();
  step_logit_rows_.clear();
  step_seqs_.clear();
  // The step's block tables are copied, so that the forward pass reads
  // nothing the KvManager may move while Reserve runs beside it.
  size_t table_entries = 0;
  for (const Planned& p : plan.rows) table_entries += kv_->BlockTable(p.id).size();
  step_tables_.clear();
  step_tables_.reserve(table_entries);  // no reallocation below: the spans stay valid
  std::vector<int64_t> sampled_ids;
  for (const Planned& p : plan.rows) {
    Sequence& seq = *sequences_.at(p.id);
    const int32_t start = static_cast<int32_t>(step_tokens_.size());
    for (int32_t j = 0; j < p.rows; ++j) {
      const int32_t pos = seq.num_computed + j;
      step_tokens_.push_back(seq.tokens[pos]);
      step_positions_.push_back(pos);
      step_slots_.push_back(kv_->Slot(p.id, pos));
    }
    const absl::Span<const int32_t> table = kv_->BlockTable(p.id);
    const size_t table_start = step_tables_.size();
    step_tables_.insert(step_tables_.end(), table.begin(), table.end());
    step_seqs_.push_back({start, p.rows, seq.num_computed + p.rows,
                          absl::MakeConstSpan(step_tables_).subspan(table_start, table.size())});
    if (seq.num_computed + p.rows == static_cast<int32_t>(seq.tokens.size())) {
      step_logit_rows_.push_back(start + p.rows - 1);
      sampled_ids.push_back(p.id);
    }
  }
  return sampled_ids;
}

void Engine::CommitComputed(const StepPlan& plan) {
  for (const Planned& p : plan.rows) {
    Sequence& seq = *sequences_.at(p.id);
    const int32_t prompt_len = static_cast<int32_t>(seq.request.prompt_tokens.size());
    const int32_t prompt_rows = std::clamp(prompt_len - seq.num_computed, 0, p.rows);
    stats_.prompt_tokens_computed += prompt_rows;
    stats_.decode_tokens_computed += p.rows - prompt_rows;
    seq.num_computed += p.rows;
    kv_->CommitFullBlocks(p.id, seq.tokens, seq.num_computed);
  }
}

void Engine::ReportComputedBlocks(const StepPlan& plan, std::vector<SequenceUpdate>* out) {
  for (const Planned& p : plan.rows) {
    Sequence& seq = *sequences_.at(p.id);
    const int32_t prompt_len = static_cast<int32_t>(seq.request.prompt_tokens.size());
    // A sequence that finished its prompt this step is sampled now: its
    // final update carries every held block.
    if (!seq.request.stream_prompt_blocks || seq.num_computed >= prompt_len) continue;
    const int32_t full = seq.num_computed / options_.block_size;
    if (full <= seq.streamed_blocks) continue;
    const absl::Span<const int32_t> table = kv_->BlockTable(p.id);
    SequenceUpdate u;
    u.id = p.id;
    u.cached_tokens = std::max(seq.cached_tokens, 0);
    u.first_computed_block = seq.streamed_blocks;
    u.computed_blocks.assign(table.begin() + seq.streamed_blocks, table.begin() + full);
    seq.streamed_blocks = full;
    out->push_back(std::move(u));
  }
}

void Engine::SampleAndFinish(absl::Span<const int64_t> sampled_ids, std::vector<SequenceUpdate>* out) {
  const int32_t vocab = llama_->config().vocab_size;
  for (size_t i = 0; i < sampled_ids.size(); ++i) {
    const int64_t id = sampled_ids[i];
    Sequence& seq = *sequences_.at(id);
    const int32_t next = seq.sampler->Sample(absl::MakeConstSpan(logits_).subspan(i * vocab, vocab));
    SequenceUpdate u;
    u.id = id;
    u.cached_tokens = seq.cached_tokens;
    out->push_back(u);
    if (seq.request.stop_at_eos && tokenizer_->IsEndOfGeneration(next)) {
      Finish(id, SequenceEnd::kStop, absl::OkStatus(), out);
      continue;
    }
    out->back().new_tokens.push_back(next);
    seq.tokens.push_back(next);
    if (++seq.num_generated >= seq.request.max_tokens) {
      Finish(id, SequenceEnd::kLength, absl::OkStatus(), out);
    }
  }
}

int64_t Engine::QueuedPrefillTokens() const {
  int64_t total = 0;
  for (int64_t id : waiting_) total += sequences_.at(id)->tokens.size();
  for (int64_t id : loading_) {
    const Sequence& seq = *sequences_.at(id);
    total += std::max<int64_t>(0, static_cast<int64_t>(seq.tokens.size()) - seq.loading_cached - 1);
  }
  for (int64_t id : running_) {
    const Sequence& seq = *sequences_.at(id);
    total += std::max<int64_t>(0, static_cast<int64_t>(seq.tokens.size()) - seq.num_computed - 1);
  }
  return total;
}

absl::Status Engine::CheckInvariants() const {
  TANDEM_RETURN_IF_ERROR(kv_->CheckInvariants());
  if (kv_->num_sequences() != static_cast<int32_t>(running_.size() + reserved_.size() + loading_.size())) {
    return absl::InternalError(absl::StrFormat("engine: %d block tables for %d running sequences",
                                               kv_->num_sequences(), running_.size()));
  }
  for (int64_t id : running_) {
    const Sequence& seq = *sequences_.at(id);
    const int64_t covered = static_cast<int64_t>(kv_->BlockTable(id).size()) * options_.block_size;
    if (!kv_->HasSequence(id) || covered < seq.num_computed) {
      return absl::InternalError(absl::StrFormat("engine: running sequence %d lacks blocks", id));
    }
  }
  for (int64_t id : loading_) {
    if (!kv_->IsLoading(id)) {
      return absl::InternalError(absl::StrFormat("engine: loading sequence %d is not loading", id));
    }
  }
  for (int64_t id : running_) {
    if (kv_->IsLoading(id)) {
      return absl::InternalError(absl::StrFormat("engine: running sequence %d is still loading", id));
    }
  }
  for (int64_t id : waiting_) {
    if (kv_->HasSequence(id)) {
      return absl::InternalError(absl::StrFormat("engine: waiting sequence %d holds blocks", id));
    }
  }
  if (sequences_.size() != running_.size() + waiting_.size() + reserved_.size() + loading_.size()) {
    return absl::InternalError("engine: sequences neither running nor waiting");
  }
  return absl::OkStatus();
}

}  // namespace tandem::engine
