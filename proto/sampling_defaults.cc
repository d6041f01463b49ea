#include "proto/sampling_defaults.h"

namespace tandem {

float EffectiveTopP(const tandem::v1::SamplingParams& sampling) {
  return sampling.top_p() == 0 ? 1.0f : sampling.top_p();
}

}  // namespace tandem
