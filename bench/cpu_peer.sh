#!/usr/bin/env bash
# Tandem's CPU backend beside llama.cpp on the same random-weight GGUF files
# (issue #19): prefill of a 512-token prompt and decode after it, 2 threads,
# alternating runs, best of N, one table with the ratio.
#
#   bench/cpu_peer.sh                         # 110m shape, F16 and Q8_0
#   SHAPES="110m llama-1b" TYPES="f16 bf16 q8_0 q4_0 q4_k" REPEATS=3 bench/cpu_peer.sh
#   BATCHES=1,4,16,64 SHAPES=110m TYPES=f16 bench/cpu_peer.sh   # + batched decode
#
# llama.cpp is built from source outside the tree, in $PEER_DIR (default
# /work/llama-peer): the npm package node-llama-cpp ships llama.cpp's sources
# as a git bundle (llama/gitRelease.bundle); only llama-bench and
# llama-batched-bench are built (-DGGML_NATIVE=ON, so AVX-512 where the CPU
# has it, nice -n 10, -j2). The GGUF files are written there too
# (bench/make_peer_gguf.py). Tandem's side is build/bin/cpu_generate_bench,
# which must be built already (cmake --build build --target cpu_generate_bench).
#
# Both programs measure the same things: llama-bench's pp512 (prefill of 512
# tokens into an empty cache) and tg$DECODE at depth 512 (decode after a
# 512-token context); cpu_generate_bench prefills a 512-token prompt and then
# decodes $DECODE tokens. Each figure is the best of $REPEATS runs, the two
# programs alternating so a busy spell on a shared machine hits both. Both
# warm up first: llama-bench runs an untimed warm-up by default, and
# cpu_generate_bench runs one untimed prefill + decode before the timed ones
# (before it did, Tandem's timed prefill paid the first touch of the weights,
# activations and KV pages: 110m BF16 prefill 772 -> 1,301 tok/s).
#
# With BATCHES set, a second table: decode tokens/s of all sequences together
# at each batch size, Tandem's engine_bench (32-token prompts, 32 timed steps,
# each of KV_DTYPES, its TTFT part cut to 16 tokens) against
# llama-batched-bench's S_TG (npp 32, ntg 32), same file.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER_DIR=${PEER_DIR:-/work/llama-peer}
SHAPES=${SHAPES:-110m}
TYPES=${TYPES:-f16 q8_0}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
DECODE=${DECODE:-64}
REPEATS=${REPEATS:-3}
# Tandem's KV cache element types: the first is the table's (f16, as
# llama-bench's and llama-batched-bench's default KV cache, so both read the
# same bytes per position), each further one (f32: the engine's CPU default)
# is run in the same alternation and printed beside it. Until 2026-12-04
# the default was f32.
KV_DTYPES=${KV_DTYPES:-${KV_DTYPE:-f16 f32}}
KV_MAIN=${KV_DTYPES%% *}
TANDEM_BENCH=${TANDEM_BENCH:-$ROOT/build/bin/cpu_generate_bench}
LLAMA_BENCH=$PEER_DIR/build/bin/llama-bench

case "$PEER_DIR" in
  "$ROOT"|"$ROOT"/*) echo "PEER_DIR must be outside the repository" >&2; exit 1 ;;
esac
[[ -x $TANDEM_BENCH ]] || { echo "build cpu_generate_bench first ($TANDEM_BENCH)" >&2; exit 1; }

build_llama() {
  mkdir -p "$PEER_DIR"
  if [[ ! -d $PEER_DIR/llama.cpp ]]; then
    (cd "$PEER_DIR" && npm pack node-llama-cpp >/dev/null && tar xzf node-llama-cpp-*.tgz &&
      git clone -q package/llama/gitRelease.bundle llama.cpp)
  fi
  nice -n 10 cmake -S "$PEER_DIR/llama.cpp" -B "$PEER_DIR/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$PEER_DIR/configure.log"
  nice -n 10 cmake --build "$PEER_DIR/build" -j2 --target llama-bench llama-batched-bench >"$PEER_DIR/build.log"
}
[[ -x $LLAMA_BENCH ]] || build_llama
LLAMA_COMMIT=$(git -C "$PEER_DIR/llama.cpp" rev-parse --short=10 HEAD)
LLAMA_TAG=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tag'])" \
  "$PEER_DIR/package/llama/llama.cpp.info.json" 2>/dev/null || echo "?")

mkdir -p "$PEER_DIR/models"
RESULTS=$(mktemp)
BATCHED=$(mktemp)
trap 'rm -f "$RESULTS" "$BATCHED"' EXIT

# One llama-bench run of one test; prints tokens/s.
llama_tps() {  # file, args...
  local file=$1
  shift
  "$LLAMA_BENCH" -m "$file" -t "$THREADS" -r 1 -o json "$@" 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)[0]['avg_ts'])"
}

for shape in $SHAPES; do
  for type in $TYPES; do
    file=$PEER_DIR/models/$shape-$type.gguf
    [[ -f $file ]] || python3 "$ROOT/bench/make_peer_gguf.py" --shape "$shape" --type "$type" --out "$file" >&2
    for rep in $(seq "$REPEATS"); do
      echo "# $shape $type run $rep/$REPEATS" >&2
      for kv in $KV_DTYPES; do
        t=$("$TANDEM_BENCH" --models "$file" --threads "$THREADS" --prompt-tokens "$PROMPT" \
          --decode-tokens "$DECODE" --repeats 1 --kv-dtype "$kv" 2>/dev/null |
          python3 -c "import json,sys; r=json.load(sys.stdin)['results'][0]; print(r['prefill_tokens_per_s'], r['decode_tokens_per_s'])")
        echo "$shape $type tandem-$kv $t" >>"$RESULTS"
      done
      lp=$(llama_tps "$file" -p "$PROMPT" -n 0)
      lg=$(llama_tps "$file" -p 0 -n "$DECODE" -d "$PROMPT")
      echo "$shape $type llama $lp $lg" >>"$RESULTS"
    done
  done
done

if [[ -n ${BATCHES:-} ]]; then
  ENGINE_BENCH=${ENGINE_BENCH:-$ROOT/build/bin/engine_bench}
  for shape in $SHAPES; do
    for type in $TYPES; do
      file=$PEER_DIR/models/$shape-$type.gguf
      for rep in $(seq "$REPEATS"); do
        echo "# batched $shape $type run $rep/$REPEATS" >&2
        for kv in $KV_DTYPES; do
          "$ENGINE_BENCH" --models "$file" --threads "$THREADS" --batches "$BATCHES" --decode-steps 32 \
            --repeats 1 --ttft-prompt-tokens 16 --kv-dtype "$kv" 2>/dev/null | python3 -c "
import json, sys
for d in json.load(sys.stdin)['results'][0]['decode']:
    print('$shape', '$type', 'tandem-$kv', d['batch'], d['decode_tokens_per_s'])" >>"$BATCHED"
        done
        "$PEER_DIR/build/bin/llama-batched-bench" -m "$file" -c 4096 -b 2048 -ub 512 -npp 32 -ntg 32 \
          -npl "$BATCHES" -t "$THREADS" --output-format jsonl 2>/dev/null | python3 -c "
import json, sys
for line in sys.stdin:
    if line.startswith('{'):
        r = json.loads(line)
        print('$shape', '$type', 'llama', r['pl'], r['speed_tg'])" >>"$BATCHED"
      done
    done
  done
fi

python3 - "$RESULTS" "$LLAMA_COMMIT" "$LLAMA_TAG" "$THREADS" "$PROMPT" "$DECODE" "$REPEATS" $KV_DTYPES <<'EOF'
import sys
path, commit, tag, threads, prompt, decode, repeats, *kvs = sys.argv[1:]
best = {}
for line in open(path):
    shape, typ, who, p, d = line.split()
    b = best.setdefault((shape, typ), {}).setdefault(who, [0.0, 0.0])
    b[0], b[1] = max(b[0], float(p)), max(b[1], float(d))
print(f"llama.cpp {tag} ({commit}), {threads} threads, best of {repeats} alternating runs, "
      f"Tandem's KV cache {kvs[0].upper()}" + "".join(f" ({k.upper()} beside it)" for k in kvs[1:]))
print()
extra = "".join(f" Tandem, KV {k.upper()} | ratio |" for k in kvs[1:])
print(f"| shape, weights | phase | Tandem tok/s | llama.cpp tok/s | Tandem / llama.cpp |{extra}")
print("|---|---|---:|---:|---:|" + "---:|---:|" * (len(kvs) - 1))
for (shape, typ), b in best.items():
    for i, phase in enumerate((f"prefill {prompt}", f"decode {decode} after {prompt}")):
        t, l = b["tandem-" + kvs[0]][i], b["llama"][i]
        more = "".join(f" {b['tandem-' + k][i]:,.1f} | {b['tandem-' + k][i] / l:.2f} |" for k in kvs[1:])
        print(f"| {shape}, {typ.upper()} | {phase} | {t:,.1f} | {l:,.1f} | {t / l:.2f} |{more}")
EOF

if [[ -s $BATCHED ]]; then
  python3 - "$BATCHED" $KV_DTYPES <<'EOF'
import sys
path, *kvs = sys.argv[1:]
best = {}
for line in open(path):
    shape, typ, who, batch, tps = line.split()
    b = best.setdefault((shape, typ, int(batch)), {})
    b[who] = max(b.get(who, 0.0), float(tps))
print()
extra = "".join(f" Tandem, KV {k.upper()} | ratio |" for k in kvs[1:])
print(f"| shape, weights | batch | Tandem decode tok/s (KV {kvs[0].upper()}) | llama.cpp S_TG tok/s | Tandem / llama.cpp |{extra}")
print("|---|---:|---:|---:|---:|" + "---:|---:|" * (len(kvs) - 1))
for (shape, typ, batch), b in sorted(best.items()):
    l = b.get("llama", 0.0)
    cells = []
    for k in kvs:
        t = b.get("tandem-" + k, 0.0)
        cells.append(f" {t:,.1f} |" + (f" {l:,.1f} |" if k == kvs[0] else "") + f" {t / l if l else float('nan'):.2f} |")
    print(f"| {shape}, {typ.upper()} | {batch} |" + "".join(cells))
EOF
fi
