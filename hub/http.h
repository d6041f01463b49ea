// A small HTTP client on libcurl for the hub protocol: GET into memory, HEAD,
// and GET into a file descriptor from an offset (HTTP Range), with redirects
// followed by hand so the bearer token only ever goes to the host it was
// meant for.
//
//   TANDEM_ASSIGN_OR_RETURN(auto http, HttpClient::Create({.bearer_token = token}));
//   TANDEM_ASSIGN_OR_RETURN(HttpResponse r, http->Get("https://huggingface.co/api/models/gpt2"));
//   if (r.status == 200) Parse(r.body);
//
// Transport failures (cannot resolve or connect, connection cut, stalled
// past the stall timeout) are Unavailable; every HTTP status, errors
// included, comes back as an HttpResponse for the caller to map.
// An HttpClient is not thread-safe (one curl handle, reused so connections
// stay open across requests); use one per thread.
#ifndef TANDEM_HUB_HTTP_H_
#define TANDEM_HUB_HTTP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tandem::hub {

struct HttpResponse {
  int64_t status = 0;
  // Headers of the final response, names lowercased (last value wins).
  std::map<std::string, std::string> headers;
  // The body for Get; for Download, the body only of an error response
  // (status >= 300, first 64 KiB), since a success body went to the file.
  std::string body;
  // The URL that produced this response (after redirects).
  std::string url;

  // The header's value, or "" when absent.
  std::string Header(const std::string& lowercase_name) const;
};

class HttpClient {
 public:
  struct Options {
    // Sent as "Authorization: Bearer <token>" to the first URL's scheme, host
    // and port only, never to a host a redirect leads to. Default: "" (none).
    std::string bearer_token;
    // Default: 10 s.
    absl::Duration connect_timeout = absl::Seconds(10);
    // A transfer that moves no byte for this long is abandoned (Unavailable).
    // Default: 60 s.
    absl::Duration stall_timeout = absl::Seconds(60);
    // Whole-request deadline for Get and Head (not Download). Default: 60 s.
    absl::Duration request_timeout = absl::Seconds(60);
    // Most redirects followed per request. Default: 10.
    int max_redirects = 10;
    // Default: "tandem/1".
    std::string user_agent = "tandem/1";
  };

  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(const Options& options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET, following redirects; the body in memory.
  absl::StatusOr<HttpResponse> Get(const std::string& url);

  // HEAD. Follows redirects to the same host only, and only those for
  // which `follow` (when given) returns true: the hub answers a HEAD for an
  // LFS file with a redirect (to its CDN, or on a mirror to itself) whose
  // own headers, not the target's, carry X-Linked-Etag and X-Linked-Size.
  absl::StatusOr<HttpResponse> Head(const std::string& url,
                                    const std::function<bool(const HttpResponse&)>& follow = nullptr);

  // GET from byte `offset` (a Range request when > 0), following redirects,
  // writing the body to `fd` at `offset`. When the server ignores the range
  // (200 instead of 206), the file is truncated and written from 0.
  // `progress(bytes_in_file)` is called as bytes arrive (may be null).
  // The body of a response with status >= 300 is never written to `fd`.
  absl::StatusOr<HttpResponse> Download(const std::string& url, int fd, int64_t offset,
                                        const std::function<void(int64_t)>& progress);

 private:
  struct Transfer;
  enum class Method { kGet, kHead };
  explicit HttpClient(const Options& options, void* curl);
  absl::StatusOr<HttpResponse> Perform(Method method, const std::string& url, Transfer* transfer,
                                       bool follow_cross_host,
                                       const std::function<bool(const HttpResponse&)>& follow = nullptr);
  absl::StatusOr<HttpResponse> PerformOnce(Method method, const std::string& url, bool with_auth,
                                           Transfer* transfer);

  Options options_;
  void* curl_;  // CURL*, owned
};

}  // namespace tandem::hub

#endif  // TANDEM_HUB_HTTP_H_
