// Token sampling from logits: greedy, temperature, top-k, top-p, with a seed.
//
//   Sampler sampler(SamplingParams{.temperature = 0.8f, .top_p = 0.95f, .seed = 42});
//   int32_t next = sampler.Sample(logits);
//
// Temperature 0 is greedy (argmax; the lowest id wins a tie, as llama.cpp's
// greedy sampler). With a seed the sequence of draws is reproducible on every
// machine: the generator (xoshiro256**) and the float conversion are written
// out here rather than taken from <random>, whose distributions differ between
// standard libraries.
#ifndef TANDEM_ENGINE_SAMPLER_H_
#define TANDEM_ENGINE_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tandem::engine {

struct SamplingParams {
  // Default: 0 (greedy). Must be >= 0.
  float temperature = 0.0f;
  // Keep only the k most likely tokens. Default: 0 (off).
  int32_t top_k = 0;
  // Keep the smallest set of most likely tokens whose probability reaches p.
  // Default: 1 (off). Must be in (0, 1].
  float top_p = 1.0f;
  // Seed for reproducible sampling. Default: unset (a random seed).
  std::optional<uint64_t> seed;
  // Draws already consumed elsewhere (a resumed stream's tokens sampled
  // before it moved): the sampler starts Advance(skip_draws) in, so a seeded
  // sequence continues exactly. Default: 0. Must be >= 0.
  int32_t skip_draws = 0;
  static constexpr int32_t kMaxSkipDraws = 1 << 24;

  // InvalidArgument naming the field when out of range.
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // REQUIRES: logits non-empty.
  int32_t Sample(absl::Span<const float> logits);

  // Consumes the random draws of `samples` Sample calls made elsewhere (a
  // prefill worker sampled the first token), so a seeded sequence continues
  // exactly as it would have in one process.
  void Advance(int32_t samples);

 private:
  double NextUniform();  // in [0, 1)

  SamplingParams params_;
  uint64_t state_[4];
  std::vector<int32_t> order_;  // scratch
  std::vector<double> probs_;   // scratch
};

// Index of the largest value; the lowest index wins ties; NaNs never win,
// except at index 0 (nothing compares greater). 0 for an empty span.
// Vectorized where the CPU allows; always ArgmaxScalar's answer.
int32_t Argmax(absl::Span<const float> values);
// The reference loop Argmax must agree with (tests).
int32_t ArgmaxScalar(absl::Span<const float> values);

}  // namespace tandem::engine

#endif  // TANDEM_ENGINE_SAMPLER_H_
