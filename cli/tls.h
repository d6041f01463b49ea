// TLS for every `tandem` process: the --tls-* flags, server credentials and
// a factory for client channels, all from one TlsFlags (tandem.v1.TlsConfig).
//
//   TlsFlags tls;
//   AddTlsFlags(cmd, &tls);                       // --tls-cert, --tls-key, --tls-ca
//   ... after parsing (and ValidateTls in cli/config_merge.h):
//   TANDEM_ASSIGN_OR_RETURN(auto credentials, MakeServerCredentials(tls));
//   TANDEM_ASSIGN_OR_RETURN(ChannelFactory channels, MakeChannelFactory(tls));
//   auto stub = tandem::v1::WorkerRegistry::NewStub(channels("127.0.0.1:50051"));
//
// TLS is off by default: `--tls-cert`/`--tls-key` serve TLS on the process's
// one gRPC port; `--tls-ca` also requires clients to present a certificate
// signed by that CA (mutual TLS). The same files secure the process's
// outgoing channels (worker -> router, router -> workers).
//
// Thread safety: the functions are; a ChannelFactory may be called from any
// thread.
#ifndef TANDEM_CLI_TLS_H_
#define TANDEM_CLI_TLS_H_

#include <functional>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"

namespace grpc {
class Channel;
class ChannelArguments;
class ServerCredentials;
}  // namespace grpc

namespace tandem::cli {

// TLS settings shared by every process (tandem.v1.TlsConfig).
struct TlsFlags {
  // Serve and dial with TLS. Implied by cert_file.
  bool enabled = false;
  std::string cert_file;  // PEM chain: served, and presented as client cert
  std::string key_file;   // PEM key of cert_file
  std::string ca_file;    // PEM CA bundle peers must chain to (empty: system roots)
  // With ca_file: refuse clients without a CA-signed certificate.
  bool require_client_auth = true;
  // Name checked in servers' certificates instead of the dialed host.
  std::string server_name;
};

// Adds --tls-cert, --tls-key, --tls-ca to `cmd`.
void AddTlsFlags(CLI::App* cmd, TlsFlags* tls);

// Credentials for a server from `tls` (insecure when !tls.enabled); reads the
// files now. InvalidArgument/NotFound name the file that failed.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& tls);

// Creates a channel to "host:port".
using ChannelFactory = std::function<std::shared_ptr<grpc::Channel>(const std::string& target)>;
// A factory for channels secured by `tls` (plaintext when !tls.enabled): the
// server is verified against ca_file (or the system roots) and, when
// cert_file is set, this process presents it as its client certificate.
// Reads the files now. `configure`, when set, adds arguments to every channel
// (the router's keepalive on its channels to workers,
// router/worker_registry.h AddWorkerChannelArgs).
absl::StatusOr<ChannelFactory> MakeChannelFactory(
    const TlsFlags& tls, std::function<void(grpc::ChannelArguments*)> configure = nullptr);

// The whole file at `path`; NotFound "<what>: cannot read '<path>'" when it
// cannot be read (`what` names the flag or config field that gave the path).
absl::StatusOr<std::string> ReadFlagFile(const std::string& path, const std::string& what);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_TLS_H_
