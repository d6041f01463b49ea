#include "cli/remote_generate.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/tls.h"
#include "nlohmann/json.hpp"
#include "tandem/v1/tandem.grpc.pb.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::cli {
namespace {

constexpr const char* kPrefix = "tandem generate";

const char* FinishReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    default:
      return "unspecified";
  }
}

// One clear line for a failed call.
std::string DescribeError(const GenerateFlags& f, const grpc::Status& s) {
  const std::string code = absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()));
  const std::string detail = code + (s.error_message().empty() ? "" : ": " + s.error_message());
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return "cannot generate through " + f.remote + " (" + detail +
             "); is a router (tandem up / tandem router) serving there?";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "no complete answer from " + f.remote + " within --timeout-s " + std::to_string(f.timeout_s) +
             " s (" + detail + ")";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "the cluster at " + f.remote +
             " rejected the request to protect its latency targets; retry later (" + detail + ")";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "the router at " + f.remote + " rejected the request: " + s.error_message();
    default:
      return "the router at " + f.remote + " failed the request: " + detail;
  }
}

}  // namespace

int RunRemoteGenerate(const GenerateFlags& f) {
  if (!f.prompts_file.empty()) {
    std::cerr << kPrefix << ": --prompts-file is not supported with --remote; send one --prompt per call\n";
    return 2;
  }
  v1::GenerateRequest request;
  request.set_prompt(f.prompt);
  request.set_max_tokens(f.max_tokens);
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(f.temperature);
  sampling->set_top_k(f.top_k);
  sampling->set_top_p(f.top_p);
  if (f.seed.has_value()) sampling->set_seed(*f.seed);
  // Only a model the user named is checked against the cluster's; the flag's
  // default would reject every cluster serving anything else.
  if (f.model_given) request.set_model(f.model);

  if (f.tls_cert.empty() != f.tls_key.empty()) {
    std::cerr << kPrefix << ": --tls-cert and --tls-key go together\n";
    return 2;
  }
  const TlsFlags tls{.enabled = !f.tls_ca.empty() || !f.tls_cert.empty(),
                     .cert_file = f.tls_cert,
                     .key_file = f.tls_key,
                     .ca_file = f.tls_ca};
  absl::StatusOr<ChannelFactory> channels = MakeChannelFactory(tls);
  if (!channels.ok()) {
    std::cerr << kPrefix << ": " << channels.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<v1::Tandem::Stub> stub = v1::Tandem::NewStub((*channels)(f.remote));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(f.timeout_s));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub->Generate(&context, request);

  std::vector<int32_t> generated;
  std::string text;
  std::optional<v1::GenerateSummary> summary;
  bool prompt_printed = false;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      const v1::TokenChunk& chunk = response.chunk();
      generated.insert(generated.end(), chunk.token_ids().begin(), chunk.token_ids().end());
      text += chunk.text();
      if (!f.json) {  // stream the text as it comes
        if (!prompt_printed) std::cout << f.prompt;
        prompt_printed = true;
        std::cout << chunk.text() << std::flush;
      }
    } else if (response.has_summary()) {
      summary = response.summary();
    }
  }
  const grpc::Status status = reader->Finish();
  if (prompt_printed && (!status.ok() || !summary.has_value())) std::cout << "\n" << std::flush;
  if (!status.ok()) {
    std::cerr << kPrefix << ": " << DescribeError(f, status) << "\n";
    return 1;
  }
  if (!summary.has_value()) {
    std::cerr << kPrefix << ": the stream from " << f.remote << " ended without a summary\n";
    return 1;
  }
  if (f.json) {
    nlohmann::ordered_json j;  // keys in the order local generate prints them
    j["prompt_token_ids"] =
        std::vector<int32_t>(summary->prompt_token_ids().begin(), summary->prompt_token_ids().end());
    j["generated_token_ids"] = generated;
    j["text"] = text;
    j["finish_reason"] = FinishReasonName(summary->finish_reason());
    // A stream that moved to another decode worker mid-stream (live
    // migration, router_core.h) says so; otherwise the line is exactly what
    // local generate prints (up_test compares them).
    if (summary->migrations() > 0) {
      j["decode_worker"] = summary->decode_worker();
      j["migrations"] = summary->migrations();
    }
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    if (!prompt_printed) std::cout << f.prompt;
    std::cout << "\n";
  }
  std::cout << std::flush;
  if (summary->model().starts_with("synthetic:")) {
    std::cerr
        << "note: the cluster serves " << summary->model()
        << ", synthetic random weights, so its text is gibberish. For a real model start the "
           "cluster with --model PATH.gguf (e.g. tandem up --model ../shared/models/stories260K.gguf).\n";
  }
  return 0;
}

}  // namespace tandem::cli
