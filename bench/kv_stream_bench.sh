#!/usr/bin/env bash
# Chunk-streamed KV and the KV dtype through a 1 prefill + 1 decode cluster
# (issue #15), one run: TTFT with chunk streaming against sending after the
# last chunk, the share of transfer time hidden behind compute, and BF16 KV
# against F32 in bytes moved and TTFT.
#   bench/kv_stream_bench.sh                  # synthetic:qwen2-0.5b, 1,500-word prompts
#   MODEL=synthetic:llama-1b WORDS=1500 REQUESTS=2 CHUNK=256 bench/kv_stream_bench.sh
# Prints one JSON line per mode (kv dtype, streaming) with cluster_bench's
# client TTFT and the prefill worker's transfer counters.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-synthetic:qwen2-0.5b}
words=${WORDS:-1500}
requests=${REQUESTS:-2}
chunk=${CHUNK:-256}  # --max-step-tokens: a prefill chunk
bin=build/bin
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

ready() {  # $1 log file, $2 JSON key: waits for the process's ready line, prints the key's value
  for _ in $(seq 1200); do
    v=$(sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" "$1" | head -1)
    [ -n "$v" ] && { echo "$v"; return; }
    sleep 0.1
  done
  echo "kv_stream_bench: no ready line in $1" >&2; cat "$1" >&2; exit 1
}
metric() {  # $1 metrics text, $2 name
  awk -v n="$2" '$1 == n {print $2}' <<<"$1" | head -1
}

for mode in "f32 true" "f32 false" "bf16 true" "bf16 false"; do
  read -r dtype stream <<<"$mode"
  "$bin/tandem" router --model "$model" --port 0 >"$tmp/router" 2>/dev/null & pids+=($!)
  router=$(ready "$tmp/router" grpc)
  common=(--router "$router" --model "$model" --port 0 --threads 2 --kv-dtype "$dtype" --max-step-tokens "$chunk")
  "$bin/tandem" prefill "${common[@]}" --kv-stream-chunks "$stream" --metrics-port 0 >"$tmp/prefill" 2>/dev/null &
  pids+=($!)
  "$bin/tandem" decode "${common[@]}" >"$tmp/decode" 2>/dev/null & pids+=($!)
  metrics=$(ready "$tmp/prefill" metrics)
  ready "$tmp/decode" grpc >/dev/null
  result=$("$bin/cluster_bench" --router "$router" --requests "$requests" --concurrency 1 --prompt-words "$words" \
    --max-tokens 2 --label "kv=$dtype stream=$stream")
  text=$(curl -s "http://$metrics/metrics")
  python3 - "$result" "$(metric "$text" tandem_worker_kv_transfer_bytes_total)" \
    "$(metric "$text" tandem_worker_kv_transfer_seconds_total)" "$(metric "$text" tandem_worker_kv_streamed_seconds_total)" \
    "$dtype" "$stream" "$model" "$words" "$chunk" <<'PY'
import json, sys
bench = json.loads(sys.argv[1])
moved, total_s, hidden_s = (float(x or 0) for x in sys.argv[2:5])
print(json.dumps({"model": sys.argv[7], "prompt_words": int(sys.argv[8]), "chunk_tokens": int(sys.argv[9]),
                  "kv_dtype": sys.argv[5], "stream_chunks": sys.argv[6] == "true",
                  "ttft_client_ms": bench.get("ttft_client_ms"), "transfer_ms": bench.get("transfer_ms"),
                  "prefill_ms": bench.get("prefill_ms"), "kv_bytes_moved": moved,
                  "transfer_s": total_s, "hidden_s": hidden_s,
                  "hidden_fraction": hidden_s / total_s if total_s else 0}))
PY
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
