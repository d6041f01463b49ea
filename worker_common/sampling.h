// tandem.v1.SamplingParams as the engine takes it, for both worker roles (a
// prefill worker samples a request's first token, a decode worker the rest,
// and a resumed stream's skip_draws must reach both alike).
//
//   engine_request.sampling = worker_common::SamplingFromProto(request.sampling());
//
// Thread safety: a pure function.
#ifndef TANDEM_WORKER_COMMON_SAMPLING_H_
#define TANDEM_WORKER_COMMON_SAMPLING_H_

#include "engine/sampler.h"
#include "tandem/v1/tandem.pb.h"

namespace tandem::worker_common {

// Proto defaults applied (proto/sampling_defaults.h); validation is the
// engine's (SamplingParams::Validate, when the request is added).
engine::SamplingParams SamplingFromProto(const tandem::v1::SamplingParams& proto);

}  // namespace tandem::worker_common

#endif  // TANDEM_WORKER_COMMON_SAMPLING_H_
