#!/usr/bin/env bash
# make test-arm: wordlm's native kernels for ARM64, tested on an x86 machine.
#
# Installs what it lacks from Debian's packages (gcc-aarch64-linux-gnu, qemu-user), then:
#  - builds tests/arm/test_kernels.c with every wordlm/native/*.c (kernels.c without Python), for the
#    host and statically for aarch64, with setup.py's flags (-O3 -ffp-contract=off);
#  - runs the host build (its reference against the x86 kernels), and the aarch64 build under user-mode
#    QEMU as three CPUs: `max` (SDOT and SMMLA: picks i8mm), `neoverse-n1` (SDOT: dotprod) and
#    `cortex-a53` (ARMv8.0: neon): each tests every kernel its CPU runs (`neoverse-n1`: dotprod alone,
#    the others being tested on the other two) against the reference, threads
#    1 to 3, and that run-time detection picked the one expected; QEMU raises SIGILL for an instruction
#    its CPU lacks, so the baseline kernels are checked to contain none;
#  - WORDLM_ISA: forcing a lower kernel runs that one alone; forcing one the CPU lacks is refused;
#  - with clang too, where clang is installed (skipped otherwise): the test program built with -Werror
#    and run under QEMU's `max` CPU (clang's build blocks some kernels differently);
#  - the Python package: Debian's arm64 Python and numpy under QEMU run tests/test_native.py and
#    tests/test_native_arm.py against the library cross-compiled for aarch64 (ARM_PYTHON, below);
#  - libwordlm: examples/c/next_words built statically for aarch64 (make -C examples/c STATIC=1) runs on
#    the shipped model under each CPU, and with WORDLM_ISA=portable prints what the host's build prints,
#    to the bit; tests/c/wl_check.c's every number (logits, state, log-probs, NLL, top-k, sampled words)
#    on the shipped model equals the arm64 Python runtime's under QEMU for each kernel of `max`
#    (tests/c/compare.py; with the Python package, ARM_PYTHON not 0).
# Prints a pytest-style closing line; exits non-zero on any failure. Timings under QEMU mean nothing.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s%N)
out=build/arm
mkdir -p "$out"
passed=0 failed=0 skipped=0

pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }

# ---- what it needs, from Debian's packages ----
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
    echo "installing ${need[*]} (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null ||
            { echo "could not install ${need[*]}"; exit 2; }
    fi
fi

# ---- runs: each prints FAILED lines and its own closing line ----
run() { # label, expected exit status, command... ; output in $out/run_<label>.txt
    local label=$1 want=$2
    shift 2
    "$@" >"$out/run_$label.txt" 2>&1
    echo $? >"$out/run_$label.rc"
}

# The Python package under QEMU (tests/arm/python.sh), beside the builds and the kernels' runs.
# ARM_PYTHON=smoke (the default, ~40 s beside the rest): the architecture's kernel names, logits bit for
# bit, extreme codes, int4 weights and WORDLM_ISA in subprocesses, on `max`; full (~2 min more): all of tests/test_native.py on `max` and the CPU and
# WORDLM_ISA tests on `cortex-a53`; 0: none. The fork test is left out: QEMU 7.2's user mode aborts
# in a child forked from a process with threads (an assertion in QEMU, cpu-exec.c), not in wordlm.
arm_python=${ARM_PYTHON:-smoke}
smoke='architecture or kernels_of_each or library_holds or not_a_kernel_here or every_arm64 or this_cpu_runs'
smoke="$smoke or logits_equal or extreme_codes or fine_input_projections or wordlm_isa or int4"
python_runs() {
    if ! tests/arm/python.sh prepare >"$out/run_python-prepare.txt" 2>&1; then
        echo 1 >"$out/run_python-prepare.rc"
        return
    fi
    echo 0 >"$out/run_python-prepare.rc"
    if [ "$arm_python" = full ]; then
        run python-max 0 tests/arm/python.sh max -k "not forked_child"
        run python-cortex-a53 0 tests/arm/python.sh cortex-a53 \
            -k "architecture or kernels_of_each or library_holds or every_arm64 or this_cpu_runs or wordlm_isa"
    else
        run python-max 0 tests/arm/python.sh max -k "$smoke"
    fi
}

python_pid=
case $arm_python in
0 | off | no) skipped=$((skipped + 1)); echo "SKIPPED the Python package under QEMU (ARM_PYTHON=$arm_python)" ;;
*) python_runs & python_pid=$! ;; # from the start: its download overlaps the builds below
esac

# ---- builds ----
sources=(tests/arm/test_kernels.c wordlm/native/*.c)
# setup.py's flags (and Python's -fwrapv); MIN_WORK low enough that small cases run on several threads
flags=(-O3 -ffp-contract=off -fwrapv -pthread -Wall -Wextra -DWL_NO_PYTHON -DMIN_WORK=4096)
build() { # name, compiler, extra flags... (in the background: build_tally says how it went)
    local name=$1 cc=$2
    shift 2
    ("$cc" "${flags[@]}" "$@" "${sources[@]}" -lm -o "$out/$name" 2>"$out/$name.log"; echo $? >"$out/$name.rc") &
}
build_tally() { # name
    if [ "$(cat "$out/$1.rc")" = 0 ]; then pass; else fail "build $1:"; cat "$out/$1.log"; fi
    grep -i "warning" "$out/$1.log" | head -5
}
build test_kernels_host gcc
build test_kernels_aarch64 aarch64-linux-gnu-gcc -static
# clang too, where it is installed (skipped otherwise), with -Werror: the test program linked with the
# cross toolchain's libc, run under QEMU like GCC's
clang=$(command -v clang || ls /usr/bin/clang-[0-9]* 2>/dev/null | sort -V | tail -1)
[ -n "$clang" ] && build test_kernels_clang "$clang" --target=aarch64-linux-gnu -static -Werror
# libwordlm: the example for aarch64 (static) and for the host, and the test program without its malloc
# counter (a static glibc keeps its own malloc)
lib_build() { # name, command... (in the background, as build)
    local name=$1
    shift
    ("$@" >"$out/$name.log" 2>&1; echo $? >"$out/$name.rc") &
}
mkdir -p "$out/example" "$out/example-host"
lib_build example_aarch64 make -s -C examples/c CC=aarch64-linux-gnu-gcc STATIC=1 OUT="$PWD/$out/example"
lib_build example_host make -s -C examples/c OUT="$PWD/$out/example-host"
lib_build wl_check_aarch64 aarch64-linux-gnu-gcc "${flags[@]}" -DWL_NO_COUNT -static -Iwordlm/native tests/c/wl_check.c \
    wordlm/native/*.c -lm -o "$out/wl_check_aarch64"
for job in $(jobs -p); do [ "$job" = "$python_pid" ] || wait "$job"; done
build_tally test_kernels_host
build_tally test_kernels_aarch64
build_tally example_aarch64
build_tally example_host
build_tally wl_check_aarch64
if [ -n "$clang" ]; then
    build_tally test_kernels_clang
else
    skipped=$((skipped + 1))
    echo "SKIPPED clang --target=aarch64-linux-gnu: clang is not installed (apt-get install clang)"
fi

tally() { # label, expected exit status, text the output must hold (for expected failures)
    local label=$1 want=$2 text=${3:-} rc
    rc=$(cat "$out/run_$label.rc")
    local summary
    summary=$(grep -E '^==== .* in .*s ====$' "$out/run_$label.txt" | tail -1)
    if [ "$want" = 0 ]; then
        local p f
        p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
        f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0}))
        grep '^FAILED' "$out/run_$label.txt" | sed "s/^FAILED /FAILED [$label] /"
        if [ "$rc" != 0 ] && [ "${f:-0}" = 0 ]; then
            fail "[$label] exited with status $rc:"
            tail -5 "$out/run_$label.txt"
        fi
        echo "$label: ${summary:-no closing line}"
    elif [ "$rc" = "$want" ] && grep -q -- "$text" "$out/run_$label.txt"; then
        pass
        echo "$label: refused as expected ($(head -1 "$out/run_$label.txt"))"
    else
        fail "[$label] expected exit status $want and '$text', got $rc:"
        tail -5 "$out/run_$label.txt"
    fi
}

tally_pytest() { # label: pytest's closing line ("3 passed, 2 deselected in 9.1s", "1 failed, ...")
    local label=$1 rc summary p f e
    rc=$(cat "$out/run_$label.rc")
    summary=$(grep -aE '^=* ?[0-9]+ (passed|failed|errors?|deselected|skipped).* in [0-9.]+s' "$out/run_$label.txt" |
        tail -1 | sed 's/^=* //; s/ =*$//')
    p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || true)
    f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || true)
    e=$(echo "$summary" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+' || true)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
    grep -aE '^(FAILED|ERROR) ' "$out/run_$label.txt" | sed -E "s/^(FAILED|ERROR) /\1 [$label] /"
    if [ "$rc" != 0 ] && [ -z "$f$e" ]; then
        fail "[$label] exited with status $rc:"
        tail -15 "$out/run_$label.txt"
    fi
    echo "$label: ${summary:-no closing line}"
}

if [ -x "$out/test_kernels_aarch64" ] && [ -x "$out/test_kernels_host" ]; then
    arm=$out/test_kernels_aarch64
    # the kernels' runs two at a time (CI machines have 2 cores), beside the Python ones
    run host 0 "$out/test_kernels_host" &
    run max 0 qemu-aarch64 -cpu max "$arm" --expect-best i8mm &
    wait_kernels() { for job in $(jobs -p); do [ "$job" = "$python_pid" ] || wait "$job"; done; }
    wait_kernels
    run neoverse-n1 0 env WORDLM_ISA=dotprod qemu-aarch64 -cpu neoverse-n1 "$arm" --expect-best dotprod &
    run cortex-a53 0 qemu-aarch64 -cpu cortex-a53 "$arm" --expect-best neon &
    wait_kernels
    run forced-neon 0 env WORDLM_ISA=neon qemu-aarch64 -cpu max "$arm" &
    run forced-i8mm-a53 2 env WORDLM_ISA=i8mm qemu-aarch64 -cpu cortex-a53 "$arm" &
    run forced-avx2 2 env WORDLM_ISA=avx2 qemu-aarch64 -cpu max "$arm" &
    wait_kernels
    [ -n "$clang" ] && [ -x "$out/test_kernels_clang" ] && run clang-max 0 qemu-aarch64 -cpu max "$out/test_kernels_clang" --expect-best i8mm
    tally host 0
    tally max 0
    tally neoverse-n1 0
    tally cortex-a53 0
    tally forced-neon 0
    if ! grep -q 'testing: neon$' "$out/run_forced-neon.txt"; then fail "[forced-neon] did not test neon alone"; fi
    tally forced-i8mm-a53 2 "this CPU does not run it"
    tally forced-avx2 2 "is not a kernel"
    [ -n "$clang" ] && [ -x "$out/test_kernels_clang" ] && tally clang-max 0
fi
# libwordlm's example under each CPU (its best kernel), and with the portable kernels against the host's
shipped=models/wikitext2-lstm-15mb
sentence="the meaning of life is"
if [ -x "$out/example/next_words" ] && [ -x "$out/example-host/next_words" ]; then
    for cpu in max neoverse-n1 cortex-a53; do
        run "example-$cpu" 0 qemu-aarch64 -cpu "$cpu" "$out/example/next_words" "$shipped" "$sentence"
        if [ "$(cat "$out/run_example-$cpu.rc")" = 0 ] && grep -q "same continuation: yes" "$out/run_example-$cpu.txt"; then
            pass
            echo "example-$cpu: $(head -1 "$out/run_example-$cpu.txt")"
        else
            fail "[example-$cpu]:"
            tail -5 "$out/run_example-$cpu.txt"
        fi
    done
    run example-portable 0 env WORDLM_ISA=portable qemu-aarch64 -cpu max "$out/example/next_words" "$shipped" "$sentence"
    run example-host 0 env WORDLM_ISA=portable "$out/example-host/next_words" "$shipped" "$sentence"
    if [ "$(cat "$out/run_example-portable.rc")" = 0 ] && cmp -s "$out/run_example-portable.txt" "$out/run_example-host.txt"; then
        pass
        echo "example-portable: the aarch64 build prints the host's numbers, to the bit"
    else
        fail "[example-portable] differs from the host's:"
        diff "$out/run_example-portable.txt" "$out/run_example-host.txt" | head -5
    fi
fi
if [ -n "$python_pid" ]; then
    wait "$python_pid"
    if [ "$(cat "$out/run_python-prepare.rc")" != 0 ]; then
        fail "[python] could not prepare Debian's arm64 Python:"
        tail -5 "$out/run_python-prepare.txt"
    else
        tally_pytest python-max
        [ -f "$out/run_python-cortex-a53.rc" ] && [ "$arm_python" = full ] && tally_pytest python-cortex-a53
        # libwordlm against the arm64 Python runtime, kernel by kernel (tests/c/compare.py)
        if [ -x "$out/wl_check_aarch64" ]; then
            py="env WL_QEMU_CPU=max WL_ARM_ROOT=$PWD/$out/root QEMU_LD_PREFIX=$PWD/$out/root"
            py="$py PYTHONHOME=$PWD/$out/root/usr PYTHONPATH=$PWD/$out/py $out/bin/python3"
            $py tests/c/compare.py input "$shipped" "$out/lib_in.bin"
            for isa in i8mm dotprod neon portable; do
                WORDLM_ISA=$isa qemu-aarch64 -cpu max "$out/wl_check_aarch64" run "$shipped" "$out/lib_in.bin" \
                    "$out/lib_out_$isa.bin" 1 >"$out/run_libwordlm-$isa.txt" 2>&1 &&
                    $py tests/c/compare.py compare "$shipped" "$out/lib_in.bin" "$out/lib_out_$isa.bin" "$isa" \
                        >>"$out/run_libwordlm-$isa.txt" 2>&1
                if [ $? = 0 ]; then pass; else fail "[libwordlm-$isa]:"; fi
                echo "libwordlm-$isa: $(tail -1 "$out/run_libwordlm-$isa.txt")"
            done
        fi
    fi
fi

ms=$((($(date +%s%N) - start) / 1000000))
summary="$passed passed"
((failed)) && summary="$failed failed, $summary"
((skipped)) && summary="$summary, $skipped skipped"
printf "==== %s in %d.%02ds (make test-arm) ====\n" "$summary" $((ms / 1000)) $((ms % 1000 / 10))
((failed == 0))
