#!/usr/bin/env bash
# Set up, build, and run every test (CTest). Tests that need ../shared data or
# a GPU skip with a message when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
ctest --test-dir build --output-on-failure -j "${TANDEM_JOBS:-$(nproc)}" --timeout 900
