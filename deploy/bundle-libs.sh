#!/usr/bin/env bash
# bundle-libs.sh DIR BINARY... - copies every shared library the given
# binaries need (per ldd, recursively) into DIR, so that binaries built on
# this Debian 12 machine run, with LD_LIBRARY_PATH=DIR, on a machine that
# lacks libuv, UCX, protobuf-c, criterion, oneDNN, jansson and friends.
#
# Left out on purpose:
#   - glibc itself (libc, libm, libmvec, libpthread, libdl, librt, libresolv,
#     libutil, libanl, libnss_*, ld-linux, the vdso): it must be the target
#     machine's own, which therefore needs glibc >= the version this script
#     reports (written to DIR/GLIBC_REQUIRED);
#   - the C++ runtime (libstdc++, libgcc_s): every machine with python3 has
#     one, usually newer; Debian 12's own needs glibc 2.36 (arc4random), so
#     carrying it would raise the target's glibc floor from 2.34 to 2.36.
#     The newest GLIBCXX version needed is written to DIR/GLIBCXX_REQUIRED;
#   - the CUDA driver (libcuda, libnvidia-*): it belongs to the kernel module;
#   - cuBLAS (libcublas, libcublasLt): libcublasLt alone is ~500 MiB, far over
#     what can be carried; the GPU machine has its own CUDA 13 (see
#     gpu/check-device.sh, which finds it).  The CUDA runtime is linked
#     statically, so no libcudart is needed.
# UCX's transport modules (dlopen'ed from <dir of libucs>/ucx/) are copied
# to DIR/ucx/ with their own dependencies.
#
# Prints what it copied, the total size, and the newest glibc symbol
# version any bundled file or binary needs.  Exit 1 when ldd cannot resolve
# a needed library here.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 DIR BINARY..." >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"

# Sonames never bundled (see above).
skip_re='^(linux-vdso|linux-gate|ld-linux[^/]*|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libBrokenLocale|libthread_db|libnss_[a-z0-9_]*|libcidn|libstdc\+\+|libgcc_s|libcuda|libnvidia-[a-z0-9_-]*|libcublas|libcublasLt)\.so([.0-9]*)$'

declare -A seen=()   # soname -> source path
missing=()
scanned=()

# Adds the libraries that file $1 needs to `seen` (and scans them in turn).
scan() {
  local file=$1 line name path
  while IFS= read -r line; do
    # Forms: "name => /path (0x..)", "name => not found", "/path (0x..)".
    if [[ $line =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+=\>[[:space:]]+not[[:space:]]found ]]; then
      name=${BASH_REMATCH[1]}
      if ! [[ $name =~ $skip_re ]]; then
        missing+=("$name (needed by $file)")
      fi
      continue
    fi
    if [[ $line =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+=\>[[:space:]]+(/[^[:space:]]+) ]]; then
      name=${BASH_REMATCH[1]}
      path=${BASH_REMATCH[2]}
    else
      continue
    fi
    if [[ $name =~ $skip_re ]] || [[ -n ${seen[$name]:-} ]]; then
      continue
    fi
    seen[$name]=$path
  done < <(ldd "$file" 2>/dev/null || true)
}

for bin in "$@"; do
  if [ ! -f "$bin" ] || [ "$(head -c 4 "$bin" | od -An -c | tr -d ' ')" != '177ELF' ]; then
    continue # build-tree leftovers such as scripts
  fi
  scanned+=("$bin")
  scan "$bin"
done
if [ ${#scanned[@]} -eq 0 ]; then
  echo "bundle-libs: no ELF binaries among: $*" >&2
  exit 2
fi

# UCX loads its transports with dlopen, which ldd cannot see.
ucx_mods=()
if [ -n "${seen[libucs.so.0]:-}" ]; then
  ucx_dir=$(dirname "$(readlink -f "${seen[libucs.so.0]}")")/ucx
  if [ -d "$ucx_dir" ]; then
    mkdir -p "$dir/ucx"
    for m in "$ucx_dir"/*.so.0; do
      [ -e "$m" ] || continue
      cp -L "$m" "$dir/ucx/"
      ucx_mods+=("$dir/ucx/$(basename "$m")")
      scan "$m"
    done
  fi
fi

# ldd resolves the whole tree at once, but libraries reached only through
# a UCX module were added above; one more pass over every bundled library
# catches anything new (ldd of a library lists its full closure too).
for name in "${!seen[@]}"; do
  scan "${seen[$name]}"
done

if [ ${#missing[@]} -gt 0 ]; then
  printf 'bundle-libs: not found here: %s\n' "${missing[@]}" >&2
  exit 1
fi

total=0
for name in $(printf '%s\n' "${!seen[@]}" | sort); do
  cp -L "${seen[$name]}" "$dir/$name"
  size=$(stat -c %s "$dir/$name")
  total=$((total + size))
  printf 'bundle-libs: %-28s %9d  %s\n' "$name" "$size" "${seen[$name]}"
done
for m in "${ucx_mods[@]}"; do
  total=$((total + $(stat -c %s "$m")))
done

# The newest GLIBC_x.y symbol version anything here needs from the target's glibc.
glibc=$(for f in "${scanned[@]}" "$dir"/*.so* "${ucx_mods[@]}"; do
          [ -f "$f" ] && objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' || true
        done | sed 's/GLIBC_//' | sort -u -V | tail -1)
echo "${glibc:-unknown}" > "$dir/GLIBC_REQUIRED"
glibcxx=$(for f in "${scanned[@]}" "$dir"/*.so* "${ucx_mods[@]}"; do
            [ -f "$f" ] && objdump -T "$f" 2>/dev/null | grep -o 'GLIBCXX_[0-9][0-9.]*' || true
          done | sed 's/GLIBCXX_//' | sort -u -V | tail -1)
echo "${glibcxx:-none}" > "$dir/GLIBCXX_REQUIRED"

echo "bundle-libs: ${#seen[@]} libraries + ${#ucx_mods[@]} UCX modules into $dir," \
     "$((total / 1048576)) MiB; the target needs glibc >= ${glibc:-unknown}," \
     "libstdc++ with GLIBCXX_${glibcxx:-none}, and its own libcuda + libcublas.so.13"
