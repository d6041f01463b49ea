#include "worker_common/sampling.h"

#include "proto/sampling_defaults.h"

namespace tandem::worker_common {

engine::SamplingParams SamplingFromProto(const tandem::v1::SamplingParams& proto) {
  engine::SamplingParams s;
  s.temperature = proto.temperature();
  s.top_k = proto.top_k();
  s.top_p = EffectiveTopP(proto);
  if (proto.has_seed()) s.seed = proto.seed();
  s.skip_draws = proto.skip_draws();
  return s;
}

}  // namespace tandem::worker_common
