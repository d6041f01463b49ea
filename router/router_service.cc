#include "router/router_service.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "grpcpp/client_context.h"

namespace tandem::router {
namespace {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

grpc::Status Invalid(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
}

// Calls that fail like this mean the worker is gone (or unreachable).
bool WorkerGone(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

void SetDeadline(grpc::ClientContext* ctx, absl::Time deadline) {
  ctx->set_deadline(absl::ToChronoTime(deadline));
}

}  // namespace

grpc::Status GenerateService::Generate(grpc::ServerContext* context, const GenerateRequest* req,
                                       grpc::ServerWriter<GenerateResponse>* writer) {
  const absl::Time start = absl::Now();
  const model::ModelConfig& config = model_->config;

  // --- Validate, naming the field.
  std::vector<int32_t> prompt;
  switch (req->input_case()) {
    case GenerateRequest::kPrompt:
      prompt = model_->tokenizer->Encode(req->prompt(), /*add_bos=*/true);
      if (prompt.empty()) return Invalid("prompt: encodes to no tokens");
      break;
    case GenerateRequest::kPromptTokenIds:
      if (req->prompt_token_ids().ids().empty()) return Invalid("prompt_token_ids: empty");
      for (int32_t id : req->prompt_token_ids().ids()) {
        if (id < 0 || id >= config.vocab_size) {
          return Invalid(absl::StrFormat("prompt_token_ids: id %d outside the vocabulary of %d", id,
                                         config.vocab_size));
        }
      }
      prompt.assign(req->prompt_token_ids().ids().begin(), req->prompt_token_ids().ids().end());
      break;
    default:
      return Invalid("input: set prompt or prompt_token_ids");
  }
  if (req->max_tokens() < 0) return Invalid("max_tokens: must be >= 0");
  const int32_t max_tokens = req->max_tokens() == 0 ? options_.default_max_tokens : req->max_tokens();
  if (static_cast<int64_t>(prompt.size()) + max_tokens - 1 > config.context_length) {
    return Invalid(absl::StrFormat(
        "max_tokens: prompt of %d tokens plus max_tokens %d exceeds the context length %d",
        prompt.size(), max_tokens, config.context_length));
  }
  tandem::v1::SamplingParams sampling = req->sampling();
  if (sampling.top_p() == 0) sampling.set_top_p(1.0f);
  if (!(sampling.temperature() >= 0)) return Invalid("sampling.temperature: must be >= 0");
  if (sampling.top_k() < 0) return Invalid("sampling.top_k: must be >= 0");
  if (!(sampling.top_p() > 0 && sampling.top_p() <= 1)) return Invalid("sampling.top_p: must be in (0, 1]");
  if (req->stop_size() > 16) return Invalid("stop: at most 16 stop strings");
  size_t longest_stop = 0;
  for (const std::string& s : req->stop()) {
    if (s.empty() || s.size() > 256) return Invalid("stop: each stop string must be 1 to 256 bytes");
    longest_stop = std::max(longest_stop, s.size());
  }
  if (!req->model().empty() && req->model() != config.model_id && req->model() != model_->spec) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrFormat("model: '%s' is not served here (serving '%s')", req->model(),
                                        config.model_id));
  }
  if (req->request_id().size() > 128) return Invalid("request_id: at most 128 bytes");
  const std::string request_id =
      req->request_id().empty() ? absl::StrFormat("req-%d", next_request_.fetch_add(1)) : req->request_id();
  const bool stop_at_eos = !req->has_stop_at_eos() || req->stop_at_eos();
  absl::Time deadline = absl::FromChrono(context->deadline());
  if (deadline > start + options_.default_deadline) deadline = start + options_.default_deadline;

  tandem::v1::GenerateSummary summary;
  summary.set_request_id(request_id);
  summary.set_model(config.model_id);
  *summary.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
  summary.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt.size()));

  std::vector<std::string> bad_decode, bad_prefill;
  grpc::Status last_error(grpc::StatusCode::UNAVAILABLE, "no healthy decode worker");
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    absl::StatusOr<WorkerHandle> decode = registry_->Pick(tandem::v1::WORKER_ROLE_DECODE, bad_decode);
    if (!decode.ok()) return ToGrpc(decode.status());
    summary.set_decode_worker(decode->id);

    tandem::v1::DecodeRequest decode_req;
    decode_req.set_request_id(request_id);
    bool disaggregated = registry_->HasHealthy(tandem::v1::WORKER_ROLE_PREFILL);
    std::optional<int32_t> first_token;
    if (disaggregated) {
      // 1. The decode worker reserves blocks.
      tandem::v1::ReserveRequest reserve;
      reserve.set_request_id(request_id);
      *reserve.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
      reserve.set_max_tokens(max_tokens);
      reserve.set_reservation_ttl_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.reservation_ttl)));
      *reserve.mutable_sampling() = sampling;
      reserve.set_stop_at_eos(stop_at_eos);
      tandem::v1::KvReservation reservation;
      {
        grpc::ClientContext ctx;
        SetDeadline(&ctx, std::min(deadline, absl::Now() + absl::Seconds(10)));
        grpc::Status s = decode->decode->Reserve(&ctx, reserve, &reservation);
        if (!s.ok()) {
          last_error = s;
          if (!WorkerGone(s) && s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return s;
          if (WorkerGone(s)) registry_->MarkFailed(decode->id);
          bad_decode.push_back(decode->id);
          continue;
        }
      }
      const absl::Time queued = absl::Now();
      summary.mutable_timings()->set_queue_ms(Ms(queued - start));
      // 2. A prefill worker computes the KV and writes it into the reservation.
      tandem::v1::PrefillRequest prefill_req;
      prefill_req.set_request_id(request_id);
      *prefill_req.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
      *prefill_req.mutable_sampling() = sampling;
      *prefill_req.mutable_reservation() = reservation;
      prefill_req.set_stop_at_eos(stop_at_eos);
      tandem::v1::PrefillResponse prefilled;
      bool decode_failed = false;
      while (!first_token.has_value()) {
        absl::StatusOr<WorkerHandle> prefill = registry_->Pick(tandem::v1::WORKER_ROLE_PREFILL, bad_prefill);
        if (!prefill.ok()) break;  // none left: fall back to aggregated below
        summary.set_prefill_worker(prefill->id);
        grpc::ClientContext ctx;
        SetDeadline(&ctx, deadline);
        grpc::Status s = prefill->prefill->Prefill(&ctx, prefill_req, &prefilled);
        if (s.ok()) {
          first_token = prefilled.first_token();
          break;
        }
        last_error = s;
        if (s.error_code() == grpc::StatusCode::ABORTED) {  // the transfer to decode failed
          registry_->MarkFailed(decode->id);
          decode_failed = true;
          // Best effort: if the decode worker is alive after all, give its
          // blocks back now rather than at the reservation's TTL.
          grpc::ClientContext release_ctx;
          SetDeadline(&release_ctx, absl::Now() + absl::Seconds(1));
          tandem::v1::ReleaseRequest release;
          release.set_request_id(request_id);
          tandem::v1::ReleaseResponse ignored;
          (void)decode->decode->Release(&release_ctx, release, &ignored);
          break;
        }
        if (!WorkerGone(s)) {
          grpc::ClientContext release_ctx;
          SetDeadline(&release_ctx, absl::Now() + absl::Seconds(2));
          tandem::v1::ReleaseRequest release;
          release.set_request_id(request_id);
          tandem::v1::ReleaseResponse ignored;
          (void)decode->decode->Release(&release_ctx, release, &ignored);
          return s;
        }
        registry_->MarkFailed(prefill->id);
        bad_prefill.push_back(prefill->id);
      }
      if (decode_failed) {
        bad_decode.push_back(decode->id);
        continue;
      }
      if (!first_token.has_value() || prefilled.first_token_is_eos()) {
        // No prefill worker could do it (aggregated fallback), or the first
        // token ends generation: give the reservation back.
        grpc::ClientContext release_ctx;
        SetDeadline(&release_ctx, absl::Now() + absl::Seconds(2));
        tandem::v1::ReleaseRequest release;
        release.set_request_id(request_id);
        tandem::v1::ReleaseResponse ignored;
        (void)decode->decode->Release(&release_ctx, release, &ignored);
      }
      if (first_token.has_value() && prefilled.first_token_is_eos()) {
        summary.set_finish_reason(tandem::v1::FINISH_REASON_STOP);
        summary.mutable_usage()->set_cached_tokens(prefilled.cached_tokens());
        summary.mutable_timings()->set_prefill_ms(prefilled.prefill_ms());
        summary.mutable_timings()->set_transfer_ms(prefilled.transfer_ms());
        summary.mutable_timings()->set_first_token_ms(Ms(absl::Now() - start));
        summary.mutable_timings()->set_total_ms(Ms(absl::Now() - start));
        GenerateResponse out;
        *out.mutable_summary() = summary;
        writer->Write(out);
        return grpc::Status::OK;
      }
      if (first_token.has_value()) {
        decode_req.set_kv_ready(true);
        decode_req.set_first_token(*first_token);
        summary.mutable_usage()->set_cached_tokens(prefilled.cached_tokens());
        summary.mutable_timings()->set_prefill_ms(prefilled.prefill_ms());
        summary.mutable_timings()->set_transfer_ms(prefilled.transfer_ms());
        summary.mutable_timings()->set_queue_ms(summary.timings().queue_ms() + prefilled.queue_ms());
      } else {
        disaggregated = false;
        summary.clear_prefill_worker();
      }
    }
    if (!decode_req.kv_ready()) {
      // Aggregated: the decode worker prefills too.
      *decode_req.mutable_prompt_token_ids() = {prompt.begin(), prompt.end()};
      decode_req.set_max_tokens(max_tokens);
      *decode_req.mutable_sampling() = sampling;
      decode_req.set_stop_at_eos(stop_at_eos);
    }

    // 3. Stream the decode worker's tokens to the client.
    grpc::ClientContext ctx;
    SetDeadline(&ctx, deadline);
    std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader = decode->decode->Decode(&ctx, decode_req);
    GenerateResponse in;
    int32_t sent_tokens = 0;
    std::string text;          // all text so far
    size_t text_sent = 0;      // bytes of `text` sent to the client
    bool stopped_by_string = false;
    tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_UNSPECIFIED;
    while (reader->Read(&in)) {
      if (context->IsCancelled()) {
        ctx.TryCancel();
        break;
      }
      if (in.has_summary()) {
        finish = in.summary().finish_reason();
        if (in.summary().usage().cached_tokens() > 0) {
          summary.mutable_usage()->set_cached_tokens(in.summary().usage().cached_tokens());
        }
        continue;
      }
      const tandem::v1::TokenChunk& chunk = in.chunk();
      text += chunk.text();
      GenerateResponse out;
      tandem::v1::TokenChunk* c = out.mutable_chunk();
      *c->mutable_token_ids() = chunk.token_ids();
      sent_tokens += chunk.token_ids_size();
      // Stop strings: cut at the first match; otherwise hold back what could
      // still become the start of one.
      size_t cut = std::string::npos;
      for (const std::string& stop : req->stop()) {
        const size_t from = text_sent >= stop.size() ? text_sent - stop.size() + 1 : 0;
        const size_t pos = text.find(stop, from);
        if (pos != std::string::npos && pos < cut) cut = pos;
      }
      size_t emit_to = text.size();
      if (cut != std::string::npos) {
        emit_to = cut;
        stopped_by_string = true;
      } else if (longest_stop > 0) {
        emit_to = text.size() >= longest_stop - 1 ? text.size() - (longest_stop - 1) : 0;
        emit_to = std::max(emit_to, text_sent);
      }
      c->set_text(text.substr(text_sent, emit_to - text_sent));
      text_sent = emit_to;
      if (summary.timings().first_token_ms() == 0) {
        summary.mutable_timings()->set_first_token_ms(Ms(absl::Now() - start));
      }
      if (!writer->Write(out)) {  // client gone
        ctx.TryCancel();
        break;
      }
      if (stopped_by_string) {
        ctx.TryCancel();
        finish = tandem::v1::FINISH_REASON_STOP;
        break;
      }
    }
    grpc::Status s = reader->Finish();
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    if (!stopped_by_string && !s.ok()) {
      last_error = s;
      if (WorkerGone(s)) registry_->MarkFailed(decode->id);
      if (sent_tokens == 0 && WorkerGone(s)) {
        bad_decode.push_back(decode->id);
        continue;  // nothing reached the client: try another decode worker
      }
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrFormat("decode worker %s failed mid-stream: %s", decode->id,
                                          s.error_message()));
    }
    if (!stopped_by_string && text_sent < text.size()) {
      GenerateResponse out;
      out.mutable_chunk()->set_text(text.substr(text_sent));
      writer->Write(out);
    }
    summary.set_finish_reason(finish);
    summary.mutable_usage()->set_completion_tokens(sent_tokens);
    summary.mutable_timings()->set_total_ms(Ms(absl::Now() - start));
    GenerateResponse out;
    *out.mutable_summary() = summary;
    writer->Write(out);
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      absl::StrFormat("no worker could serve the request after %d attempts: %s",
                                      options_.max_attempts, last_error.error_message()));
}

grpc::Status RegistryService::Register(grpc::ServerContext*, const tandem::v1::RegisterRequest* r,
                                       tandem::v1::RegisterResponse* response) {
  if (absl::Status s = registry_->Register(*r); !s.ok()) return ToGrpc(s);
  response->set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(registry_->heartbeat_interval())));
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeat(grpc::ServerContext*, const tandem::v1::HeartbeatRequest* r,
                                        tandem::v1::HeartbeatResponse* response) {
  response->set_known(registry_->Heartbeat(*r));
  return grpc::Status::OK;
}

grpc::Status RegistryService::PublishKvEvents(grpc::ServerContext*,
                                              grpc::ServerReader<tandem::v1::KvEventBatch>* reader,
                                              tandem::v1::KvEventsAck*) {
  // The round-robin router does not index KV yet (the KV-aware router does);
  // it drains the stream so workers can publish.
  tandem::v1::KvEventBatch batch;
  while (reader->Read(&batch)) {
  }
  return grpc::Status::OK;
}

}  // namespace tandem::router
