#!/usr/bin/env bash
# Packs the CUDA backend's tests and benchmarks for a GPU machine and prints
# the exact commands to run there.
#
#   bench/gpu_run.sh [BUILD_DIR]     # default: build-cuda
#
# Builds (on this machine, which has nvcc but needs no GPU)
# backend_consistency_test, cuda_golden_test and gpu_decode_bench; packs them
# with ../shared/tools/device-pack into device-pack/cuda (git-ignored) with
# their shared libraries (stripped of debug info to stay small), plus the
# stories260K model and its llama.cpp reference, which the golden test reads
# through $TANDEM_SHARED_DIR. The CUDA runtime is linked statically; cuBLAS
# (libcublas.so.13) is dlopen'ed from the GPU machine's CUDA toolkit. The
# `tandem` binary is left out: with its libraries (gRPC, RocksDB, UCX) the pack
# would pass the device tool's 64 MiB limit; cuda_golden_test runs the same
# model path (LlamaModel + GenerateOne) on the GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build-cuda}
cd "$root"
shared="$root/../shared"
targets=(backend_consistency_test cuda_golden_test gpu_decode_bench)
CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" -j2 "${targets[@]}"
pack=device-pack/cuda
rm -rf "$pack"
"$shared/tools/device-pack" "$pack" "$build/tests/backend_consistency_test" \
  "$build/tests/cuda_golden_test" "$build/bin/gpu_decode_bench" >/dev/null
chmod -R u+w "$pack"
strip --strip-debug "$pack"/bin/* "$pack"/lib/*.so* 2>/dev/null || true
mkdir -p "$pack/shared/models" "$pack/shared/data/reference"
cp "$shared/models/stories260K.gguf" "$pack/shared/models/"
cp "$shared/data/reference/stories260K_greedy.jsonl" "$pack/shared/data/reference/"
du -sh "$pack"
cat <<CMDS

Packed into $root/$pack. On the GPU machine, from the repository root
(device tool: run with carry=["$pack"]), one command:

export LD_LIBRARY_PATH=\$PWD/$pack/lib:/usr/local/cuda/lib64; nvidia-smi -L;
$pack/bin/backend_consistency_test;
TANDEM_SHARED_DIR=\$PWD/$pack/shared $pack/bin/cuda_golden_test;
$pack/bin/gpu_decode_bench --json \$OUT/gpu_decode_bench.json;
python3 bench/hf_peer.py --json \$OUT/hf_peer.json

If libcublas.so.13 is not under /usr/local/cuda/lib64 there, point
TANDEM_CUBLAS_LIBRARY at it (e.g. python3 -c 'import nvidia.cublas, os;
print(os.path.dirname(nvidia.cublas.__file__))' gives the pip wheel's folder,
whose lib/ holds it).
CMDS
