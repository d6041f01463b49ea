#!/usr/bin/env bash
# Fails when a function in the request-path code is longer than the limit
# (default 120 lines): router/, engine/, the worker layer (worker_common/,
# decode_worker/, prefill_worker/) and cli/, tests excluded. Long functions
# there were where the tree got hard to follow (the architecture review of
# 2026-12: a 336-line RunWorker, a 231-line Placement::Place); the limit
# keeps them split into named steps. Uses universal-ctags' end lines.
#
#   scripts/check_function_sizes.sh          # check, print the longest five
#   LIMIT=80 scripts/check_function_sizes.sh # a tighter bound
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${LIMIT:-120}"
dirs=(router engine worker_common decode_worker prefill_worker cli)
sizes=$(git ls-files "${dirs[@]/%//*.cc}" "${dirs[@]/%//*.h}" | grep -v '_test\.cc$' |
  xargs ctags --fields=+ne --kinds-c++=f --languages=C++ -o - --sort=no |
  awk -F'\t' '{ l = ""; e = "";
                for (i = 4; i <= NF; i++) { if ($i ~ /^line:/) l = substr($i, 6); if ($i ~ /^end:/) e = substr($i, 5) }
                if (e != "") print e - l + 1, $2 ":" l, $1 }' | sort -rn)
echo "longest functions (limit ${limit} lines):"
echo "${sizes}" | sed -n "1,5s/^/  /p"
over=$(echo "${sizes}" | awk -v limit="${limit}" '$1 > limit')
if [ -n "${over}" ]; then
  echo "functions over ${limit} lines (split them into named steps):" >&2
  echo "${over}" | sed 's/^/  /' >&2
  exit 1
fi
