// `tandem generate --remote HOST:PORT`: the same request as a local
// `tandem generate`, sent to a cluster's router (tandem.v1.Tandem/Generate)
// instead of run here. Same output: `prompt+text` (the text streamed as it
// arrives), or with --json one line {"prompt_token_ids", "generated_token_ids",
// "text", "finish_reason"}. Local-only flags (--threads, --block-size,
// --kv-cache-mb, --max-running, --max-step-tokens) are ignored; --prompts-file
// is not supported remotely (usage error). --tls-ca (and --tls-cert/--tls-key
// for mutual TLS) connect with TLS.
#ifndef TANDEM_CLI_REMOTE_GENERATE_H_
#define TANDEM_CLI_REMOTE_GENERATE_H_

#include "cli/generate_command.h"

namespace tandem::cli {

// Returns the process exit code: 0 ok, 1 a runtime error (gRPC failure,
// deadline of --timeout-s, malformed stream; a message on stderr), 2 a usage
// error. REQUIRES: !flags.remote.empty().
int RunRemoteGenerate(const GenerateFlags& flags);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_REMOTE_GENERATE_H_
