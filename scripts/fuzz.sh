#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan + UBSan) and run each for a given time.
#
#   scripts/fuzz.sh                       every target for 60 s, as many at once as there are cores
#   scripts/fuzz.sh --time 1800           every target for 30 minutes
#   scripts/fuzz.sh --time 300 fuzz_onnx  one target
#   scripts/fuzz.sh --jobs 1              one target at a time
#   scripts/fuzz.sh --time 1800 --benchmarks   also write the 'fuzzing' section of BENCHMARKS.md
#
# Targets: fuzz_onnx (ONNX reader and every pass), fuzz_pth (zip + pickle + checkpoint convert),
# fuzz_pickle (the pickle machine alone), fuzz_safetensors (safetensors reader and convert).
# Seeds come from the test fixtures (tests/fuzz/make_seeds.py) plus tests/fuzz/regressions/;
# what a run discovers is kept in build-fuzz/corpus/TARGET for the next run. A crash, leak,
# sanitizer report or timeout is saved as build-fuzz/artifacts/TARGET-crash-* and the script
# exits 1; turn each into a regression test by copying it to tests/fuzz/regressions/TARGET/
# (tests/e2e/test_hostile.py runs every file there through the command line).
# Logs: build-fuzz/logs/TARGET.log. The summary (tests/fuzz/fuzz_summary.py) gives each target's
# executions, exec/s, coverage, corpus size, peak RSS and finding.
# Environment: FUZZ_BUILD (default build-fuzz), FUZZ_ARGS (extra libFuzzer flags).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
ALL=(fuzz_onnx fuzz_pth fuzz_pickle fuzz_safetensors)
seconds=60
write_bench=0
jobs="$(nproc 2>/dev/null || echo 2)"
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --time)
        seconds="${2:?--time needs seconds}"
        shift
        ;;
    --jobs)
        jobs="${2:?--jobs needs a number}"
        shift
        ;;
    --benchmarks) write_bench=1 ;;
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    fuzz_*) targets+=("$1") ;;
    *)
        echo "fuzz.sh: unknown argument '$1' (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done
[ "${#targets[@]}" -gt 0 ] || targets=("${ALL[@]}")
case "$seconds" in '' | *[!0-9]*)
    echo "fuzz.sh: --time wants whole seconds, got '$seconds'" >&2
    exit 2
    ;;
esac

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz.sh: clang is not installed (scripts/deps.sh installs it)" >&2
    exit 1
fi
BUILD="${FUZZ_BUILD:-$ROOT/build-fuzz}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || "$ROOT/scripts/deps.sh" || exit 1

mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -DMSH_FUZZ=ON -DMSH_WERROR=ON -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    >"$BUILD/configure.log" 2>&1 || {
    cat "$BUILD/configure.log"
    exit 1
}
cmake --build "$BUILD" -j "$jobs" >"$BUILD/build.log" 2>&1 || {
    tail -n 40 "$BUILD/build.log"
    exit 1
}
rm -rf "$BUILD/seeds"
"$PY" tests/fuzz/make_seeds.py "$BUILD/seeds" || exit 1
mkdir -p "$BUILD/logs" "$BUILD/artifacts" "$BUILD/tmp"

seed_dir() { # seed folder name of a target
    case "$1" in
    fuzz_onnx) echo onnx ;;
    fuzz_pth) echo pth ;;
    fuzz_pickle) echo pickle ;;
    fuzz_safetensors) echo safetensors ;;
    esac
}

run_one() {
    local t="$1" s corpus regr
    s="$(seed_dir "$t")"
    corpus="$BUILD/corpus/$t"
    regr="$ROOT/tests/fuzz/regressions/$t"
    mkdir -p "$corpus"
    local dirs=("$corpus" "$BUILD/seeds/$s")
    [ -d "$regr" ] && dirs+=("$regr")
    # detect_leaks: a leak is a finding like a crash. -timeout: one input over 10 s is a hang.
    TMPDIR="$BUILD/tmp" ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
        "$BUILD/tests/fuzz/$t" "${dirs[@]}" -max_total_time="$seconds" -max_len=262144 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$BUILD/artifacts/$t-" ${FUZZ_ARGS:-} >"$BUILD/logs/$t.log" 2>&1
}

echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each, $jobs at a time; logs in $BUILD/logs"
declare -A rc
running=0
pids=()
names=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
fail=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rc[${names[$i]}]=$?
done

args=()
for t in "${targets[@]}"; do
    args+=("$t=${rc[$t]}")
    [ "${rc[$t]}" -eq 0 ] || fail=1
done
bench=()
[ "$write_bench" -eq 1 ] && bench=(--benchmarks "$ROOT/BENCHMARKS.md")
"$PY" tests/fuzz/fuzz_summary.py "$BUILD" "$seconds" "$jobs" "${args[@]}" "${bench[@]}"
if [ "$fail" -ne 0 ]; then
    echo "fuzz.sh: findings saved in $BUILD/artifacts/ (see the logs)" >&2
    ls -1 "$BUILD/artifacts" >&2
fi
exit "$fail"
