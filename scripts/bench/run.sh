#!/usr/bin/env bash
# Benchmarks: install the peers, build build/, run the cases, update BENCHMARKS.md.
#
#   scripts/bench/run.sh                     every case, full size (4.4 min on 2 cores)
#   scripts/bench/run.sh --quick             small inputs, skips full-only cases (1 min)
#   scripts/bench/run.sh --case dedup-albert only that case (repeatable); --list shows them
#   other options (--reps N, --keep) go to scripts/bench/bench.py
#
# Work files go to bench-work/ (gitignored); big generated models are deleted afterwards unless
# --keep. Each case replaces only its own section of BENCHMARKS.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

for arg in "$@"; do
    case "$arg" in
    -h | --help)
        sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    esac
done

"$ROOT/scripts/deps.sh" --bench
# Benchmarks measure the build the tests use (scripts/test.sh): build/, RelWithDebInfo, no
# sanitizers. Configuring again is cheap and pins the build type in the cache for the report.
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSH_SANITIZE=OFF \
    -DMSH_PYTHON="$ROOT/.venv/bin/python" >/dev/null
cmake --build build -j "$JOBS" --target modelshrink >/dev/null

exec "$ROOT/.venv/bin/python" "$ROOT/scripts/bench/bench.py" "$@"
