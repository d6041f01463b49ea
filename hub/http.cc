#include "hub/http.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tandem::hub {
namespace {

constexpr size_t kMaxErrorBody = 64 << 10;

// scheme://host:port, lowercased; "" when the URL does not parse.
std::string Origin(const std::string& url) {
  CURLU* u = curl_url();
  if (u == nullptr) return "";
  std::string origin;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char *scheme = nullptr, *host = nullptr, *port = nullptr;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
      origin = absl::AsciiStrToLower(absl::StrCat(scheme, "://", host, ":", port));
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(u);
  return origin;
}

// The URL without its query (signed CDN URLs carry credentials there).
std::string Redacted(const std::string& url) { return url.substr(0, url.find('?')); }

}  // namespace

std::string HttpResponse::Header(const std::string& lowercase_name) const {
  auto it = headers.find(lowercase_name);
  return it == headers.end() ? "" : it->second;
}

// State of one request, shared with curl's callbacks.
struct HttpClient::Transfer {
  // Get: the success body goes here.
  std::string* memory = nullptr;
  // Download: the file and the offset asked for.
  int fd = -1;
  int64_t offset = 0;
  std::function<void(int64_t)> progress;
  // Per hop.
  void* curl = nullptr;
  HttpResponse* response = nullptr;
  bool decided = false;  // where the body goes, decided at its first byte
  bool body_to_target = false;
  int64_t file_pos = 0;   // where the next byte goes in fd
  int64_t file_base = 0;  // file_pos when the body began
  absl::Status write_status;

  static size_t OnHeader(char* data, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    absl::string_view line(data, size * n);
    line = absl::StripTrailingAsciiWhitespace(line);
    if (absl::StartsWith(line, "HTTP/")) {
      t->response->headers.clear();  // a new response (after 100 Continue, say)
    } else if (size_t colon = line.find(':'); colon != std::string_view::npos) {
      t->response->headers[absl::AsciiStrToLower(line.substr(0, colon))] =
          std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
    return size * n;
  }

  // Decides at the first body byte where the body goes.
  absl::Status Decide() {
    decided = true;
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 300 || (memory == nullptr && fd < 0)) return absl::OkStatus();
    body_to_target = true;
    if (fd < 0) return absl::OkStatus();
    if (code == 206) {
      // "bytes START-END/TOTAL": the body must start where the file ends.
      const std::string content_range = response->Header("content-range");
      absl::string_view range = content_range;
      int64_t start = -1;
      if (absl::ConsumePrefix(&range, "bytes ")) {
        (void)absl::SimpleAtoi(range.substr(0, range.find('-')), &start);
      }
      if (start != offset) {
        return absl::DataLossError(
            absl::StrCat("asked for bytes from ", offset, " but got Content-Range '", content_range, "'"));
      }
      file_pos = offset;
    } else {
      // The whole file: start over.
      if (ftruncate(fd, 0) != 0)
        return absl::InternalError(absl::StrCat("ftruncate: ", std::strerror(errno)));
      file_pos = 0;
    }
    file_base = file_pos;
    return absl::OkStatus();
  }

  static size_t OnBody(char* data, size_t size, size_t n, void* self) {
    auto* t = static_cast<Transfer*>(self);
    const size_t bytes = size * n;
    if (!t->decided) {
      t->write_status = t->Decide();
      if (!t->write_status.ok()) return 0;  // aborts with CURLE_WRITE_ERROR
    }
    if (!t->body_to_target) {
      std::string& body = t->response->body;
      body.append(data, std::min(bytes, kMaxErrorBody - std::min(kMaxErrorBody, body.size())));
      return bytes;
    }
    if (t->memory != nullptr) {
      t->memory->append(data, bytes);
      return bytes;
    }
    size_t done = 0;
    while (done < bytes) {
      const ssize_t w = pwrite(t->fd, data + done, bytes - done, t->file_pos);
      if (w < 0) {
        if (errno == EINTR) continue;
        t->write_status = absl::InternalError(absl::StrCat("write: ", std::strerror(errno)));
        return 0;
      }
      done += static_cast<size_t>(w);
      t->file_pos += w;
    }
    if (t->progress) t->progress(t->file_pos);
    return bytes;
  }
};

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(const Options& options) {
  static std::once_flag once;
  static CURLcode init_rc = CURLE_OK;
  std::call_once(once, [] { init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (init_rc != CURLE_OK) {
    return absl::InternalError(absl::StrCat("curl_global_init: ", curl_easy_strerror(init_rc)));
  }
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  return std::unique_ptr<HttpClient>(new HttpClient(options, curl));
}

HttpClient::HttpClient(const Options& options, void* curl) : options_(options), curl_(curl) {}

HttpClient::~HttpClient() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

absl::StatusOr<HttpResponse> HttpClient::Get(const std::string& url) {
  std::string body;
  Transfer t;
  t.memory = &body;
  auto r = Perform(Method::kGet, url, &t, /*follow_cross_host=*/true);
  if (r.ok() && r->status < 300) r->body = std::move(body);
  return r;
}

absl::StatusOr<HttpResponse> HttpClient::Head(const std::string& url,
                                              const std::function<bool(const HttpResponse&)>& follow) {
  Transfer t;
  return Perform(Method::kHead, url, &t, /*follow_cross_host=*/false, follow);
}

absl::StatusOr<HttpResponse> HttpClient::Download(const std::string& url, int fd, int64_t offset,
                                                  const std::function<void(int64_t)>& progress) {
  Transfer t;
  t.fd = fd;
  t.offset = offset;
  t.progress = progress;
  return Perform(Method::kGet, url, &t, /*follow_cross_host=*/true);
}

absl::StatusOr<HttpResponse> HttpClient::Perform(Method method, const std::string& url, Transfer* transfer,
                                                 bool follow_cross_host,
                                                 const std::function<bool(const HttpResponse&)>& follow) {
  const std::string origin = Origin(url);
  std::string current = url;
  for (int hop = 0;; ++hop) {
    // The token goes only where the caller sent it.
    const bool with_auth = !options_.bearer_token.empty() && Origin(current) == origin;
    auto r = PerformOnce(method, current, with_auth, transfer);
    if (!r.ok()) return r;
    const bool redirect =
        r->status == 301 || r->status == 302 || r->status == 303 || r->status == 307 || r->status == 308;
    char* next = nullptr;
    curl_easy_getinfo(static_cast<CURL*>(curl_), CURLINFO_REDIRECT_URL, &next);
    if (!redirect || next == nullptr) return r;
    const std::string next_url = next;
    if (!follow_cross_host && Origin(next_url) != Origin(current)) return r;
    if (follow && !follow(*r)) return r;
    if (hop >= options_.max_redirects) {
      return absl::UnavailableError(
          absl::StrCat(Redacted(url), ": more than ", options_.max_redirects, " redirects"));
    }
    current = next_url;
  }
}

absl::StatusOr<HttpResponse> HttpClient::PerformOnce(Method method, const std::string& url, bool with_auth,
                                                     Transfer* t) {
  CURL* curl = static_cast<CURL*>(curl_);
  curl_easy_reset(curl);  // keeps the connection cache
  HttpResponse response;
  response.url = url;
  t->curl = curl;
  t->response = &response;
  t->decided = false;
  t->body_to_target = false;
  t->write_status = absl::OkStatus();

  curl_slist* headers = nullptr;
  const std::string auth = absl::StrCat("Authorization: Bearer ", options_.bearer_token);
  if (with_auth) headers = curl_slist_append(headers, auth.c_str());
  // Sizes in headers must be the file's, not a compressed body's.
  headers = curl_slist_append(headers, "Accept-Encoding: identity");
  char error[CURL_ERROR_SIZE] = {0};
  const std::string range = absl::StrCat(t->offset, "-");

  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, options_.user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                   std::max(1L, static_cast<long>(absl::ToInt64Seconds(options_.stall_timeout))));
  if (t->fd < 0) {
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
  }
  if (method == Method::kHead) {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  }
  if (t->fd >= 0 && t->offset > 0) curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &Transfer::OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &Transfer::OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);

  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  const char* verb = method == Method::kHead ? "HEAD " : "GET ";
  if (rc == CURLE_WRITE_ERROR && !t->write_status.ok()) {
    return absl::Status(t->write_status.code(),
                        absl::StrCat(verb, Redacted(url), ": ", t->write_status.message()));
  }
  if (rc != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat(verb, Redacted(url), ": ", curl_easy_strerror(rc),
                                               error[0] != '\0' ? absl::StrCat(" (", error, ")") : ""));
  }
  long code = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  response.status = code;
  if (!t->decided && code < 300 && t->fd >= 0) {
    // An empty body: still decide, so a 200 for a range truncates the file.
    absl::Status s = t->Decide();
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(verb, Redacted(url), ": ", s.message()));
  }
  t->response = nullptr;
  return response;
}

}  // namespace tandem::hub
