#!/usr/bin/env bash
# Installs every Debian package mpar needs to build, test and benchmark.
# Idempotent: packages already present are skipped, and apt is not touched
# at all when nothing is missing. Run as root on Debian 12.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libuv1-dev libucx-dev ucx-utils
  protobuf-c-compiler libprotobuf-c-dev
  libcriterion-dev libdnnl-dev libjansson-dev libinih-dev
  libssl-dev libsystemd-dev zlib1g-dev libhttp-parser-dev
  dataset-fashion-mnist
  # The GPT demo's corpus: `bible gen1:1-rev22:21` prints the King James
  # Bible (data.dataset "kjv").
  bible-kjv bible-kjv-text
  python3 python3-torch python3-numpy
  # PyTorch's BLAS for the benchmark and cross-check peers: without it torch
  # falls back to the reference BLAS, some 50x slower, an unfair peer.
  libopenblas0-pthread
  openmpi-bin libopenmpi-dev
  prometheus socat iproute2 procps systemd
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (sudo $0) to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
