#include "worker_common/worker_status.h"

namespace tandem::worker_common {

tandem::v1::WorkerLoad ToWorkerLoad(const engine::EngineLoad& load) {
  tandem::v1::WorkerLoad p;
  p.set_running(load.running);
  p.set_waiting(load.waiting);
  p.set_free_blocks(load.free_blocks);
  p.set_total_blocks(load.total_blocks);
  p.set_used_blocks(load.used_blocks);
  p.set_queued_prefill_tokens(load.queued_prefill_tokens);
  p.set_decode_step_ms(load.decode_step_ms);
  p.set_decode_batch(load.decode_batch);
  return p;
}

tandem::v1::WorkerStatus ToWorkerStatus(const std::string& worker_id, tandem::v1::WorkerRole role,
                                        const std::string& model_id, const engine::EngineLoad& load) {
  tandem::v1::WorkerStatus status;
  status.set_worker_id(worker_id);
  status.set_role(role);
  status.set_model_id(model_id);
  *status.mutable_load() = ToWorkerLoad(load);
  status.set_reservations(load.reserved);
  return status;
}

}  // namespace tandem::worker_common
