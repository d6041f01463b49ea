#!/usr/bin/env bash
# Builds Tandem here and packs what the GPU machine runs into one folder of at
# most 64 MiB (the most the device tool sends), then prints the one command to
# run there.
#
#   bench/gpu_run.sh [OUT_DIR]      # default: device-pack/gpu (git-ignored)
#
# The GPU machine is Ubuntu 24.04 without our Debian packages, so the pack
# carries `tandem`, backend_consistency_test, cuda_golden_test and
# gpu_decode_bench with every shared library they load as resolved here
# (../shared/tools/device-pack; glibc and the CUDA driver stay the machine's).
# Stripped, those are ~97 MB, ICU's data (31 MB), RocksDB and gRPC the
# largest, so the libraries travel as lib.tar.xz (~23 MB) that
# gpu_remote.sh unpacks into /tmp there; the binaries stay plain with their
# symbol tables (stack traces keep names). The CUDA runtime is linked
# statically and cuBLAS is dlopen'ed from the machine's CUDA toolkit. Also
# packed: stories260K.gguf and its llama.cpp greedy reference (read through
# $TANDEM_SHARED_DIR), bench/hf_peer.py, bench/gpu_remote.sh (the script that
# runs there; see its header for the steps) and pack.json (commit, sizes).
#
# Rehearse without a GPU from the folder alone (the libraries come from the
# pack, the cluster runs on the CPU backend, GPU-only steps are skipped):
#   cp -r device-pack/gpu /tmp/rehearse && cd /tmp/rehearse &&
#     env -i PATH=/usr/bin:/bin HOME=$HOME bash gpu_remote.sh . /tmp/rehearse-out --device cpu
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-device-pack/gpu}
shared=$root/../shared
build=$root/build
limit=$((64 * 1024 * 1024))
binaries=("$build/bin/tandem" "$build/tests/backend_consistency_test" "$build/tests/cuda_golden_test"
  "$build/bin/gpu_decode_bench")

# The shared build directory, through the lock other builders take too.
flock /tmp/tandem-build.lock cmake --build "$build" -j2 \
  --target tandem backend_consistency_test cuda_golden_test gpu_decode_bench
readelf -S "$build/bin/tandem" | grep -q nv_fatbin ||
  { echo "gpu_run: $build/bin/tandem has no CUDA kernels (built without nvcc?): nothing to run on a GPU" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
"$shared/tools/device-pack" "$out" "${binaries[@]}" >/dev/null
chmod -R u+w "$out"
echo "gpu_run: unstripped $(du -sb "$out" | cut -f1) bytes"
strip --strip-debug "$out"/bin/*
find "$out/lib" -type f -name '*.so*' -exec strip --strip-unneeded {} +
echo "gpu_run: largest libraries after strip:"
find "$out/lib" -type f -printf '%s %P\n' | sort -rn | head -5 | sed 's/^/    /'
# -T2: this machine's two cores are shared; -6 is within 5% of -9 here.
tar -C "$out" -cf - lib | xz -6 -T2 >"$out/lib.tar.xz"
rm -rf "${out:?}/lib"

mkdir -p "$out/shared/models" "$out/shared/data/reference"
cp "$shared/models/stories260K.gguf" "$out/shared/models/"
cp "$shared/data/reference/stories260K_greedy.jsonl" "$out/shared/data/reference/"
cp bench/gpu_remote.sh bench/hf_peer.py "$out/"
chmod +x "$out/gpu_remote.sh"

size=$(du -sb "$out" | cut -f1)
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no | wc -l)
cat >"$out/pack.json" <<JSON
{"commit": "$commit", "uncommitted_files": $dirty, "packed_utc": "$(date -u +%FT%TZ)", "bytes": $size, "lib_tar_xz_bytes": $(stat -c %s "$out/lib.tar.xz")}
JSON
echo "gpu_run: packed $out: $size bytes ($((size * 100 / limit))% of 64 MiB); commit $commit, $dirty uncommitted tracked file(s)"
if ((size > limit)); then
  echo "gpu_run: $out is over the device tool's 64 MiB" >&2
  exit 1
fi
# The device tool sends the working tree too; the pack plus it must fit.
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
if ((size + tree > limit)); then
  echo "gpu_run: warning: pack + working tree = $((size + tree)) bytes, over 64 MiB" >&2
fi

cat <<CMD

On the GPU machine (device tool: carry ["$out"], timeout_s 570, from the repository root), one command:

  bash $out/gpu_remote.sh $out "\$OUT"

It runs in at most ~8 minutes (450 s budget + unpacking) and writes \$OUT/summary.json, the JSON results
and logs.tar.gz; it stops at the first failing step and names it
(add --keep-going to run the independent steps after a failure).
CMD
