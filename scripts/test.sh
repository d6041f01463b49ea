#!/usr/bin/env bash
# Set up, check the style (formatting, lock annotations), build, and run every
# test (CTest). Tests that need ../shared data or a GPU skip with a message
# when those are absent; CTest counts them as skipped, not passed, and GPU
# tests carry the label `gpu` (ctest -L gpu / -LE gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/check_format.sh        # clang-format 14: fails fast, before the build, with the file list
./scripts/check_function_sizes.sh # no function over 120 lines in router/, engine/, the worker layer, cli/
./scripts/build.sh
./scripts/check_thread_safety.sh # clang -Wthread-safety over the annotated code (needs the build's compile_commands.json)
ctest --test-dir build --output-on-failure -j "${TANDEM_JOBS:-$(nproc)}" --timeout 900
