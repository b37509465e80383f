#!/usr/bin/env bash
# Run the end-to-end suite with every modelshrink command under valgrind memcheck.
#
#   scripts/valgrind.sh                  every e2e test
#   scripts/valgrind.sh -R 'hostile|pth'  only the tests whose names match (ctest -R)
#   scripts/valgrind.sh -E 'corpus'       all but those (ctest -E)
#
# Builds build-valgrind/ (RelWithDebInfo, no sanitizers, no CUDA: memcheck cannot see GPU memory
# and the CUDA runtime's own allocations would only add noise), then runs ctest -L e2e with
# MSH_TEST_WRAPPER set, so each test's modelshrink commands run as
#   valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 ...
# A command with an invalid read or write, a use of uninitialised memory, a bad free or a
# definite leak exits 99, which fails its test; every process's report is kept in
# build-valgrind/valgrind-logs/. Ends with the number of processes checked, those with errors,
# and those killed on purpose (SIGKILL leaves no summary).
# Environment: JOBS (ctest parallelism, default nproc), MSH_VALGRIND_TIMEOUT (per test, seconds,
# default 14400).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind.sh: valgrind is not installed (scripts/deps.sh installs it)" >&2
    exit 1
fi
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || "$ROOT/scripts/deps.sh" || exit 1
BUILD="$ROOT/build-valgrind"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSH_WERROR=ON -DMSH_CUDA=OFF -DMSH_PYTHON="$PY" \
    -DMSH_E2E_TIMEOUT="${MSH_VALGRIND_TIMEOUT:-14400}" >/dev/null || exit 1
cmake --build "$BUILD" -j "$JOBS" >"$BUILD/build.log" 2>&1 || {
    tail -n 40 "$BUILD/build.log"
    exit 1
}
LOGS="$BUILD/valgrind-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"
export MSH_TEST_WRAPPER="valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
--errors-for-leak-kinds=definite --error-exitcode=99 --track-origins=no --num-callers=30 \
--log-file=$LOGS/vg.%p.log"

ctest --test-dir "$BUILD" -L e2e --output-on-failure -j "$JOBS" "$@"
rc=$?

# The logs: one per process. A clean one ends "ERROR SUMMARY: 0 errors"; one with no summary
# at all belongs to a process that was SIGKILLed on purpose (test_batch's resume tests).
n=0
killed=0
bad=()
for f in "$LOGS"/vg.*.log; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    if grep -q 'ERROR SUMMARY: 0 errors' "$f"; then
        continue
    elif grep -q 'ERROR SUMMARY:' "$f"; then
        bad+=("$f")
    else
        killed=$((killed + 1))
    fi
done
echo "valgrind.sh: $n modelshrink processes checked: ${#bad[@]} with errors," \
    "$killed killed before their summary (SIGKILL)"
for f in "${bad[@]:0:10}"; do
    echo "---- $f"
    grep -E 'Invalid|uninitialised|definitely lost|ERROR SUMMARY|Command:' "$f" | head -n 8
done
[ "$rc" -eq 0 ] && [ "${#bad[@]}" -eq 0 ]
