#!/usr/bin/env bash
# A two-minute tour: build modelshrink, make a small model zoo, inspect one model, convert the zoo,
# and make the HTML pages of the model and of the batch.
#
#   scripts/demo.sh
#
# Leaves demo-zoo/ (inputs) and demo-zoo-out/ (outputs, the batch report and the two pages) in the
# repo root; both are gitignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PY="$ROOT/.venv/bin/python"
BIN="$ROOT/build/modelshrink"
ZOO=demo-zoo     # relative to $ROOT, so the output shows short paths
OUT=demo-zoo-out

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

say "dependencies"
"$ROOT/scripts/deps.sh"

say "build (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMSH_PYTHON="$PY" >/dev/null
cmake --build build -j "$JOBS" --target modelshrink >/dev/null
"$BIN" --version

say "generate a demo zoo in demo-zoo/"
rm -rf "$ZOO" "$OUT"
"$PY" "$ROOT/tests/fixtures/gen_models.py" zoo "$ZOO" >/dev/null
find "$ZOO" -name '*.onnx' -printf '%10s  %P\n' | sort -k2

# The largest model (the tiny ALBERT) has the most duplicates, so the most telling table.
first="$(find "$ZOO" -name '*.onnx' -printf '%s %p\n' | sort -rn | head -n 1 | cut -d' ' -f2-)"
say "modelshrink inspect $first"
"$BIN" inspect "$first"

say "modelshrink convert --report $OUT/report.jsonl $ZOO -o $OUT"
rc=0
"$BIN" convert --report "$OUT/report.jsonl" "$ZOO" -o "$OUT" || rc=$?

page="$OUT/$(basename "$first" .onnx).html"
say "modelshrink inspect --html $page $first; modelshrink report html $OUT/report.jsonl -o $OUT/report.html"
"$BIN" inspect --html "$page" "$first" || rc=$?
"$BIN" report html "$OUT/report.jsonl" -o "$OUT/report.html" || rc=$?
echo "open $page and $OUT/report.html in a browser"

say "summary"
bytes_in=$(find "$ZOO" -type f \( -name '*.onnx' -o -name '*.data' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}')
bytes_out=0
if [ -d "$OUT" ]; then
    bytes_out=$(find "$OUT" -type f \( -name '*.onnx' -o -name '*.data' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}')
fi
n_in=$(find "$ZOO" -name '*.onnx' | wc -l)
n_out=$(find "$OUT" -name '*.onnx' 2>/dev/null | wc -l)
awk -v a="$bytes_in" -v b="$bytes_out" -v ni="$n_in" -v no="$n_out" 'BEGIN {
    printf "models: %d in, %d out\n", ni, no
    printf "bytes:  %d in, %d out", a, b
    if (b > 0) printf " (%.2fx smaller, %.1f MiB saved)", a / b, (a - b) / 1048576
    printf "\n"
}'
echo "convert exit code: $rc"
exit "$rc"
