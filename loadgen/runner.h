// Sends a schedule of requests to a Tandem router (tandem.v1.Tandem/Generate)
// and measures each one, with gRPC's callback API: one reactor per request,
// no thread per request, so thousands can be in flight.
//
//   Runner::Options o;
//   o.channel = grpc::CreateChannel("127.0.0.1:50051", grpc::InsecureChannelCredentials());
//   o.slo.ttft_ms = 500;
//   TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<Runner> runner, Runner::Create(o));
//   Runner::RunResult run = runner->Run(schedule);  // blocks until all finish
//   RunSummary summary = Summarize(run.results, o.slo, absl::ToDoubleSeconds(run.duration));
//
// Every request is sent as prompt_token_ids with greedy sampling and
// stop_at_eos = false (so it produces exactly max_tokens tokens), its `slo`
// set from Options::slo (the router's admission may reject it:
// RESOURCE_EXHAUSTED, counted as rejected), and a deadline of
// request_timeout from its send.
//
// Thread safety: Run may be called from one thread at a time; the calls'
// callbacks run on gRPC's threads and touch only the Runner's locked state.
// The Runner borrows nothing; it must outlive Run (Run returns only after
// every call's last callback has released the Runner's state).
#ifndef TANDEM_LOADGEN_RUNNER_H_
#define TANDEM_LOADGEN_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loadgen/metrics.h"
#include "loadgen/workload.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace tandem::loadgen {

class Runner {
 public:
  struct Progress {
    int64_t sent = 0;
    int64_t completed = 0;
    int64_t rejected = 0;
    int64_t errors = 0;
    int64_t in_flight = 0;
    absl::Duration elapsed;
  };

  struct Options {
    // The router's channel. Required.
    std::shared_ptr<grpc::Channel> channel;
    // Other router replicas of the same cluster. Requests go to `channel`
    // and these in turn (request i to the (i mod n)-th), and one that fails
    // UNAVAILABLE (its router unreachable or gone mid-stream) is sent again,
    // whole, to the next replica, up to once per replica, as a client behind
    // a Service retries (RequestResult::retries; its times still count from
    // the first send). Default: none.
    std::vector<std::shared_ptr<grpc::Channel>> replicas;
    // Most requests in flight at once; a request that comes due while the
    // limit is reached waits, and is measured from when it is actually sent.
    // 0: no limit. Default: 0.
    int32_t concurrency_limit = 0;
    // Each request's deadline, from its send. Default: 300 s.
    absl::Duration request_timeout = absl::Seconds(300);
    // Sent as each request's `slo` (and used by Summarize). Default: none.
    Slo slo;
    // Sent as each request's `model` when not empty. Default: empty.
    std::string model;
    // Request ids are this prefix plus the request's index. Default: "bench-".
    std::string request_id_prefix = "bench-";
    // Called on Run's thread about every progress_interval and once at the
    // end. Default: none.
    std::function<void(const Progress&)> on_progress;
    // Default: 1 s.
    absl::Duration progress_interval = absl::Seconds(1);
  };

  struct Scheduled {
    // Send time, from the start of the run.
    absl::Duration send_at;
    LoadRequest request;
  };

  struct RunResult {
    // One per scheduled request, in schedule order.
    std::vector<RequestResult> results;
    // From the run's start to the last request's end.
    absl::Duration duration;
  };

  // InvalidArgument when the channel is missing or an option is out of range.
  static absl::StatusOr<std::unique_ptr<Runner>> Create(const Options& options);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Sends each request at its send time (`schedule` sorted by send_at) and
  // returns when every one has finished; each has a deadline, so Run ends.
  RunResult Run(const std::vector<Scheduled>& schedule);

 private:
  class Call;
  struct State;
  explicit Runner(const Options& options);

  Options options_;
  std::unique_ptr<State> state_;
};

}  // namespace tandem::loadgen

#endif  // TANDEM_LOADGEN_RUNNER_H_
