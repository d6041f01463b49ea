#!/usr/bin/env bash
# Configures and builds Tandem into build/ (binaries in build/bin/).
# Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two cores are the norm here: more jobs only thrash memory.
jobs="${TANDEM_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${TANDEM_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
cmake --build build -j "$jobs"
