#!/usr/bin/env bash
# check-device.sh - the one script to run on the GPU machine: it checks and
# times the CUDA backend with binaries built HERE (Debian 12), since the GPU
# machine has nvcc, cmake, python3 + torch and nvidia-smi but none of
# libuv/UCX/protobuf-c/criterion/oneDNN/jansson.
#
# Here, on the build machine (once per change):
#   cmake -S . -B build-gpu -DMP_WERROR=ON && cmake --build build-gpu -j2
#   bash gpu/check-device.sh --prepare        # -> build-gpu/carry, ~52 MiB
# then on the device:  run(carry=["build-gpu/carry"], command="bash gpu/check-device.sh")
# --prepare copies test_cuda, mpar-bench-gemm and mpar-client (debug info
# stripped) to build-gpu/carry/bin, their libraries (deploy/bundle-libs.sh)
# gzipped to build-gpu/carry/lib.tar.gz (47 MiB -> 16, oneDNN is 40 of it),
# and Fashion-MNIST (30 MiB) to build-gpu/carry/data/fashion-mnist when this
# machine has it.  All of build-gpu (objects, every test binary, plus the
# libraries) would not fit the 64 MiB carry limit.  The script also accepts
# the plain layout build-gpu/bin + build-gpu/bundle (carry both, ~57 MiB,
# when deploy/bundle-libs.sh was given only the three binaries above).
#
# On the device it: prints nvidia-smi and the library situation; runs
# test_cuda (every test must run and pass: a skip there is a failure; the
# sequence-layer kernels' tests are checked by name); runs
# bench/torch_gemm.py (the peer) and mpar-bench-gemm -o json; trains one
# epoch of examples/fashion_mnist.json with mpar-client --serial --device
# cuda (strict fp32, then TF32) if mpar-client is there.  Everything goes to
# stdout and to $OUT/ (check-device.log, test_cuda.log, torch_gemm.json,
# bench_gemm.json, train_cuda*.json, summary.txt).  Exit 0 only when every
# step that ran passed.  A few minutes on an H100/H200.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
build=${MP_BUILD_DIR:-build-gpu}

# ---- --prepare: on the build machine -----------------------------------------
if [ "${1:-}" = "--prepare" ]; then
  set -e
  carry=$build/carry
  need=(test_cuda mpar-bench-gemm)
  for b in "${need[@]}"; do
    if [ ! -x "$build/bin/$b" ]; then
      echo "check-device --prepare: $build/bin/$b missing; build first:" >&2
      echo "  cmake -S . -B $build -DMP_WERROR=ON && cmake --build $build -j2" >&2
      exit 2
    fi
  done
  rm -rf "$carry"
  mkdir -p "$carry/bin"
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  bins=()
  for b in test_cuda mpar-bench-gemm mpar-client; do
    if [ -x "$build/bin/$b" ]; then
      strip --strip-debug -o "$carry/bin/$b" "$build/bin/$b"
      bins+=("$carry/bin/$b")
    else
      echo "check-device --prepare: no $build/bin/$b (that step will be skipped on the device)"
    fi
  done
  # Opened at run time, so not among the binaries' NEEDED entries: the CUDA
  # backend plugin and oneDNN (the CPU backend, the reference of test_cuda).
  dnnl=$(ldconfig -p | awk '/libdnnl\.so\.2 /{print $NF; exit}')
  plugin=$build/lib/libmpar-cuda.so
  if [ ! -f "$plugin" ] || [ -z "$dnnl" ]; then
    echo "check-device --prepare: need $plugin and libdnnl.so.2 (found: '${dnnl}')" >&2
    exit 2
  fi
  "$root/deploy/bundle-libs.sh" "$staging/lib" "${bins[@]}" "$plugin" "$dnnl" | tail -1
  cp -L "$plugin" "$dnnl" "$staging/lib/"
  tar -C "$staging/lib" -czf "$carry/lib.tar.gz" .
  fm=/usr/share/datasets/fashion-mnist
  if [ -f "$fm/train-images-idx3-ubyte.gz" ]; then
    mkdir -p "$carry/data/fashion-mnist"
    cp "$fm"/*-ubyte.gz "$carry/data/fashion-mnist/"
  fi
  mib=$(du -sm "$carry" | cut -f1)
  echo "check-device --prepare: $mib MiB in $carry;" \
       "on the device: carry=[\"$carry\"], command: bash gpu/check-device.sh"
  if [ "$mib" -gt 60 ]; then
    echo "check-device --prepare: WARNING: over 60 MiB; the carry limit is 64 MiB" \
         "with the working tree" >&2
  fi
  exit 0
fi

OUT=${OUT:-$root/check-device-out}
mkdir -p "$OUT"

declare -a results=()
failed=0
note() { results+=("$1"); }

checks() {
  local t0 bin lib
  t0=$(date +%s)
  echo "== check-device: $(date -u '+%F %T') UTC on $(hostname), repo $root"

  # ---- where the binaries are ----
  if [ -x "$build/carry/bin/test_cuda" ] && [ -f "$build/carry/lib.tar.gz" ]; then
    bin=$build/carry/bin
    lib=${TMPDIR:-/tmp}/mpar-check-device-lib
    rm -rf "$lib"
    mkdir -p "$lib"
    if ! tar -C "$lib" -xzf "$build/carry/lib.tar.gz"; then
      note "FAIL setup: cannot unpack $build/carry/lib.tar.gz"
      failed=1
      return
    fi
  elif [ -x "$build/bin/test_cuda" ] && [ -d "$build/bundle" ]; then
    bin=$build/bin
    lib=$build/bundle
  else
    echo "check-device: no binaries: neither $build/carry/bin/test_cuda nor" \
         "$build/bin/test_cuda + $build/bundle is here."
    echo "  Build on the build machine, then 'bash gpu/check-device.sh --prepare'," \
         "and carry [\"$build/carry\"]."
    note "FAIL setup: no binaries under $build"
    failed=1
    return
  fi
  lib=$(cd "$lib" && pwd)
  echo "== binaries: $bin, libraries: $lib"

  # ---- the GPU ----
  echo "== nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
      --format=csv 2>&1
  else
    echo "nvidia-smi not found"
  fi

  # ---- libraries: glibc, libcuda, cuBLAS ----
  local have_glibc need_glibc
  have_glibc=$(ldd --version 2>/dev/null | head -1 | grep -o '[0-9]\+\.[0-9]\+$')
  need_glibc=$(cat "$lib/GLIBC_REQUIRED" 2>/dev/null || echo unknown)
  echo "== glibc here $have_glibc, binaries need >= $need_glibc;" \
       "GLIBCXX needed $(cat "$lib/GLIBCXX_REQUIRED" 2>/dev/null || echo unknown)"
  if [ "$need_glibc" != unknown ] && [ -n "$have_glibc" ] &&
     [ "$(printf '%s\n%s\n' "$need_glibc" "$have_glibc" | sort -V | head -1)" != "$need_glibc" ]; then
    echo "check-device: WARNING: this glibc ($have_glibc) is older than the build machine's" \
         "binaries need ($need_glibc)"
  fi
  echo "== driver: $(ldconfig -p 2>/dev/null | grep -m1 'libcuda.so.1 ' || echo 'libcuda.so.1 not in the ld cache')"

  local cudadirs="" d sp f
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
    if [ -e "$d/libcublas.so.13" ]; then
      cudadirs=$d
      break
    fi
  done
  if [ -z "$cudadirs" ] && command -v python3 >/dev/null; then
    # pip's CUDA 13 wheels (torch cu130 pulls them in): site-packages/nvidia/.../lib.
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
      [ -d "$sp/nvidia" ] || continue
      f=$(find "$sp/nvidia" -maxdepth 4 -name 'libcublas.so.13*' 2>/dev/null | head -1)
      if [ -n "$f" ]; then
        cudadirs=$(dirname "$f")
        break
      fi
    done
  fi
  if [ -z "$cudadirs" ]; then
    echo "check-device: libcublas.so.13 not found (/usr/local/cuda/lib64, pip nvidia/*/lib);" \
         "the CUDA binaries cannot start"
    note "FAIL setup: no libcublas.so.13 on this machine"
    failed=1
    return
  fi
  mp_ld="$lib:$cudadirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== cuBLAS from $cudadirs; LD_LIBRARY_PATH for mpar binaries: $mp_ld"
  local unresolved
  unresolved=$(LD_LIBRARY_PATH=$mp_ld ldd "$bin/test_cuda" | grep 'not found' || true)
  if [ -n "$unresolved" ]; then
    echo "check-device: test_cuda has unresolved libraries:"
    echo "$unresolved"
  fi

  # ---- test_cuda: must run, not skip ----
  echo "== test_cuda (CUDA backend vs CPU backend, op by op)"
  local rc synth
  LD_LIBRARY_PATH=$mp_ld UCX_MODULE_DIR="$lib/ucx" timeout 240 \
    "$bin/test_cuda" --verbose --jobs 1 > "$OUT/test_cuda.log" 2>&1
  rc=$?
  cat "$OUT/test_cuda.log"
  synth=$(grep 'Synthesis' "$OUT/test_cuda.log" | tail -1)
  if [ $rc -ne 0 ]; then
    note "FAIL test_cuda: exit $rc ${synth}"
    failed=1
  elif grep -q '\[SKIP\]' "$OUT/test_cuda.log" || ! grep -q 'Tested: [1-9]' "$OUT/test_cuda.log"; then
    note "FAIL test_cuda: tests skipped on a GPU machine: ${synth}"
    failed=1
  else
    note "ok   test_cuda: ${synth}"
  fi
  # The sequence-layer kernels (issue 10) by name: a binary built before
  # them would pass test_cuda without running them.
  local t missing=()
  for t in embedding_and_positions_match_cpu layernorm_matches_cpu attention_matches_cpu \
           vocab_parallel_xent_matches_cpu sequence_ops_refuse_bad_arguments; do
    grep -q "\[PASS\] cuda::$t" "$OUT/test_cuda.log" || missing+=("$t")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    note "ok   sequence-layer kernels (embedding, positions, LayerNorm, attention, vocab-parallel xent) match the CPU backend"
  else
    note "FAIL sequence-layer kernels: not passed: ${missing[*]}"
    failed=1
  fi

  # ---- GEMM benchmark: torch peer (its own environment), then mpar ----
  echo "== torch_gemm.py (peer: torch.matmul on this GPU)"
  local peer_args=()
  if timeout 180 python3 bench/torch_gemm.py > "$OUT/torch_gemm.json" 2> "$OUT/torch_gemm.err"; then
    peer_args=(--peer-json "$OUT/torch_gemm.json")
    note "ok   torch_gemm.py"
  else
    cat "$OUT/torch_gemm.err"
    peer_args=(--no-peer)
    note "FAIL torch_gemm.py (see torch_gemm.err); mpar numbers have no peer"
    failed=1
  fi
  echo "== mpar-bench-gemm -o json"
  if LD_LIBRARY_PATH=$mp_ld timeout 180 "$bin/mpar-bench-gemm" -o json "${peer_args[@]}" \
       > "$OUT/bench_gemm.json" 2> "$OUT/bench_gemm.err" &&
     ! grep -q '"skipped"' "$OUT/bench_gemm.json"; then
    cat "$OUT/bench_gemm.json"
    python3 - "$OUT/bench_gemm.json" <<'EOF' || true
import json, sys
doc = json.load(open(sys.argv[1]))
print("%-10s %-10s %5s %5s %5s %2s %10s %10s %6s" % ("test", "op", "m", "n", "k", "op",
                                                    "mpar", "torch", "ratio"))
for r in doc.get("results", []):
    peer = "%10.1f" % r["peer"] if r.get("peer") else "%10s" % "-"
    ratio = "%6.3f" % r["ratio"] if r.get("ratio") else "%6s" % "-"
    print("%-10s %-10s %5d %5d %5d %1s%1s %10.1f %s %s" % (r["test"], r["op"], r["m"], r["n"],
          r["k"], r["ta"], r["tb"], r["mpar"], peer, ratio))
EOF
    note "ok   mpar-bench-gemm ($(grep -c '"test"' "$OUT/bench_gemm.json") results)"
  else
    cat "$OUT/bench_gemm.err" "$OUT/bench_gemm.json"
    note "FAIL mpar-bench-gemm"
    failed=1
  fi

  # ---- one epoch of the example model on the GPU ----
  if [ ! -x "$bin/mpar-client" ]; then
    echo "== mpar-client not built: skipping the training epoch"
    note "skip train: no mpar-client among the binaries"
  elif [ ! -f examples/fashion_mnist.json ]; then
    note "skip train: no examples/fashion_mnist.json"
  else
    # One epoch, on Fashion-MNIST when this machine or the carry has it,
    # else on a synthetic set of the same size and shape.
    local spec="$OUT/train_spec.json"
    local carried=/nonexistent
    if [ -d "$build/carry/data/fashion-mnist" ]; then
      carried=$(cd "$build/carry/data/fashion-mnist" && pwd)
    fi
    python3 - examples/fashion_mnist.json "$spec" "$carried" <<'EOF'
import json, os, sys
spec = json.load(open(sys.argv[1]))
spec["train"]["epochs"] = 1
spec["train"].pop("steps", None)
data = spec.get("data", {})
carried = sys.argv[3]
where = data.get("path") or "/usr/share/datasets/fashion-mnist"
have = lambda d: os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz"))
if data.get("dataset") == "fashion-mnist" and not have(where) and have(carried):
    data["path"] = carried
    print("train: Fashion-MNIST from " + carried)
elif data.get("dataset") == "fashion-mnist" and not have(where):
    spec["data"] = {"dataset": "synthetic", "samples": 60000, "test_samples": 10000,
                    "classes": 10, "seed": 5}
    print("train: Fashion-MNIST not on this machine: synthetic data of the same shape")
json.dump(spec, open(sys.argv[2], "w"), indent=1)
EOF
    local mode flags outf
    for mode in fp32 tf32; do
      flags=()
      outf=$OUT/train_cuda.json
      if [ $mode = tf32 ]; then
        flags=(--tf32)
        outf=$OUT/train_cuda_tf32.json
      fi
      echo "== mpar-client run (1 epoch, --serial --device cuda ${flags[*]})"
      if LD_LIBRARY_PATH=$mp_ld timeout 150 "$bin/mpar-client" run "$spec" --serial \
           --device cuda "${flags[@]}" -o json > "$outf" 2> "$outf.err"; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d.pop("losses",None); print(json.dumps(d, indent=1))' "$outf" ||
          cat "$outf"
        note "ok   train $mode: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f samples/s, %.1f s, final loss %s" % (d.get("samples_per_s",0), d.get("seconds",0), d.get("final_loss")))' "$outf" 2>/dev/null)"
        # The peer: PyTorch on the same card, same model, batch and optimizer.
        local tflags=()
        [ $mode = tf32 ] && tflags=(--tf32)
        local tdata
        tdata=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"].get("path") or "/usr/share/datasets/fashion-mnist")' "$spec")
        if [ -f "$tdata/train-images-idx3-ubyte.gz" ] &&
           timeout 180 python3 bench/torch_train.py "$spec" --device cuda "${tflags[@]}" \
             --steps 234 --data "$tdata" > "$OUT/torch_train_$mode.json" 2> "$OUT/torch_train_$mode.err"; then
          note "ok   torch train $mode: $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); t=json.load(open(sys.argv[2])); print("torch %.0f samples/s, mpar/torch ratio %.2f" % (t["samples_per_s"], m["samples_per_s"]/t["samples_per_s"]))' "$outf" "$OUT/torch_train_$mode.json")"
        else
          cat "$OUT/torch_train_$mode.err" 2>/dev/null
          note "FAIL torch train $mode (peer could not run)"
        fi
      else
        cat "$outf.err" "$outf"
        note "FAIL train $mode (mpar-client exit status; see $(basename "$outf").err)"
        failed=1
        break
      fi
    done
  fi
  echo "== done in $(( $(date +%s) - t0 )) s"
}

main() {
  checks
  echo "== summary"
  printf '%s\n' "${results[@]}" | tee "$OUT/summary.txt"
  if [ $failed -ne 0 ]; then
    echo "check-device: FAILED"
  else
    echo "check-device: all steps passed"
  fi
  return $failed
}

main 2>&1 | tee "$OUT/check-device.log"
exit "${PIPESTATUS[0]}"
