#!/usr/bin/env bash
# Routing policies side by side on the Mooncake conversation trace: for each
# policy, a fresh local cluster (`tandem up`: PREFILL prefill workers, DECODE
# decode workers), `tandem bench` replaying the trace, one JSON per policy, then the
# ideal hit-rate bound for the cluster's capacity (bench/trace_bound.py).
#
#   bench/routing_compare.sh OUT_DIR [policies...]
#
# Environment (defaults in brackets): MODEL [../shared/models/stories260K.gguf],
# PREFILL [4], DECODE [1], KV_MB [16] (per worker), REQUESTS [1500], BLOCK_TOKENS [8] (also
# the workers' KV block size),
# TIME_SCALE [0.25] (inter-arrival times are multiplied by it: 0.25 = 4x the
# trace's speed), MAX_TOKENS [4], SLO_TTFT [2000], SLO_TPOT [100],
# CONTEXT [] (override the model's context, which bench otherwise asks the
# cluster for: prompts are cut to fit), MAX_INPUT [0] (cut prompts to this
# many tokens; 0: no cut), THREADS [0] (per worker; 0: tandem up's default).
# At the end a markdown row per policy: hit rate vs the bound bench reports,
# TTFT p50/p90, goodput, completed/rejected/errors. TANDEM_BIN
# [build/bin/tandem]: a copy keeps a series of runs on one binary while
# others rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out="${1:?usage: routing_compare.sh OUT_DIR [policies...]}"
shift
policies=("$@")
[ ${#policies[@]} -gt 0 ] || policies=(kv round_robin least_loaded random)
model="${MODEL:-../shared/models/stories260K.gguf}"
prefill="${PREFILL:-4}"
decode="${DECODE:-1}"
kv_mb="${KV_MB:-16}"
requests="${REQUESTS:-1500}"
block_tokens="${BLOCK_TOKENS:-8}"
time_scale="${TIME_SCALE:-0.25}"
context="${CONTEXT:-}"
max_input="${MAX_INPUT:-0}"
threads="${THREADS:-0}"
max_tokens="${MAX_TOKENS:-4}"
slo_ttft="${SLO_TTFT:-2000}"
slo_tpot="${SLO_TPOT:-100}"
trace=../shared/data/traces/mooncake_conversation.jsonl
bin="${TANDEM_BIN:-build/bin/tandem}"
mkdir -p "$out"

for policy in "${policies[@]}"; do
  log="$out/up-$policy.log"
  "$bin" up --model "$model" --prefill "$prefill" --decode "$decode" --port 0 --policy "$policy" \
    --kv-cache-mb "$kv_mb" --block-size "$block_tokens" --threads "$threads" >"$out/up-$policy.out" 2>"$log" &
  up_pid=$!
  router=$(await_router "$out/up-$policy.out" "$log" "$up_pid")
  echo "== $policy: router at $router" >&2
  slo_flags=()
  # SLO_TTFT=0 sends no targets: no admission rejections, every request runs
  # (the hit-rate comparison); with targets the router rejects predicted
  # misses (the goodput comparison).
  if [ "$slo_ttft" != 0 ]; then slo_flags=(--slo-ttft "$slo_ttft" --slo-tpot "$slo_tpot"); fi
  if [ -n "$context" ]; then slo_flags+=(--context-length "$context"); fi
  "$bin" bench --target "$router" --trace "$trace" --max-requests "$requests" \
    --block-tokens "$block_tokens" --time-scale "$time_scale" --max-tokens-cap "$max_tokens" \
    "${slo_flags[@]}" --label "$policy" --json "$out/$policy.json" --max-input-tokens "$max_input" \
    2> >(tail -3 >&2) || true
  kill -TERM "$up_pid"
  wait "$up_pid" || true
done

# The cluster's prefill capacity in blocks, from a worker's ready line.
blocks=$(grep -o '"kv_blocks":[0-9]*' "$out/up-${policies[0]}.log" "$out/up-${policies[0]}.out" 2>/dev/null \
         | head -1 | cut -d: -f2- | grep -o '[0-9]*$' || true)
[ -n "$blocks" ] || blocks=$(( kv_mb * 1024 * 1024 / (block_tokens * 1280) ))
bound_input=$(( ${context:-2048} - max_tokens + 1 ))
if [ "$max_input" -gt 0 ]; then bound_input=$max_input; fi
python3 bench/trace_bound.py --trace "$trace" --max-requests "$requests" --block-tokens "$block_tokens" \
  --capacity-blocks $(( blocks * prefill )) --max-input-tokens "$bound_input" \
  --json "$out/bound.json"

python3 - "$out" "${policies[@]}" <<'PY'
import json, sys
out, policies = sys.argv[1], sys.argv[2:]
print("| policy | completed / rejected / errors | hit rate | bound | of the bound | TTFT p50 / p90 (ms) | goodput (req/s) |")
print("|---|---|---|---|---|---|---|")
for p in policies:
    try:
        j = json.load(open(f"{out}/{p}.json"))
    except OSError:
        print(f"| {p} | no result | | | | | |")
        continue
    hit, bound = j.get("prefix_hit_rate") or 0, j.get("hit_rate_bound") or 0
    t = j.get("ttft_ms") or {}
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    of = f"{100 * hit / bound:.0f}%" if bound else "-"
    print(f"| {p} | {j.get('completed')} / {j.get('rejected')} / {j.get('errors')} | {hit:.4f} | {bound:.4f} | {of} | "
          f"{fmt(t.get('p50'))} / {fmt(t.get('p90'))} | {j.get('goodput_rps') or 0:.2f} |")
PY
