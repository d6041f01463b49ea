#include "transfer/internal/ucx_status.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tandem::transfer::internal {
namespace {

// Runs a UCX print function into a string.
template <typename PrintFn>
std::string CaptureUcxPrint(PrintFn print) {
  char* buffer = nullptr;
  size_t size = 0;
  FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) return "";
  print(stream);
  std::fclose(stream);
  std::string out(buffer, size);
  std::free(buffer);
  return out;
}

}  // namespace

absl::Status FromUcs(ucs_status_t status, absl::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string message =
      absl::StrCat(what, ": ", ucs_status_string(status), " (ucs ", static_cast<int>(status), ")");
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
    case UCS_ERR_OUT_OF_RANGE:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(message);
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
      return absl::UnimplementedError(message);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(message);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(message);
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_BUSY:
    case UCS_ERR_SOME_CONNECTS_FAILED:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

bool IsSharedMemoryTransport(absl::string_view tl) {
  return tl == "sysv" || tl == "posix" || tl == "xpmem" || tl == "knem" || tl == "cma" || tl == "self";
}

bool IsRdmaTransport(absl::string_view tl) {
  return absl::StartsWith(tl, "rc") || absl::StartsWith(tl, "dc");
}

// From ucp_ep_print_info (UCX 1.13 has no ucp_ep_query for transports).
// Lines look like "#   lane[0]:  3:sysv/memory.0 md[2]  -> md[2]/sysv ...".
std::vector<std::string> EndpointTransports(ucp_ep_h ep) {
  std::string info = CaptureUcxPrint([ep](FILE* f) { ucp_ep_print_info(ep, f); });
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    size_t lane = line.find("lane[");
    if (lane == absl::string_view::npos) continue;
    size_t colon = line.find("]:", lane);
    if (colon == absl::string_view::npos) continue;
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(colon + 2));
    size_t index_end = rest.find(':');
    size_t slash = rest.find('/');
    if (index_end == absl::string_view::npos || slash == absl::string_view::npos || slash < index_end) {
      continue;
    }
    std::string tl(rest.substr(index_end + 1, slash - index_end - 1));
    if (std::find(out.begin(), out.end(), tl) == out.end()) out.push_back(std::move(tl));
  }
  return out;
}

// From ucp_context_print_info: "#  resource 3  :  md 2  dev 3  flags -- sysv/memory".
bool ContextHasSharedMemory(ucp_context_h context) {
  std::string info = CaptureUcxPrint([context](FILE* f) { ucp_context_print_info(context, f); });
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    if (line.find("resource") == absl::string_view::npos) continue;
    size_t flags = line.find("-- ");
    if (flags == absl::string_view::npos) continue;
    absl::string_view res = line.substr(flags + 3);
    absl::string_view tl = res.substr(0, res.find('/'));
    if (IsSharedMemoryTransport(tl) && tl != "self") return true;
  }
  return false;
}

}  // namespace tandem::transfer::internal
