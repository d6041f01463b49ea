#!/usr/bin/env bash
# Two tenants, one sending 10x the other's load (issue 18, flow control): on
# one fresh 1 prefill + 1 decode cluster, the light tenant alone and the
# heavy and light tenants together, alternating in ROUNDS rounds (alone,
# together, alone, ...; each `tandem bench` run drains before the next), so
# both phases share the machine's slow and fast spells instead of one phase
# getting each; prints the light tenant's TTFT p50/p90 in both, their ratio,
# and where its time went (router queue, prefill, transfer: the router's
# timings, from the per-request samples).
#
#   bench/tenant_fairness.sh OUT_DIR [extra `tandem up` flags...]
#
# Environment (defaults in brackets): MODEL [../shared/models/stories260K.gguf],
# THREADS [1] (per worker), INPUT_LEN [256], OUTPUT_LEN [32], LIGHT_RATE [30]
# and LIGHT_N [300] (the light tenant, requests/s and count, in each phase of
# each round: 10 s), HEAVY_FACTOR [10] (the heavy tenant sends this many
# times the light one's rate beside it), ROUNDS [3] (1: the light tenant
# alone, then both, once, as before), WARMUP_MS [1000] (light requests sent
# in the first WARMUP_MS of every run are not counted: beside the heavy
# tenant its backlog is still building then; the together phase takes some
# seconds to reach its steady state, so shorter phases than 10 s flatter it),
# TANDEM_BIN [build/bin/tandem].
# PREFILL_CPUS, DECODE_CPUS, OTHER_CPUS [unset: all cores]: CPU lists for
# taskset: the prefill worker, the decode worker, and the rest (router, this
# load generator). DECODE_NICE [0]: the decode worker's nice value (every
# thread); DECODE_ENGINE_NICE [0]: its engine (compute) thread's only. On a
# 2-core machine these stand in for a deployment where the roles own separate
# devices and the router its own host; unset, all processes share all cores.
# Writes OUT_DIR/solo-R.json and OUT_DIR/mix-R.json (`tandem bench --json`,
# round R) and OUT_DIR/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out="${1:?usage: tenant_fairness.sh OUT_DIR [extra tandem up flags...]}"
shift
model="${MODEL:-../shared/models/stories260K.gguf}"
threads="${THREADS:-1}"
input_len="${INPUT_LEN:-256}"
output_len="${OUTPUT_LEN:-32}"
light_rate="${LIGHT_RATE:-30}"
light_n="${LIGHT_N:-300}"
heavy_factor="${HEAVY_FACTOR:-10}"
rounds="${ROUNDS:-3}"
warmup_ms="${WARMUP_MS:-1000}"
bin="${TANDEM_BIN:-build/bin/tandem}"
mkdir -p "$out"

pin_other=()
if [ -n "${OTHER_CPUS:-}" ]; then pin_other=(taskset -c "$OTHER_CPUS"); fi

"${pin_other[@]}" "$bin" up --model "$model" --prefill 1 --decode 1 --port 0 --threads "$threads" "$@" \
  >"$out/up.out" 2>"$out/up.log" &
up_pid=$!
trap 'kill "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true' EXIT
router=$(await_router "$out/up.out" "$out/up.log" "$up_pid")
role_pid() { grep "\"role\":\"$1\"" "$out/up.out" | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2; }
# -a: every thread the worker has now; threads it starts later inherit it.
[ -z "${PREFILL_CPUS:-}" ] || taskset -a -c -p "$PREFILL_CPUS" "$(role_pid prefill)" >/dev/null
[ -z "${DECODE_CPUS:-}" ] || taskset -a -c -p "$DECODE_CPUS" "$(role_pid decode)" >/dev/null
if [ "${DECODE_NICE:-0}" != 0 ]; then
  # nice is per thread on Linux: every thread now; later ones inherit it.
  for task in /proc/"$(role_pid decode)"/task/*; do renice -n "$DECODE_NICE" -p "${task##*/}" >/dev/null; done
fi
# DECODE_ENGINE_NICE: the decode worker's engine (compute) thread only.
if [ "${DECODE_ENGINE_NICE:-0}" != 0 ]; then
  for task in /proc/"$(role_pid decode)"/task/*; do
    if [ "$(cat "$task/comm")" = engine ]; then renice -n "$DECODE_ENGINE_NICE" -p "${task##*/}" >/dev/null; fi
  done
fi
echo "== router at $router (cpus: prefill ${PREFILL_CPUS:-all}, decode ${DECODE_CPUS:-all}," \
  "others ${OTHER_CPUS:-all}; decode nice ${DECODE_NICE:-0})" >&2

bench=("${pin_other[@]}" "$bin" bench --target "$router" --synthetic --input-len "$input_len"
  --output-len "$output_len" --prefix-fraction 0 --quiet)
heavy_rate=$((light_rate * heavy_factor))

for round in $(seq 1 "$rounds"); do
  "${bench[@]}" --seed $((2 * round - 1)) --num-requests "$light_n" --rate "$light_rate" --tenant light:1 \
    --json "$out/solo-$round.json" --label "solo-$round" >/dev/null
  "${bench[@]}" --seed $((2 * round)) --num-requests $((light_n * (heavy_factor + 1))) \
    --rate $((heavy_rate + light_rate)) --tenant "heavy:$heavy_factor" --tenant light:1 \
    --json "$out/mix-$round.json" --label "mix-$round" >/dev/null
done

python3 - "$out" "$rounds" "$warmup_ms" <<'EOF'
import json, sys
out, rounds, warmup_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def runs(phase):
    return [json.load(open(f"{out}/{phase}-{r}.json")) for r in range(1, rounds + 1)]

def tenant_counts(js, name):
    ts = [j.get("tenants", {}).get(name, j) for j in js]
    return {k: sum(t.get(k, 0) for t in ts) for k in ("completed", "rejected", "errors")}

def counted(j):
    # A run's light samples past its warm-up.
    return [x for x in j["samples"]
            if x.get("tenant", "light") == "light" and x.get("sent_ms", 0) >= warmup_ms]

def light(js):
    s = [x for j in js for x in counted(j)]  # every round's, pooled
    ttft = [x.get("ttft_ms") for x in s]
    parts = {k: [pct([x.get(k) for x in s], 50), pct([x.get(k) for x in s], 90)]
             for k in ("queue_ms", "admission_ms", "reserve_ms", "prefill_ms", "transfer_ms")}
    r = {"ttft_p50_ms": pct(ttft, 50), "ttft_p90_ms": pct(ttft, 90), "counted": len(s),
         "p50_p90_ms": parts, "served_rps": sum(j["throughput_rps"] for j in js) / len(js),
         "rounds_ttft_p90_ms": [pct([x.get("ttft_ms") for x in counted(j)], 90) for j in js]}
    r.update(tenant_counts(js, "light"))
    return r

solo_runs, mix_runs = runs("solo"), runs("mix")
solo, mix = light(solo_runs), light(mix_runs)
summary = {"rounds": rounds, "warmup_ms": warmup_ms, "solo": solo, "mix": mix,
           "heavy": tenant_counts(mix_runs, "heavy"),
           "light_p90_ratio": mix["ttft_p90_ms"] / solo["ttft_p90_ms"]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
for name, r in (("light alone", solo), ("light beside heavy", mix)):
    p = r["p50_p90_ms"]
    print(f"{name}: TTFT p50/p90 {r['ttft_p50_ms']:.1f}/{r['ttft_p90_ms']:.1f} ms, "
          f"completed {r['completed']} refused {r['rejected']} errors {r['errors']} "
          f"(counted {r['counted']}); "
          f"queue {p['queue_ms'][0]:.1f}/{p['queue_ms'][1]:.1f} (router {p['admission_ms'][0]:.1f}/"
          f"{p['admission_ms'][1]:.1f}, reserve {p['reserve_ms'][0]:.1f}/{p['reserve_ms'][1]:.1f}), prefill {p['prefill_ms'][0]:.1f}/"
          f"{p['prefill_ms'][1]:.1f}, transfer {p['transfer_ms'][0]:.1f}/{p['transfer_ms'][1]:.1f} ms; "
          f"served {r['served_rps']:.1f} req/s")
print(f"heavy: {summary['heavy']}")
print(f"light TTFT p90 ratio: {summary['light_p90_ratio']:.2f}")
EOF
