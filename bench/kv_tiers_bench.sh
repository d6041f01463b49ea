#!/usr/bin/env bash
# KV tiers through a real cluster (router + 1 prefill + 1 decode worker,
# stories260K on CPU): replays the Mooncake conversation trace with
# `tandem bench` and reads the workers' /metrics for prefix reuse per tier
# and prompt tokens computed. One line of JSON per configuration on stdout.
#   bench/kv_tiers_bench.sh [BUILD_DIR] [MAX_REQUESTS]
# Configurations (TANDEM_CONFIGS, default all but dram64): tiers off, DRAM
# only (TANDEM_KV_DRAM_BYTES, default 16 MiB; dram64: 64 MiB), DRAM+SSD (prefetch on), DRAM+SSD
# (prefetch off), and a shared `tandem store` (DRAM+SSD) behind workers with a
# small DRAM tier of their own, block bytes over UCX (store) or in gRPC
# messages (store_grpc). The pool is kept small (--kv-cache-mb 3: 153 blocks of 16
# tokens, about five prompts) so HBM overflows.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
max_requests="${2:-300}"
tandem="$build/bin/tandem"
model="${TANDEM_MODEL:-../shared/models/stories260K.gguf}"
trace="${TANDEM_TRACE:-../shared/data/traces/mooncake_conversation.jsonl}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ready_field() {  # $1 log, $2 field: waits for the ready line, prints the field
  for _ in $(seq 600); do
    local v; v="$(sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" "$1" | head -1)"
    if [ -n "$v" ]; then echo "$v"; return; fi
    sleep 0.1
  done
  echo "timeout waiting for $1" >&2; exit 1
}

metric() {  # $1 metrics host:port, $2 metric name with labels (regex); an integer, 0 when absent
  curl -s "http://$1/metrics" | awk -v m="$2" 'BEGIN {v = 0} $1 ~ "^"m"$" {v = $2} END {printf "%.0f\n", v}'
}

run() {  # $1 label, rest: worker tier flags (SSD path suffixed per worker; STORE: the store's address)
  local label="$1"; shift
  local pids=()
  "$tandem" router --port 0 --model "$model" --heartbeat-ms 200 >"$work/router.log" 2>/dev/null &
  pids+=($!)
  local router; router="$(ready_field "$work/router.log" grpc)"
  local store=""
  if [[ " $* " == *" STORE "* ]]; then
    "$tandem" store --router "$router" --model "$model" --block-size 16 --dram-bytes $((16 << 20)) \
      --ssd-path "$work/$label-store" >"$work/store.log" 2>/dev/null &
    pids+=($!)
    store="$(ready_field "$work/store.log" grpc)"
  fi
  local metrics=()
  for role in prefill decode; do
    local flags=("$@")
    for i in "${!flags[@]}"; do
      [ "${flags[$i]}" = "--kv-ssd-path" ] && flags[$((i + 1))]="$work/$label-$role"
      [ "${flags[$i]}" = "STORE" ] && flags[$i]="$store"
    done
    "$tandem" "$role" --router "$router" --model "$model" --threads 1 --block-size 16 --kv-cache-mb 3 \
      --metrics-port 0 "${flags[@]}" >"$work/$role.log" 2>/dev/null &
    pids+=($!)
    metrics+=("$(ready_field "$work/$role.log" metrics)")
  done
  "$tandem" bench --target "$router" --trace "$trace" --max-requests "$max_requests" --block-tokens 32 \
    --max-input-tokens 448 --max-tokens-cap 4 --vocab-size 512 --concurrency-limit 2 --quiet \
    --label "$label" --json "$work/$label.json" >"$work/$label.txt"
  local hbm=0 dram=0 ssd=0 store_hits=0 computed=0 ucx_bytes=0 grpc_bytes=0
  for m in "${metrics[@]}"; do
    ucx_bytes=$((ucx_bytes + $(metric "$m" 'tandem_worker_kv_store_bytes\{direction="fetch",transport="ucx"\}')))
    grpc_bytes=$((grpc_bytes + $(metric "$m" 'tandem_worker_kv_store_bytes\{direction="fetch",transport="grpc"\}')))
    store_hits=$((store_hits + $(metric "$m" 'tandem_worker_kv_hit_blocks\{tier="store"\}')))
    hbm=$((hbm + $(metric "$m" 'tandem_worker_kv_hit_blocks\{tier="hbm"\}')))
    dram=$((dram + $(metric "$m" 'tandem_worker_kv_hit_blocks\{tier="dram"\}')))
    ssd=$((ssd + $(metric "$m" 'tandem_worker_kv_hit_blocks\{tier="ssd"\}')))
    computed=$((computed + $(metric "$m" 'tandem_worker_prompt_tokens_computed')))
  done
  for ((k = ${#pids[@]} - 1; k >= 0; k--)); do kill -TERM "${pids[$k]}"; wait "${pids[$k]}" || true; done
  python3 - "$work/$label.json" "$label" "$hbm" "$dram" "$ssd" "$store_hits" "$computed" "$ucx_bytes" "$grpc_bytes" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("summary", r)
hbm, dram, ssd, store, computed, ucx_bytes, grpc_bytes = map(int, sys.argv[3:10])
print(json.dumps({"label": sys.argv[2], "requests": s.get("requests"), "completed": s.get("completed"),
                  "prefix_hit_rate": s.get("prefix_hit_rate"),
                  "hit_blocks": {"hbm": hbm, "dram": dram, "ssd": ssd, "store": store},
                  "prompt_tokens_computed": computed,
                  "store_fetch_bytes": {"ucx": ucx_bytes, "grpc": grpc_bytes},
                  "ttft_ms": s.get("ttft_ms")}), flush=True)
PY
}

dram="${TANDEM_KV_DRAM_BYTES:-$((16 << 20))}"  # 16 MiB: about 800 blocks of 16 tokens
configs="${TANDEM_CONFIGS:-off dram dram_ssd dram_ssd_noprefetch store store_grpc}"
for c in $configs; do
  case "$c" in
    off) run off ;;
    dram) run dram --kv-dram-bytes "$dram" ;;
    dram64) run dram64 --kv-dram-bytes $((64 << 20)) ;;
    dram_ssd) run dram_ssd --kv-dram-bytes "$dram" --kv-ssd-path X --kv-prefetch true ;;
    dram_ssd_noprefetch) run dram_ssd_noprefetch --kv-dram-bytes "$dram" --kv-ssd-path X --kv-prefetch false ;;
    store) run store --kv-dram-bytes $((2 << 20)) --kv-store STORE ;;
    store_grpc) run store_grpc --kv-dram-bytes $((2 << 20)) --kv-store STORE --kv-store-transport grpc ;;
  esac
done
