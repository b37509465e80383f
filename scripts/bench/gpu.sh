#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md (issue: the CUDA path). Needs a CUDA build and an NVIDIA GPU.
#
#   scripts/bench/gpu.sh [BUILD_DIR]      (default: build/, configured with MSH_CUDA=ON or AUTO)
#
# Runs modelshrink-gpubench (D2D and pinned H2D bandwidth, each kernel's throughput against the
# D2D copy, the streaming driver end to end against pinned H2D), then --device cuda --verify over
# Debian's libonnx-testdata and a BERT-base-shaped model (FP16, BF16, INT8), and writes the
# "GPU" section of BENCHMARKS.md. Without a GPU it says so and exits 77, writing nothing.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build}"
BENCH="$BUILD/modelshrink-gpubench"
MSH="$BUILD/modelshrink"
PY="$ROOT/.venv/bin/python"
if [ ! -x "$BENCH" ]; then
    echo "gpu.sh: $BENCH is missing: configure with -DMSH_CUDA=ON (nvcc needed)" >&2
    exit 77
fi
out="$("$BENCH" 1024)"
rc=$?
if [ $rc -eq 77 ]; then
    echo "gpu.sh: no CUDA device on this machine; nothing measured"
    exit 77
fi
[ $rc -eq 0 ] || { echo "$out"; exit 1; }
work="$ROOT/bench-work/gpu"
rm -rf "$work" && mkdir -p "$work"
verify_lines=()
for opt in --fp16 --bf16 "--int8 --int8-min-elements 1"; do
    # shellcheck disable=SC2086
    if "$MSH" convert -q --device cuda --verify $opt /usr/share/libonnx-testdata/data \
        -o "$work/corpus" 2>"$work/verify.err"; then
        verify_lines+=("- libonnx-testdata, \`--device cuda --verify $opt\`: every model verified, 0 mismatches")
    else
        verify_lines+=("- libonnx-testdata, \`--device cuda --verify $opt\`: FAILED: $(head -3 "$work/verify.err")")
    fi
    rm -rf "$work/corpus"
done
"$PY" -c "import sys; sys.path.insert(0,'$ROOT/tests/fixtures'); import gen_models as g, onnx; onnx.save(g.make_bert(), '$work/bert.onnx')"
timing=()
for opt in --fp16 --int8; do
    for dev in cpu cuda; do
        t=$( { /usr/bin/time -f "%e %M" "$MSH" convert -q --device $dev $opt "$work/bert.onnx" \
            -o "$work/out.onnx" >/dev/null; } 2>&1 | tail -1)
        timing+=("| BERT-base \`$opt\` | $dev | ${t% *} | $(( ${t#* } / 1024 )) |")
    done
    "$MSH" convert -q --device cuda --verify $opt "$work/bert.onnx" -o "$work/out.onnx" \
        && verify_lines+=("- BERT-base \`--device cuda --verify $opt\`: 0 mismatches")
done
body="## GPU

\`scripts/bench/gpu.sh\` on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u '+%Y-%m-%d %H:%M UTC').

\`\`\`
$out
\`\`\`

| model | device | wall s | peak RSS MiB |
|---|---|---:|---:|
$(printf '%s\n' "${timing[@]}")

$(printf '%s\n' "${verify_lines[@]}")
"
"$PY" -c "import sys; sys.path.insert(0,'$ROOT/scripts/bench'); import report; report.update_section('$ROOT/BENCHMARKS.md', 'gpu', sys.stdin.read())" <<<"$body"
echo "$body"
