// Reads a value from a Prometheus /metrics page over plain HTTP, for tests
// and benchmarks that watch a server from outside.
//
//   double entries = ScrapeGauge(http_port, "tandem_router_kv_index_entries");
//
// Thread-compatible.
#ifndef TANDEM_TESTS_TESTING_METRICS_SCRAPE_H_
#define TANDEM_TESTS_TESTING_METRICS_SCRAPE_H_

#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "http/test_client.h"

namespace tandem::testing {

// The sum of the samples of metric `name` (every label set) on the /metrics
// page served at 127.0.0.1:`http_port`; -1 when it does not answer 200.
inline double ScrapeGauge(int http_port, const std::string& name) {
  http::testing::TestClient client(http_port);
  if (!client.ok() || !client.Send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")) return -1;
  std::optional<http::testing::ParsedResponse> r = client.ReadResponse(absl::Seconds(10));
  if (!r.has_value() || r->status != 200) return -1;
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
    if (!absl::StartsWith(line, name) || line.size() <= name.size()) continue;
    if (line[name.size()] != ' ' && line[name.size()] != '{') continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
  }
  return sum;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_METRICS_SCRAPE_H_
