#include "common/logging.h"

namespace tandem {

void InitLogging(const char* program_name) {
  if (google::IsGoogleLoggingInitialized()) return;
  FLAGS_logtostderr = true;  // stderr only: no log files in /tmp
  google::InitGoogleLogging(program_name);
}

}  // namespace tandem
