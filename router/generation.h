// The router's generation entry point, shared by its two front ends (gRPC
// tandem.v1.Tandem/Generate and the OpenAI-compatible HTTP server).
//
//   class MyObserver : public GenerationObserver { ... };
//   std::shared_ptr<GenerationCall> call =
//       generator->Start(request, absl::Now() + absl::Minutes(1), std::make_shared<MyObserver>());
//   ...
//   call->Cancel();  // client went away: the workers stop, blocks are freed
//
// Start never blocks: it validates, picks workers and issues asynchronous
// calls; the observer hears about progress on gRPC's callback threads. So a
// front end holds no thread per request, and thousands of streams cost
// memory, not threads.
//
// The request and the stream use the public proto shapes (tandem.proto): a
// front end translates its wire format into a GenerateRequest and the
// chunks/summary back out.
#ifndef TANDEM_ROUTER_GENERATION_H_
#define TANDEM_ROUTER_GENERATION_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::router {

// Receives one request's progress. Calls for one request never overlap and
// arrive in order: zero or more OnChunk, then exactly one OnDone. They run on
// gRPC threads and must not block (queue the bytes and return).
class GenerationObserver {
 public:
  virtual ~GenerationObserver() = default;

  // New tokens and their text (stop strings already cut, UTF-8 whole).
  virtual void OnChunk(const tandem::v1::TokenChunk& chunk) = 0;

  // The end: `status` is OK with the summary filled in, or the error that
  // ended the request (INVALID_ARGUMENT naming a field, NOT_FOUND for an
  // unknown model, RESOURCE_EXHAUSTED for an SLO rejection, UNAVAILABLE,
  // DEADLINE_EXCEEDED, CANCELLED). The summary is partial on error.
  virtual void OnDone(const absl::Status& status, const tandem::v1::GenerateSummary& summary) = 0;
};

// A started request.
class GenerationCall {
 public:
  virtual ~GenerationCall() = default;
  // Stops the request (idempotent, never blocks); OnDone follows with
  // CANCELLED unless the request already finished.
  virtual void Cancel() = 0;
};

class Generator {
 public:
  virtual ~Generator() = default;

  // Starts `request`. `deadline` bounds the whole request (the front end's
  // client deadline or the router's default). The observer is kept alive
  // until OnDone returns. Validation errors also arrive through OnDone
  // (possibly before Start returns).
  virtual std::shared_ptr<GenerationCall> Start(const tandem::v1::GenerateRequest& request,
                                                absl::Time deadline,
                                                std::shared_ptr<GenerationObserver> observer) = 0;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_GENERATION_H_
