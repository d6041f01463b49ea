#include "cli/tls.h"

#include <fstream>
#include <sstream>
#include <tuple>

#include "absl/strings/str_format.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace tandem::cli {

absl::StatusOr<std::string> ReadFlagFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s: cannot read '%s'", what, path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void AddTlsFlags(CLI::App* cmd, TlsFlags* t) {
  cmd->add_option("--tls-cert", t->cert_file,
                  "PEM certificate chain: turns on TLS; also this process's client certificate");
  cmd->add_option("--tls-key", t->key_file, "PEM private key of --tls-cert");
  cmd->add_option("--tls-ca", t->ca_file,
                  "PEM CA bundle: verifies peers, and requires client certificates (mutual TLS)");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFlags& t) {
  if (!t.enabled) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFlagFile(t.cert_file, "tls.cert_file (--tls-cert)");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFlagFile(t.key_file, "tls.key_file (--tls-key)");
  if (!key.ok()) return key.status();
  std::string ca;
  if (!t.ca_file.empty()) {
    absl::StatusOr<std::string> read = ReadFlagFile(t.ca_file, "tls.ca_file (--tls-ca)");
    if (!read.ok()) return read.status();
    ca = *std::move(read);
  }
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  if (!ca.empty()) {
    request = t.require_client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                    : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  grpc::SslServerCredentialsOptions options(request);
  options.pem_root_certs = ca;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<ChannelFactory> MakeChannelFactory(const TlsFlags& t,
                                                  std::function<void(grpc::ChannelArguments*)> configure) {
  if (!t.enabled) {
    return ChannelFactory([configure](const std::string& target) {
      grpc::ChannelArguments args;
      if (configure) configure(&args);
      return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    });
  }
  grpc::SslCredentialsOptions options;
  for (auto [path, what, out] :
       {std::tuple{&t.ca_file, "tls.ca_file (--tls-ca)", &options.pem_root_certs},
        std::tuple{&t.cert_file, "tls.cert_file (--tls-cert)", &options.pem_cert_chain},
        std::tuple{&t.key_file, "tls.key_file (--tls-key)", &options.pem_private_key}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> read = ReadFlagFile(*path, what);
    if (!read.ok()) return read.status();
    *out = *std::move(read);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(options);
  const std::string server_name = t.server_name;
  return ChannelFactory([credentials, server_name, configure](const std::string& target) {
    grpc::ChannelArguments args;
    if (configure) configure(&args);
    if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
    return grpc::CreateCustomChannel(target, credentials, args);
  });
}

}  // namespace tandem::cli
