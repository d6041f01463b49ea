#!/usr/bin/env bash
# The main job: set up, build, and run Tandem on the built-in default model.
# Extra arguments go to `tandem generate` (e.g. --model PATH.gguf --prompt "...").
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
exec build/bin/tandem generate "$@"
