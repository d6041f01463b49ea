#!/usr/bin/env bash
# The main job: set up, build, start a local Tandem cluster (router, one
# prefill and one decode worker, KV moving between them over UCX) on the
# built-in default model, and answer a sample request through it.
#
# Extra arguments go to `tandem generate --remote` (e.g. --prompt "..." --json).
# Set TANDEM_MODEL=PATH.gguf to serve a real model (e.g. ../shared/models/stories260K.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh

model="${TANDEM_MODEL:-synthetic:tiny}"
log="$(mktemp -d)/up.jsonl"
build/bin/tandem up --model "$model" --prefill 1 --decode 1 --port 0 >"$log" &
up_pid=$!
trap 'kill -TERM "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true' EXIT

# Wait (at most 60 s) for the cluster's ready line.
router=""
for _ in $(seq 600); do
  router="$(sed -n 's/.*"event":"ready","router":"\([^"]*\)".*/\1/p' "$log")"
  [ -n "$router" ] && break
  kill -0 "$up_pid" 2>/dev/null || { echo "tandem up exited early:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$router" ] || { echo "cluster not ready within 60 s" >&2; cat "$log" >&2; exit 1; }
echo "cluster:" >&2
cat "$log" >&2

if [ $# -eq 0 ]; then set -- --prompt "Once upon a time" --max-tokens 48; fi
build/bin/tandem generate --remote "$router" --model "$model" "$@"
