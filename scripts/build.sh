#!/usr/bin/env bash
# Configures and builds Tandem into build/ (binaries in build/bin/).
# Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: name sources relative to the checkout and leave the build directory
# out of the hash, so a fresh clone elsewhere (CI) reuses earlier objects.
# The cost: debug info in a reused object may name the other checkout's path.
export CCACHE_BASEDIR="$PWD"
export CCACHE_NOHASHDIR=1
# Two cores are the norm here: more jobs only thrash memory.
jobs="${TANDEM_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${TANDEM_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
cmake --build build -j "$jobs"
