// Length-prefixed messages over a pipe, with a deadline on reads: how the
// transfer tests and transfer_bench hand a RemoteRegion (and "started"
// notices) between a parent and the child process it writes to.
#ifndef TANDEM_TRANSFER_PIPE_MESSAGES_H_
#define TANDEM_TRANSFER_PIPE_MESSAGES_H_

#include <string>

#include "absl/time/time.h"

namespace tandem::transfer {

// Writes an 8-byte length then the bytes. False when the pipe is closed.
bool SendMessage(int fd, const std::string& message);

// Reads one message (at most 1 MiB). False at EOF, on a read error, or when
// it has not fully arrived by `deadline`.
bool ReceiveMessage(int fd, std::string& message, absl::Time deadline);

}  // namespace tandem::transfer

#endif  // TANDEM_TRANSFER_PIPE_MESSAGES_H_
