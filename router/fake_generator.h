// A Generator for front-end tests: it answers every request with a script
// (canned chunks, then a status) from one thread it owns, so observers are
// called off the caller's thread as the real router does. A "hold" script
// keeps the request open until it is cancelled or released.
// Test-only (header-only, used by openai_front_test and openai_sdk_test).
#ifndef TANDEM_ROUTER_FAKE_GENERATOR_H_
#define TANDEM_ROUTER_FAKE_GENERATOR_H_

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/generation.h"

namespace tandem::router::testing {

struct FakeScript {
  std::vector<std::string> texts = {"Hello", ",", " world"};  // one chunk (one token) each
  absl::Status status;                                        // how the request ends (after the chunks)
  tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_STOP;
  int prompt_tokens = 5;
  int cached_tokens = 3;
  bool hold = false;  // after the chunks, wait for Cancel or Release
};

class FakeGenerator : public Generator {
 public:
  FakeGenerator() : thread_([this] { Loop(); }) {}
  ~FakeGenerator() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  void set_script(FakeScript script) {
    absl::MutexLock lock(&mu_);
    script_ = std::move(script);
  }

  std::shared_ptr<GenerationCall> Start(const tandem::v1::GenerateRequest& request, absl::Time deadline,
                                        std::shared_ptr<GenerationObserver> observer) override {
    auto call = std::make_shared<Call>(this);
    absl::MutexLock lock(&mu_);
    requests_.push_back(request);
    deadlines_.push_back(deadline);
    call->observer = std::move(observer);
    call->script = script_;
    queue_.push_back(call);
    return call;
  }

  // Requests seen so far.
  std::vector<tandem::v1::GenerateRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  std::vector<absl::Time> deadlines() {
    absl::MutexLock lock(&mu_);
    return deadlines_;
  }
  // Waits (bounded) until `n` requests were cancelled.
  bool AwaitCancelled(int n, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto done = [&] {
      mu_.AssertHeld();
      return cancelled_ >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  // Ends every held request with its script's status.
  void ReleaseAll() {
    absl::MutexLock lock(&mu_);
    release_ = true;
  }

 private:
  struct Call : GenerationCall {
    explicit Call(FakeGenerator* g) : generator(g) {}
    void Cancel() override {
      absl::MutexLock lock(&generator->mu_);
      cancel = true;
    }
    FakeGenerator* generator;
    std::shared_ptr<GenerationObserver> observer;
    FakeScript script;
    bool cancel = false;  // guarded by generator->mu_
    int tokens = 0;       // chunks sent (the generator thread only)
  };

  void Loop() {
    std::vector<std::shared_ptr<Call>> held;
    for (;;) {
      std::shared_ptr<Call> next;
      std::vector<std::shared_ptr<Call>> finished;
      {
        absl::MutexLock lock(&mu_);
        auto work = [&] {
          mu_.AssertHeld();
          if (stop_ || !queue_.empty() || (release_ && !held.empty())) return true;
          for (auto& c : held) {
            if (c->cancel) return true;
          }
          return false;
        };
        mu_.AwaitWithTimeout(absl::Condition(&work), absl::Milliseconds(100));
        if (stop_) break;
        if (!queue_.empty()) {
          next = queue_.front();
          queue_.pop_front();
        }
        for (auto it = held.begin(); it != held.end();) {
          if ((*it)->cancel || release_) {
            if ((*it)->cancel) ++cancelled_;
            finished.push_back(*it);
            it = held.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (auto& c : finished) Finish(*c);
      if (next == nullptr) continue;
      int tokens = 0;
      for (const std::string& text : next->script.texts) {
        tandem::v1::TokenChunk chunk;
        chunk.add_token_ids(100 + tokens++);
        chunk.set_text(text);
        next->observer->OnChunk(chunk);
      }
      next->tokens = tokens;
      if (next->script.hold) {
        held.push_back(next);
      } else {
        Finish(*next);
      }
    }
    for (auto& c : held) Finish(*c);
  }

  void Finish(Call& c) {
    tandem::v1::GenerateSummary summary;
    summary.set_finish_reason(c.script.finish);
    summary.mutable_usage()->set_prompt_tokens(c.script.prompt_tokens);
    summary.mutable_usage()->set_completion_tokens(c.tokens);
    summary.mutable_usage()->set_cached_tokens(c.script.cached_tokens);
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      cancelled = c.cancel;
    }
    c.observer->OnDone(cancelled ? absl::CancelledError("cancelled") : c.script.status, summary);
    c.observer.reset();
  }

  absl::Mutex mu_;
  FakeScript script_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Call>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<tandem::v1::GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> deadlines_ ABSL_GUARDED_BY(mu_);
  int cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  bool release_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: started after the members above exist
};

}  // namespace tandem::router::testing

#endif  // TANDEM_ROUTER_FAKE_GENERATOR_H_
