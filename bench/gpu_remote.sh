#!/usr/bin/env bash
# Runs Tandem's GPU checks and benchmarks from a folder packed by
# bench/gpu_run.sh, on a machine that has none of our Debian packages (the
# device tool's Ubuntu 24.04 H200 machine), in at most ~8 minutes.
#
#   bash PACK_DIR/gpu_remote.sh PACK_DIR RESULTS_DIR [--device cuda|cpu|cpu-guarded]
#                               [--keep-going] [--keep-logs]
#
# Steps, in order, each under `timeout` and inside one overall budget
# ($GPU_REMOTE_BUDGET_S, default 450 s):
#   libs                       every packed binary resolves its libraries
#   nvidia_smi                 nvidia-smi -L, and where cuBLAS is (cuda only)
#   backend_consistency_test   every kernel on CUDA against the CPU backend
#   cuda_golden_test           stories260K greedy vs llama.cpp on CUDA
#   up_stories260K             tandem up --device DEV, 1 prefill + 1 decode
#   greedy_stories260K         tandem generate --remote vs the llama.cpp tokens
#   bench_stories260K          tandem bench --synthetic (TTFT/TPOT)
#   down_stories260K           SIGTERM, and up exits 0
#   up_llama-1b, bench_llama-1b, down_llama-1b   the same on synthetic:llama-1b
#   gpu_decode_bench           decode TPOT / prefill against measured bounds
#   hf_peer                    transformers peer (skipped without torch)
#
# Fails fast: the first failing step ends the run (the rest are "not_run")
# with one line naming it and the tail of its log; --keep-going runs the
# steps that do not depend on it instead. With --device cpu or cpu-guarded the
# GPU-only steps are skipped (the two CUDA test binaries still run, which
# proves they load from the pack, and report their CUDA cases as skipped);
# with --device cuda a test whose CUDA cases skip is a failure, since it means
# the GPU was not usable.
#
# RESULTS_DIR gets summary.json ({step: {rc, seconds, status, note}}, rewritten
# after every step), the JSON results (greedy_stories260K.json,
# bench_stories260K.json, bench_llama-1b.json, gpu_decode_bench.json,
# hf_peer.json) and the step logs, bundled at the end into logs.tar.gz (the
# device tool brings back at most 8 files; --keep-logs leaves them loose).
# Exit status: 0 when every step that ran passed, else 1.
#
# Environment overrides: GPU_REMOTE_BUDGET_S, GREEDY_MARGIN (logit margin below
# which greedy tokens may part), BENCH_STORIES_ARGS, BENCH_LLAMA_ARGS,
# GPU_DECODE_BENCH_ARGS, HF_PEER_ARGS, KV_CACHE_MB, KV_DTYPE (the clusters'
# --kv-dtype, default auto; KV_DTYPE=bf16 --device cpu-guarded rehearses the
# GPU's KV type and staged path on a CPU).
set -uo pipefail

usage() {
  echo "usage: $0 PACK_DIR RESULTS_DIR [--device cuda|cpu|cpu-guarded] [--keep-going] [--keep-logs]" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
PACK=$(cd "$1" && pwd) || usage
RES=$2
shift 2
DEV=cuda
KEEP_GOING=0
KEEP_LOGS=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEV=${2:-}; shift 2 ;;
    --device=*) DEV=${1#--device=}; shift ;;
    --keep-going) KEEP_GOING=1; shift ;;
    --keep-logs) KEEP_LOGS=1; shift ;;
    *) usage ;;
  esac
done
case $DEV in cuda | cpu | cpu-guarded) ;; *) echo "gpu_remote: --device must be cuda, cpu or cpu-guarded" >&2; exit 2 ;; esac
[[ -n $RES ]] || { echo "gpu_remote: RESULTS_DIR is empty (is \$OUT set?)" >&2; exit 2; }
mkdir -p "$RES" && RES=$(cd "$RES" && pwd) || exit 2

BUDGET_S=${GPU_REMOTE_BUDGET_S:-450}
KV_DTYPE=${KV_DTYPE:-auto}  # the clusters' --kv-dtype; auto: bf16 on CUDA, f32 on the CPU
T0=$(date +%s)
BIN=$PACK/bin
SHARED=$PACK/shared
STORIES=$SHARED/models/stories260K.gguf
REFERENCE=$SHARED/data/reference/stories260K_greedy.jsonl
say() { echo "gpu_remote: $*"; }

# --- Libraries: unpacked once into /tmp (the pack may be read-only) -------
if [[ -d $PACK/lib ]]; then
  LIBDIR=$PACK/lib
elif [[ -f $PACK/lib.tar.xz ]]; then
  LIBDIR=/tmp/tandem-pack-$(cksum <"$PACK/lib.tar.xz" | cut -d' ' -f1)/lib
  if [[ ! -f $LIBDIR/.unpacked ]]; then
    rm -rf "${LIBDIR%/lib}" && mkdir -p "${LIBDIR%/lib}" || exit 1
    # xz-utils may be absent on a bare image; Python's lzma is not.
    if command -v xz >/dev/null; then
      xz -dc "$PACK/lib.tar.xz" | tar -x -C "${LIBDIR%/lib}"
    else
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$PACK/lib.tar.xz" "${LIBDIR%/lib}"
    fi || { say "FAILED: cannot unpack $PACK/lib.tar.xz"; exit 1; }
    touch "$LIBDIR/.unpacked"
  fi
else
  say "FAILED: $PACK has neither lib/ nor lib.tar.xz (was it packed by bench/gpu_run.sh?)"
  exit 1
fi
# Only our binaries get the packed libraries: python3 and nvidia-smi keep the
# machine's own (our Debian 12 libstdc++/libssl are older than Ubuntu's). The
# CUDA toolkit's folders come after ours for cuBLAS; the machine's own
# LD_LIBRARY_PATH (where containers put libcuda.so.1) last.
PACK_LD=$LIBDIR:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export TANDEM_SHARED_DIR=$SHARED
if [[ -z ${TANDEM_CUBLAS_LIBRARY:-} ]]; then
  for c in /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.13 \
    /usr/local/cuda-13*/lib64/libcublas.so.13; do
    if [[ -e $c ]]; then export TANDEM_CUBLAS_LIBRARY=$c; break; fi
  done
fi

# --- Step bookkeeping -----------------------------------------------------
NAMES=() RCS=() SECS=() STATUSES=() NOTES=()
FAILED=""
UP_PID=""
UP_ADDR=""

write_summary() {
  local i sep="" out="{"
  for i in "${!NAMES[@]}"; do
    out+=$(printf '%s\n  "%s": {"rc": %s, "seconds": %s, "status": "%s", "note": "%s"}' "$sep" \
      "${NAMES[$i]}" "${RCS[$i]}" "${SECS[$i]}" "${STATUSES[$i]}" "${NOTES[$i]}")
    sep=","
  done
  out+=$(printf '%s\n  "_run": {"device": "%s", "kv_dtype": "%s", "failed_step": "%s", "seconds": %s, "budget_s": %s}\n}' \
    "$sep" "$DEV" "$KV_DTYPE" "$FAILED" "$(($(date +%s) - T0))" "$BUDGET_S")
  echo "$out" >"$RES/summary.json.tmp" && mv "$RES/summary.json.tmp" "$RES/summary.json"
}

record() {  # NAME RC SECONDS STATUS NOTE
  NAMES+=("$1") RCS+=("$2") SECS+=("$3") STATUSES+=("$4")
  NOTES+=("$(tr '\n\t"\\' "  ''" <<<"$5" | sed 's/ *$//')")
  write_summary
}

skip_step() {  # NAME NOTE
  say "$(printf '%-8s' skip)$1: $2"
  record "$1" null 0 skipped "$2"
}

# run_step NAME TIMEOUT NEEDS CMD...: runs CMD (a function or program) with
# stdout and stderr in RESULTS_DIR/NAME.log. STEP_TIMEOUT is what is left of
# TIMEOUT within the budget; NEEDS names a step that must have passed
# ("-" for none). A step may set STEP_STATUS/STEP_NOTE.
run_step() {
  local name=$1 limit=$2 needs=$3
  shift 3
  if [[ -n $FAILED && $KEEP_GOING == 0 ]]; then
    record "$name" null 0 not_run "after $FAILED failed"
    return
  fi
  if [[ $needs != - ]] && ! step_passed "$needs"; then
    record "$name" null 0 not_run "needs $needs"
    return
  fi
  local left=$((BUDGET_S - ($(date +%s) - T0) - 10))
  if ((left < 5)); then
    say "FAILED at step $name: the ${BUDGET_S} s budget is spent"
    FAILED=${FAILED:-$name}
    record "$name" null 0 not_run "budget of ${BUDGET_S} s spent"
    return
  fi
  STEP_TIMEOUT=$((limit < left ? limit : left))
  STEP_LOG=$RES/$name.log
  STEP_STATUS=ok
  STEP_NOTE=""
  local start end rc secs
  start=$(date +%s.%N)
  "$@" >"$STEP_LOG" 2>&1
  rc=$?
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if ((rc == 124 || rc == 137)); then
    STEP_NOTE="timed out after ${STEP_TIMEOUT} s${STEP_NOTE:+; $STEP_NOTE}"
  fi
  if ((rc != 0)); then
    STEP_STATUS=failed
    FAILED=${FAILED:-$name}
    record "$name" "$rc" "$secs" failed "$STEP_NOTE"
    say "FAILED at step $name (rc $rc${STEP_NOTE:+; $STEP_NOTE}) after $secs s; last lines of $name.log:"
    tail -n 25 "$STEP_LOG" | sed 's/^/    | /'
    [[ $KEEP_GOING == 1 ]] || say "stopping here (fail fast; --keep-going runs the independent steps)"
  else
    record "$name" 0 "$secs" "$STEP_STATUS" "$STEP_NOTE"
    say "$(printf '%-8s' "$STEP_STATUS")$name ($secs s)${STEP_NOTE:+: $STEP_NOTE}"
  fi
}

step_passed() {
  local i
  for i in "${!NAMES[@]}"; do
    [[ ${NAMES[$i]} == "$1" && ${STATUSES[$i]} != failed && ${STATUSES[$i]} != not_run ]] && return 0
  done
  return 1
}

# A packed program, with the packed libraries, under the step's timeout.
packed() { LD_LIBRARY_PATH=$PACK_LD timeout -k 5 "$STEP_TIMEOUT" "$@"; }

# --- Steps ----------------------------------------------------------------
check_libs() {
  local b out missing=0 outside=""
  for b in "$BIN"/*; do
    out=$(LD_LIBRARY_PATH=$PACK_LD ldd "$b")
    printf '== %s\n%s\n' "$b" "$out"
    grep -q 'not found' <<<"$out" && missing=1
    # Outside the pack is expected only for what device-pack leaves out (libc,
    # libm, the loader, the driver's libcuda).
    outside+=$(awk -v lib="$LIBDIR/" '/=> \// && index($3, lib) != 1 {print $1}' <<<"$out")$'\n'
  done
  outside=$(sort -u <<<"$outside" | grep . | tr '\n' ' ')
  outside=${outside% }
  echo "resolved outside the pack: ${outside:-none}"
  STEP_NOTE="outside the pack: ${outside:-none}"
  # The machine, for reading a failure later: UCX's shared-memory transports
  # want /dev/shm, pinned staging wants the memlock limit.
  echo "== machine"
  grep -h PRETTY_NAME /etc/os-release 2>/dev/null
  echo "kernel $(uname -r), $(nproc) cpus, memlock $(ulimit -l)"
  grep -E 'MemTotal|MemAvailable' /proc/meminfo
  df -h /dev/shm /tmp 2>/dev/null
  env | grep -E '^(UCX_|CUDA_|NVIDIA_|LD_LIBRARY_PATH|TANDEM_)' | sort
  ((missing == 0)) || { STEP_NOTE="a library is not found (see libs.log)"; return 1; }
}

gpu_env() {
  timeout -k 5 "$STEP_TIMEOUT" nvidia-smi -L || return
  timeout -k 5 "$STEP_TIMEOUT" nvidia-smi --query-gpu=name,driver_version,compute_mode,memory.total,memory.used \
    --format=csv || true
  local cublas=${TANDEM_CUBLAS_LIBRARY:-}
  [[ -n $cublas ]] || cublas=$(ldconfig -p 2>/dev/null | awk '/libcublas\.so\.13 /{print $NF; exit}')
  echo "cuBLAS: ${cublas:-libcublas.so.13 NOT FOUND (set TANDEM_CUBLAS_LIBRARY; the CUDA tests will fail)}"
  STEP_NOTE="$(nvidia-smi -L 2>/dev/null | head -1 | cut -c1-60); cuBLAS ${cublas:-NOT FOUND}"
}

# A gtest binary; on CUDA a skipped case means no usable GPU, so it fails.
gtest_step() {
  packed "$@" || return
  local skipped
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}, listed below:.*/\1/p' "$STEP_LOG")
  skipped=${skipped:-0}
  if [[ $DEV == cuda && $skipped -gt 0 ]]; then
    STEP_NOTE="$skipped case(s) skipped on --device cuda: the GPU or cuBLAS was not usable"
    return 1
  fi
  if [[ $DEV != cuda ]]; then
    STEP_STATUS=skipped
    STEP_NOTE="no GPU (--device $DEV): the binary loads from the pack; $skipped CUDA case(s) skip"
  fi
}

# up_cluster MODEL EXTRA...: starts tandem up in the background and waits for
# its ready event ({"event":"ready","router":"host:port",...} on stdout).
up_cluster() {
  local model=$1
  shift
  UP_ADDR=""
  LD_LIBRARY_PATH=$PACK_LD "$BIN/tandem" up --device "$DEV" --kv-dtype "$KV_DTYPE" --prefill 1 --decode 1 \
    --model "$model" --host 127.0.0.1 --port 0 --http-port -1 --ready-timeout-s "$STEP_TIMEOUT" "$@" \
    >>"$STEP_LOG" 2>&1 &
  UP_PID=$!
  local deadline=$(($(date +%s) + STEP_TIMEOUT)) line
  while (($(date +%s) < deadline)); do
    line=$(grep -m1 '"event":"ready"' "$STEP_LOG" || true)
    if [[ -n $line ]]; then
      UP_ADDR=$(sed -n 's/.*"router":"\([^"]*\)".*/\1/p' <<<"$line")
      STEP_NOTE="router at $UP_ADDR"
      return 0
    fi
    if ! kill -0 "$UP_PID" 2>/dev/null; then
      wait "$UP_PID"
      STEP_NOTE="tandem up exited with $? before its ready event"
      UP_PID=""
      return 1
    fi
    sleep 0.2
  done
  STEP_NOTE="no ready event within ${STEP_TIMEOUT} s"
  stop_up >/dev/null 2>&1
  return 124
}

# SIGTERM, then up must exit 0 within 20 s (it gives its children 5 s).
stop_up() {
  [[ -n $UP_PID ]] || return 0
  local pid=$UP_PID i
  UP_PID=""
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    STEP_NOTE="tandem up ignored SIGTERM for 20 s; killed"
    return 1
  fi
  wait "$pid"
  local rc=$?
  ((rc == 0)) || STEP_NOTE="tandem up exited $rc on SIGTERM"
  return $rc
}

# Greedy tokens through the cluster against llama.cpp's, token by token up to
# the first step whose reference top-1/top-2 margin is within what the
# precision may move a logit (after it the sequences may legitimately part).
greedy_step() {
  local margin=${GREEDY_MARGIN:-}
  if [[ -z $margin ]]; then
    # Twice the most a logit may move (both top logits can): CUDA's BF16
    # weights and KV, cuda_golden_test's 0.25; on the CPU, golden_test's
    # bounds for the KV type (F32 1e-3, BF16 0.12, F16 0.017).
    case $DEV/$KV_DTYPE in
      cuda/*) margin=0.5 ;;
      */bf16) margin=0.24 ;;
      */f16) margin=0.034 ;;
      *) margin=0.002 ;;
    esac
  fi
  STEP_NOTE="margin $margin"
  timeout -k 5 "$STEP_TIMEOUT" env TANDEM_LD="$PACK_LD" python3 - "$BIN/tandem" "$UP_ADDR" "$REFERENCE" \
    "$margin" "$RES/greedy_stories260K.json" <<'PY'
import json, os, subprocess, sys
tandem, addr, reference, margin, out = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
env = dict(os.environ, LD_LIBRARY_PATH=os.environ["TANDEM_LD"])
results, ok = [], True
for line in open(reference):
    if not line.strip():
        continue
    rec = json.loads(line)
    cmd = [tandem, "generate", "--remote", addr, "--prompt", rec["prompt"], "--max-tokens",
           str(rec["n_predict"]), "--temperature", "0", "--json", "--timeout-s", "60"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    r = {"id": rec["id"], "rc": p.returncode}
    if p.returncode != 0:
        r["error"] = p.stderr.strip()[-500:]
        ok = False
        results.append(r)
        print(f"record {rec['id']}: tandem generate failed ({p.returncode}): {r['error']}")
        continue
    got = json.loads(p.stdout.strip().splitlines()[-1])
    want, margins = rec["generated_token_ids"], rec["step_top1_top2_margin"]
    gen = got["generated_token_ids"]
    r["prompt_tokens_equal"] = got["prompt_token_ids"] == rec["prompt_token_ids"]
    compared, mismatch = 0, None
    for i, w in enumerate(want):
        if i >= len(gen):
            mismatch = {"step": i, "why": "generation stopped early"}
            break
        compared += 1
        if gen[i] != w:
            mismatch = {"step": i, "got": gen[i], "want": w, "margin": margins[i]}
            break
        if margins[i] <= margin:
            r["stopped_at_near_tie"] = {"step": i, "margin": margins[i]}
            break
    r.update(compared=compared, matched=compared - (mismatch is not None), mismatch=mismatch,
             identical=gen == want, text=got.get("text", ""))
    good = r["prompt_tokens_equal"] and mismatch is None
    ok = ok and good
    results.append(r)
    print(f"record {rec['id']}: {'ok' if good else 'MISMATCH'}: {r['matched']}/{len(want)} tokens checked"
          f"{' (identical)' if r['identical'] else ''}; mismatch: {mismatch}")
json.dump({"router": addr, "margin": margin, "ok": ok, "records": results}, open(out, "w"), indent=1)
checked = sum(r.get("matched", 0) for r in results)
same = sum(1 for r in results if r.get("identical"))
print(f"SUMMARY: {sum(1 for r in results if r.get('mismatch') is None and r['rc'] == 0)}/{len(results)} records "
      f"match; {checked} tokens checked; {same} identical to llama.cpp's whole sequence")
sys.exit(0 if ok and results else 1)
PY
  local rc=$?
  STEP_NOTE="margin $margin; $(sed -n 's/^SUMMARY: //p' "$STEP_LOG")"
  ((rc == 0)) || STEP_NOTE="greedy tokens differ from llama.cpp above the margin $margin, or a request failed"
  return $rc
}

# bench_step NAME ARGS...: tandem bench --synthetic against the running cluster;
# every request must complete.
bench_step() {
  local name=$1
  shift
  packed "$BIN/tandem" bench --target "$UP_ADDR" --synthetic --label "$name-$DEV" \
    --json "$RES/$name.json" "$@" || return
  local line
  line=$(python3 - "$RES/$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
f = lambda p: "-" if p is None else f"{p:.2f}"
print(f"{j['completed']}/{j['requests']} completed, {j['errors']} errors, {j['rejected']} rejected; "
      f"TTFT p50 {f(j['ttft_ms']['p50'])} p90 {f(j['ttft_ms']['p90'])} ms; "
      f"TPOT p50 {f(j['tpot_ms']['p50'])} p90 {f(j['tpot_ms']['p90'])} ms")
sys.exit(0 if j["completed"] == j["requests"] and j["errors"] == 0 else 3)
PY
  )
  local rc=$?
  STEP_NOTE=$line
  echo "$line"
  return $rc
}

decode_bench_step() {
  # shellcheck disable=SC2086
  packed "$BIN/gpu_decode_bench" ${GPU_DECODE_BENCH_ARGS:---presets llama-1b,llama-8b} \
    --json "$RES/gpu_decode_bench.json"
}

hf_peer_step() {
  if ! python3 -c 'import torch, transformers' 2>/dev/null; then
    STEP_STATUS=skipped
    STEP_NOTE="python3 lacks torch or transformers"
    python3 -c 'import torch, transformers' 2>&1 | tail -1
    return 0
  fi
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout -k 5 "$STEP_TIMEOUT" python3 "$PACK/hf_peer.py" ${HF_PEER_ARGS:---presets llama-1b} \
    --json "$RES/hf_peer.json"
}

on_exit() {
  [[ -n $UP_PID ]] && stop_up >/dev/null 2>&1
  write_summary
}
trap on_exit EXIT
trap 'say "interrupted"; exit 130' INT TERM

say "pack $PACK, results $RES, device $DEV, budget ${BUDGET_S} s, libraries $LIBDIR"
[[ -f $PACK/pack.json ]] && say "packed: $(tr -d '\n' <"$PACK/pack.json")"

run_step libs 30 - check_libs
if [[ $DEV == cuda ]]; then
  run_step nvidia_smi 20 - gpu_env
else
  skip_step nvidia_smi "no GPU wanted (--device $DEV)"
fi
run_step backend_consistency_test 90 libs gtest_step "$BIN/backend_consistency_test"
run_step cuda_golden_test 60 libs gtest_step "$BIN/cuda_golden_test"

if [[ $DEV == cuda ]]; then
  kv_mb=${KV_CACHE_MB:-2048}
  stories_args=${BENCH_STORIES_ARGS:---num-requests 64 --input-len 128 --output-len 32 --rate 20}
  llama_args=${BENCH_LLAMA_ARGS:---num-requests 32 --input-len 512 --output-len 64 --rate 4}
else  # two shared CPU cores in the rehearsal: a token of llama-1b is ~1 s there
  kv_mb=${KV_CACHE_MB:-256}
  stories_args=${BENCH_STORIES_ARGS:---num-requests 16 --input-len 64 --output-len 16 --rate 8}
  llama_args=${BENCH_LLAMA_ARGS:---num-requests 2 --input-len 16 --output-len 3}
fi

run_step up_stories260K 60 libs up_cluster "$STORIES" --kv-cache-mb "$kv_mb"
run_step greedy_stories260K 60 up_stories260K greedy_step
# shellcheck disable=SC2086
run_step bench_stories260K 90 up_stories260K bench_step bench_stories260K $stories_args
KEEP_GOING_SAVED=$KEEP_GOING KEEP_GOING=1  # always stop a cluster that was started
run_step down_stories260K 30 up_stories260K stop_up
KEEP_GOING=$KEEP_GOING_SAVED

run_step up_llama-1b 120 libs up_cluster synthetic:llama-1b --kv-cache-mb "$kv_mb"
# shellcheck disable=SC2086
run_step bench_llama-1b 120 up_llama-1b bench_step bench_llama-1b $llama_args
KEEP_GOING_SAVED=$KEEP_GOING KEEP_GOING=1
run_step down_llama-1b 30 up_llama-1b stop_up
KEEP_GOING=$KEEP_GOING_SAVED

if [[ $DEV == cuda ]]; then
  run_step gpu_decode_bench 120 nvidia_smi decode_bench_step
  run_step hf_peer 90 nvidia_smi hf_peer_step
else
  skip_step gpu_decode_bench "needs a GPU (--device $DEV)"
  skip_step hf_peer "needs a GPU (--device $DEV)"
fi

write_summary
if [[ $KEEP_LOGS == 0 ]]; then
  (cd "$RES" && ls ./*.log >/dev/null 2>&1 && tar -czf logs.tar.gz ./*.log && rm -f ./*.log)
fi
say "summary $RES/summary.json; $(ls "$RES" | tr '\n' ' ')"
cat "$RES/summary.json"
if [[ -n $FAILED ]]; then
  say "FAILED: first failing step: $FAILED"
  exit 1
fi
say "all steps passed ($(($(date +%s) - T0)) s)"
