// The defaults of tandem.v1.SamplingParams that proto3 cannot express: a
// field left unset reads 0, and for top_p 0 means "off" (1), not "keep
// nothing". Every reader of SamplingParams (router validation, decode and
// prefill workers) applies them through here, so the rule is written once.
//
//   engine::SamplingParams s;
//   s.top_p = tandem::EffectiveTopP(request.sampling());
//
// Thread safety: pure functions.
#ifndef TANDEM_PROTO_SAMPLING_DEFAULTS_H_
#define TANDEM_PROTO_SAMPLING_DEFAULTS_H_

#include "tandem/v1/tandem.pb.h"

namespace tandem {

// `sampling.top_p()`, with 0 (unset) read as 1 (no nucleus cut), as
// tandem.proto documents. Other values are returned as given (validation is
// the router's).
float EffectiveTopP(const tandem::v1::SamplingParams& sampling);

}  // namespace tandem

#endif  // TANDEM_PROTO_SAMPLING_DEFAULTS_H_
