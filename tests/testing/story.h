// Story-like prompts for tests that run stories260K (TinyStories): about
// `words` words from a small children's-story vocabulary, distinct per
// `seed`, so a test can make many different prompts that tokenize into
// ordinary pieces.
//
//   const std::string prompt = Story(/*seed=*/3, /*words=*/120);
//
// Thread safety: a pure function.
#ifndef TANDEM_TESTS_TESTING_STORY_H_
#define TANDEM_TESTS_TESTING_STORY_H_

#include <string>

#include "absl/strings/str_cat.h"

namespace tandem::testing {

inline std::string Story(int seed, int words) {
  static const char* const kWords[] = {"the",   "little", "dog",  "ran",  "to",   "park", "and",
                                       "saw",   "a",      "big",  "red",  "ball", "Lily", "was",
                                       "happy", "sun",    "tree", "bird", "sang", "mom"};
  std::string s = "Once upon a time";
  for (int i = 0; i < words; ++i) absl::StrAppend(&s, " ", kWords[(i * 7 + seed * 13 + i * seed) % 20]);
  return s;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_STORY_H_
