#!/usr/bin/env bash
# TTFT split (queue / prefill / transfer) and TPOT through a disaggregated
# cluster (1 prefill + 1 decode worker, KV over UCX) against the colocated
# baseline (1 aggregated worker), same model, same load, one run.
#   bench/cluster_ttft.sh [MODEL] [extra cluster_bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-../shared/models/stories260K.gguf}"
shift || true
extra=("$@")
run() {  # $1 label, $2 prefill workers
  local log; log="$(mktemp)"
  build/bin/tandem up --model "$model" --prefill "$2" --decode 1 --port 0 >"$log" &
  local pid=$!
  local router=""
  for _ in $(seq 600); do
    router="$(sed -n 's/.*"event":"ready","router":"\([^"]*\)".*/\1/p' "$log")"
    [ -n "$router" ] && break
    sleep 0.1
  done
  build/bin/cluster_bench --router "$router" --label "$1" "${extra[@]}" || true
  kill -TERM "$pid"; wait "$pid" || true
}
run disaggregated 1
run aggregated 0
