#!/usr/bin/env bash
# The Python package on ARM64 under user-mode QEMU (called by tests/arm/run.sh; usable alone):
# Debian's arm64 Python 3.11, numpy and pytest, unpacked into build/arm/root (downloaded with apt-get
# into private lists and caches: the machine's dpkg architectures and apt state are left alone),
# wordlm's native library cross-compiled for aarch64 as setup.py builds it, and pytest run on
# tests/test_native.py and tests/test_native_arm.py (their conftest.py needs torch: not loaded).
#
# usage: tests/arm/python.sh prepare                 download, unpack, build (once per checkout state)
#        tests/arm/python.sh CPU [pytest args...]   e.g. tests/arm/python.sh max -k "not threads"
# The interpreter is build/arm/bin/python3, a host script that runs QEMU, so that the tests' own
# subprocesses (sys.executable) run under QEMU too.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
cpu=${1:?usage: $0 prepare | CPU [pytest args...]}
shift
out=$repo/build/arm
root=$out/root
packages=(libpython3.11-minimal libpython3.11-stdlib libpython3.11 libpython3.11-dev python3.11-minimal
    python3-numpy libblas3 liblapack3 libgfortran5 libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8
    libbz2-1.0 liblzma5 libssl3 libcrypt1 libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libuuid1
    libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2
    libkeyutils1 python3-pytest python3-pluggy python3-iniconfig python3-packaging python3-py
    python3-attr python3-more-itertools)

if [ ! -f "$root/.complete" ]; then # Debian's arm64 packages, unpacked (not installed)
    apt=$out/apt
    rm -rf "$apt" "$root"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$root"
    touch "$apt/status"
    opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1)
    apt-get "${opts[@]}" update -qq >/dev/null
    (cd "$apt/debs" && apt-get "${opts[@]}" download -qq "${packages[@]}" >/dev/null 2>&1) ||
        { echo "could not download Debian's arm64 Python"; exit 2; }
    for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
    # the BLAS and LAPACK that update-alternatives would have linked
    ln -sf blas/libblas.so.3 "$root/usr/lib/aarch64-linux-gnu/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$root/usr/lib/aarch64-linux-gnu/liblapack.so.3"
    rm -rf "$apt/debs"
    touch "$root/.complete"
fi

# wordlm's Python files and its native library for aarch64, with setup.py's flags
py=$out/py
if [ "$cpu" = prepare ] || [ ! -d "$py" ]; then
    rm -rf "$py"
    mkdir -p "$py"
    (find wordlm -name '*.py' -print0 | xargs -0 -I{} install -D -m 644 {} "$py/{}")
    aarch64-linux-gnu-gcc -O3 -ffp-contract=off -fwrapv -pthread -fPIC -shared -I"$root/usr/include/python3.11" \
        -I"$root/usr/include" wordlm/native/*.c -lm -o "$py/wordlm/native/_kernels.cpython-311-aarch64-linux-gnu.so"

    mkdir -p "$out/bin"
    cat >"$out/bin/python3" <<'EOF'
#!/bin/sh
exec qemu-aarch64 -cpu "$WL_QEMU_CPU" -0 "$0" "$WL_ARM_ROOT/usr/bin/python3.11" "$@"
EOF
    chmod +x "$out/bin/python3"
fi
[ "$cpu" = prepare ] && exit 0
export WL_QEMU_CPU=$cpu WL_ARM_ROOT=$root QEMU_LD_PREFIX=$root PYTHONHOME=$root/usr PYTHONPATH=$py
unset WORDLM_ISA
cd "$py" # so that `import wordlm` finds this copy, not the checkout's
exec "$out/bin/python3" -m pytest -q --noconftest -p no:cacheprovider --rootdir="$repo" \
    "$repo/tests/test_native.py" "$repo/tests/test_native_arm.py" "$@"
