#!/usr/bin/env bash
# Everything CI checks, in one script: dependencies, Release builds with gcc and with clang
# (warnings are errors here, MSH_WERROR=ON, as in every CI build; users' builds never fail on a
# warning), each installed and used by tests/install/test_install.sh (shared and static library,
# pkg-config and find_package), a user's plain Release build (no -Werror) installed and used
# the same way, a RelWithDebInfo build with all tests, the Python package installed by pip into a
# fresh venv and tested with pytest (tests/python), then an AddressSanitizer + UBSan build
# (MSH_SANITIZE=ON) with all tests again, the end-to-end tests with every modelshrink command
# under valgrind memcheck (scripts/valgrind.sh), then every libFuzzer target for 60 seconds
# (scripts/fuzz.sh).
#
#   scripts/test.sh                 all of it
#   scripts/test.sh --no-asan       skip the sanitizer build (quicker local runs)
#   scripts/test.sh --no-valgrind   skip the valgrind step
#   scripts/test.sh --no-fuzz       skip the fuzzing step
#
# Also checks clang-format drift when .clang-format exists (MSH_SKIP_FORMAT=1 skips that).
# Environment: JOBS (default: nproc), MSH_CUDA (AUTO/ON/OFF for build/, default AUTO),
# MSH_ASAN_CUDA (for build-asan/, default OFF: ASan and the CUDA runtime do not mix well, and
# without a GPU the CUDA tests skip anyway), MSH_FUZZ_SECONDS (per fuzz target, default 60).
# Exits non-zero when any step fails. Ends with a summary; the last line is
# 'tests: N passed, N failed, N skipped', counted over both ctest runs.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

run_asan=1
run_fuzz=1
run_valgrind=1
for arg in "$@"; do
    case "$arg" in
    --no-asan) run_asan=0 ;;
    --no-fuzz) run_fuzz=0 ;;
    --no-valgrind) run_valgrind=0 ;;
    -h | --help)
        sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "test.sh: unknown option '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
# nvcc lives outside PATH on a stock CUDA install; let CMake's MSH_CUDA=AUTO find it.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi

start=$(date +%s)
declare -a results=()
failed=0

step() { # step NAME COMMAND... : run, time and record one step
    local name="$1"
    shift
    local t0 rc
    t0=$(date +%s)
    echo
    echo "==== $name: $*"
    "$@"
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        results+=("ok    $name (${dt}s)")
    else
        results+=("FAIL  $name (exit $rc, ${dt}s)")
        failed=$((failed + 1))
    fi
    return "$rc"
}

summary() {
    echo
    echo "==== summary"
    local r
    for r in "${results[@]}"; do echo "  $r"; done
    local total=$(($(date +%s) - start))
    if [ "$failed" -eq 0 ]; then
        echo "test.sh: all ${#results[@]} steps passed in ${total}s"
    else
        echo "test.sh: $failed of ${#results[@]} steps FAILED in ${total}s"
    fi
    # Plain closing line, counted over both builds' ctest runs.
    echo "tests: $tests_passed passed, $tests_failed failed, $tests_skipped skipped"
}

PY="$ROOT/.venv/bin/python"

build_and_test() { # build_and_test DIR LABEL CMAKE_ARGS...
    local dir="$1" label="$2"
    shift 2
    step "configure $label" cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DMSH_WERROR=ON -DMSH_PYTHON="$PY" "$@" || return 1
    step "build $label" cmake --build "$dir" -j "$JOBS" || return 1
    step "ctest $label" run_ctest "$dir" || return 1
}

tests_passed=0
tests_failed=0
tests_skipped=0
run_ctest() { # run_ctest DIR: ctest with its output kept, to count tests for the summary
    local log="$1/ctest-output.log" rc line total fail skip
    ctest --test-dir "$1" --output-on-failure -j "$JOBS" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    # "100% tests passed, 0 tests failed out of 42"
    line="$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)"
    if [ -n "$line" ]; then
        total="$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")"
        fail="$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")"
        skip="$(grep -cE '^[[:space:]]+[0-9]+ - .*\((Skipped|Disabled)\)' "$log" || true)"
        tests_passed=$((tests_passed + total - fail - skip))
        tests_failed=$((tests_failed + fail))
        tests_skipped=$((tests_skipped + skip))
    elif [ "$rc" -ne 0 ]; then
        tests_failed=$((tests_failed + 1))
    fi
    return "$rc"
}

format_check() { # clang-format drift in project sources (STYLE.md: "CI fails on drift")
    local files
    mapfile -t files < <(git -C "$ROOT" ls-files --cached --others --exclude-standard \
        -- 'src/*.[ch]' 'include/*.h' 'tests/*.[ch]' 'cuda/*.cu' 'cuda/*.cuh' 'cuda/*.h' \
        'examples/*.c')
    if [ "${#files[@]}" -eq 0 ]; then
        echo "no C sources to check"
        return 0
    fi
    clang-format --dry-run --Werror "${files[@]}"
}

if [ -f "$ROOT/.clang-format" ] && command -v clang-format >/dev/null 2>&1 &&
    [ "${MSH_SKIP_FORMAT:-0}" != 1 ]; then
    step "clang-format" format_check
fi
release_build() { # release_build COMPILER: what a user's `cmake -DCMAKE_BUILD_TYPE=Release` builds
    local dir="$ROOT/build-release-$1"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$1" -DMSH_WERROR=ON \
        -DMSH_CUDA=OFF -DMSH_BUILD_TESTS=OFF >/dev/null &&
        cmake --build "$dir" -j "$JOBS" && "$dir/modelshrink" --version &&
        "$ROOT/tests/install/test_install.sh" --build "$dir"
}
# A user's build exactly: `cmake -DCMAKE_BUILD_TYPE=Release`, nothing else (no -Werror, CUDA when
# nvcc is found, the tests built), then `cmake --install` and the library's consumers. A fresh
# cache each time, so no option of an earlier run carries over.
user_release_build() {
    local dir="$ROOT/build-release-user"
    rm -f "$dir/CMakeCache.txt"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
        cmake --build "$dir" -j "$JOBS" && "$dir/modelshrink" --version &&
        "$ROOT/tests/install/test_install.sh" --build "$dir"
}
# The Python package as a user installs it: `pip install .[check,test]` into a fresh venv (the
# system Python, python3-venv), then tests/python/ run by pytest from that venv, outside the
# source tree's python/ folder. MSH_EXPECT_CUDA tells the tests whether the wheel's build
# should have found nvcc.
python_package() {
    local venv="$ROOT/build-python/venv"
    rm -rf "$ROOT/build-python"
    /usr/bin/python3 -m venv "$venv" &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$ROOT[check,test]" &&
        (cd "$ROOT/build-python" &&
            MSH_EXPECT_CUDA="$(command -v nvcc >/dev/null && echo 1 || echo 0)" \
                "$venv/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/tests/python")
}

if step "deps" "$ROOT/scripts/deps.sh"; then
    step "Release build, gcc (-Werror)" release_build gcc
    step "Release build, clang (-Werror)" release_build clang
    step "Release build as a user (defaults, no -Werror)" user_release_build
    build_and_test build "build/" -DMSH_CUDA="${MSH_CUDA:-AUTO}"
    step "Python package (pip install, pytest)" python_package
    if [ "$run_asan" -eq 1 ]; then
        export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
        export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
        build_and_test build-asan "build-asan/ (ASan+UBSan)" -DMSH_SANITIZE=ON \
            -DMSH_CUDA="${MSH_ASAN_CUDA:-OFF}"
    fi
    if [ "$run_valgrind" -eq 1 ]; then
        step "valgrind (e2e under memcheck)" "$ROOT/scripts/valgrind.sh"
    fi
    if [ "$run_fuzz" -eq 1 ]; then
        step "fuzz (${MSH_FUZZ_SECONDS:-60}s per target)" "$ROOT/scripts/fuzz.sh" \
            --time "${MSH_FUZZ_SECONDS:-60}"
    fi
fi

summary
[ "$failed" -eq 0 ]
