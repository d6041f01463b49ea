#!/usr/bin/env bash
# Fails (exit 1) when a tracked C++/CUDA source differs from .clang-format, and
# lists the files. The tree was formatted once (commit 051e05b); this keeps it
# that way. Fix with:  clang-format-14 -i <files>
# clang-format 14 is pinned: other versions format some constructs differently.
set -euo pipefail
cd "$(dirname "$0")/.."

clang_format="${CLANG_FORMAT:-clang-format-14}"
if ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "check_format: $clang_format not found (Debian: clang-format-14)" >&2
  exit 1
fi

# One process per 50 files; --dry-run -Werror reports "FILE:LINE:COL: error:"
# for every line it would change, so the file names come from its output.
report="$(git ls-files -z '*.h' '*.cc' '*.cu' |
  xargs -0 -n 50 -P "${TANDEM_JOBS:-$(nproc)}" "$clang_format" --dry-run -Werror 2>&1)" && exit_code=0 ||
  exit_code=$?
if [ "$exit_code" -ne 0 ]; then
  files="$(printf '%s\n' "$report" | sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: .*/\1/p' | sort -u)"
  if [ -z "$files" ]; then
    printf '%s\n' "$report" >&2  # clang-format itself failed: show why
  else
    echo "check_format: these files differ from .clang-format:" >&2
    printf '  %s\n' $files >&2
    echo "fix: $clang_format -i <files>" >&2
  fi
  exit 1
fi
echo "check_format: $(git ls-files '*.h' '*.cc' '*.cu' | wc -l) files formatted"
