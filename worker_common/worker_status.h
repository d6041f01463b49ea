// The engine's load, as the router sees it in heartbeats and Status calls.
#ifndef TANDEM_WORKER_COMMON_WORKER_STATUS_H_
#define TANDEM_WORKER_COMMON_WORKER_STATUS_H_

#include <string>

#include "engine/engine_runner.h"
#include "tandem/v1/worker.pb.h"

namespace tandem::worker_common {

tandem::v1::WorkerLoad ToWorkerLoad(const engine::EngineLoad& load);

tandem::v1::WorkerStatus ToWorkerStatus(const std::string& worker_id, tandem::v1::WorkerRole role,
                                        const std::string& model_id, const engine::EngineLoad& load);

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_WORKER_STATUS_H_
