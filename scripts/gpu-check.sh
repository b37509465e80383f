#!/usr/bin/env bash
# One command that proves the GPU path on a GPU machine, in two halves.
#
#   scripts/gpu-check.sh prepare         here (Debian, with network): gather what the build needs
#                                        into gpu-kit/ (ignored; < 64 MiB): the .deb files of
#                                        protobuf-c, its compiler, xxhash, cJSON, zlib and pkgconf,
#                                        unpacked with dpkg -x into gpu-kit/prefix, onnx.proto,
#                                        and libonnx-testdata's models
#   scripts/gpu-check.sh run [OUT]       on the GPU machine (no network, none of our Debian
#                                        packages): build with CUDA for the device's architecture
#                                        from the kit, run the GPU tests, compute-sanitizer over
#                                        the engine test once, --verify over libonnx-testdata's
#                                        1072 models (carried), a BERT-shaped model, a 1 GiB model and
#                                        an Adam checkpoint, the INT4 search on cpu and GPU (same
#                                        bytes, both GB/s), then the GPU benchmarks; writes
#                                        OUT/summary.txt, OUT/gpu-section.md and OUT/gpu-check.log
#                                        (OUT: $OUT when set, else bench-work/gpu-check)
#   scripts/gpu-check.sh rehearse        here: `run` in a clean copy of the working tree, building
#                                        only from the kit
#                                        (no GPU: the GPU steps say so and skip)
#   scripts/gpu-check.sh merge FILE      here: put a run's gpu-section.md into BENCHMARKS.md
#
# On a remote GPU machine that receives a copy of the working tree (the device tool): prepare
# here, then carry gpu-kit and run `scripts/gpu-check.sh run` there; the files under $OUT come
# back; merge gpu-section.md. The whole check is sized for an H200 machine with 16 cores: under
# 8 minutes, build included. GPU_CHECK_QUICK=1 makes every model small (for the rehearsal).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="$ROOT/gpu-kit"
DEBS=(protobuf-c-compiler libprotoc32 libprotobuf32 libprotobuf-c1 libprotobuf-c-dev
      libxxhash0 libxxhash-dev libcjson1 libcjson-dev zlib1g-dev pkgconf pkgconf-bin libpkgconf3)

die() {
    echo "gpu-check: $*" >&2
    exit 1
}

prepare() {
    command -v apt-get >/dev/null || die "prepare needs apt-get (a Debian machine)"
    rm -rf "$KIT"
    mkdir -p "$KIT/debs" "$KIT/prefix"
    (cd "$KIT/debs" && apt-get download "${DEBS[@]}" >/dev/null) || die "apt-get download failed"
    for d in "$KIT"/debs/*.deb; do dpkg -x "$d" "$KIT/prefix" || die "dpkg -x $d"; done
    cp /usr/include/onnx/onnx.proto "$KIT/onnx.proto" || die "onnx.proto not found (libonnx-dev)"
    # the corpus: Debian's libonnx-testdata models (the onnx wheel ships only ~150 of them)
    (cd /usr/share/libonnx-testdata/data && find . -name model.onnx -print0 |
        tar --null -T - -czf "$KIT/corpus.tgz") || die "libonnx-testdata not found"
    rm -rf "$KIT/debs" "$KIT/prefix/usr/share/doc" "$KIT/prefix/usr/share/man"
    echo "gpu-check: kit ready in $KIT ($(du -sh "$KIT" | cut -f1))"
}

# Environment that builds from the kit alone: its pkg-config files (relocated with a sysroot),
# its protoc-c and its libraries.
kit_env() {
    [ -d "$KIT/prefix" ] || die "no gpu-kit/: run 'scripts/gpu-check.sh prepare' first and carry it"
    local p="$KIT/prefix" arch
    arch="$(ls "$p/usr/lib" | grep -m1 linux-gnu || true)"
    export PKG_CONFIG_LIBDIR="$p/usr/lib/$arch/pkgconfig:$p/usr/share/pkgconfig"
    export PKG_CONFIG_SYSROOT_DIR="$p"
    export PKG_CONFIG="$p/usr/bin/pkgconf"
    export LD_LIBRARY_PATH="$p/usr/lib/$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$p/usr/bin:$PATH"
    KIT_CMAKE=(-DPKG_CONFIG_EXECUTABLE="$p/usr/bin/pkgconf" -DMSH_ONNX_PROTO="$KIT/onnx.proto"
               -DPROTOC_C="$p/usr/bin/protoc-c")
}

run_check() {
    local out="${1:-${OUT:-$ROOT/bench-work/gpu-check}}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local log="$out/gpu-check.log" sum="$out/summary.txt" t0
    t0=$(date +%s)
    : >"$log"
    : >"$sum"
    say() { echo "$*" | tee -a "$sum"; }
    step() { echo "== $*" | tee -a "$log"; }
    # seconds a command takes (no GNU time on the GPU image); its output goes to the log
    secs() {
        local a b
        a=$(date +%s%N)
        "$@" >>"$log" 2>&1
        b=$(date +%s%N)
        awk -v n=$((b - a)) 'BEGIN { printf "%.2f", n / 1e9 }'
    }
    kit_env
    local py="${GPU_CHECK_PYTHON:-python3}"
    local gpu=0 arch="" name="no GPU"
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        gpu=1
        name="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
        arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')"
    fi
    say "gpu-check: $(date -u '+%Y-%m-%d %H:%M UTC'), device: $name, $(nproc) cores"
    local B="$ROOT/build-gpu" gen=() cuda=OFF
    command -v ninja >/dev/null && gen=(-G Ninja)
    if [ "$gpu" = 1 ] || command -v nvcc >/dev/null; then cuda=ON; fi
    step "configure (CUDA $cuda${arch:+, sm_$arch})"
    rm -rf "$B"
    cmake -S "$ROOT" -B "$B" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMSH_CUDA="$cuda" \
        ${arch:+-DCMAKE_CUDA_ARCHITECTURES="$arch"} -DMSH_PYTHON="$(command -v "$py")" \
        "${KIT_CMAKE[@]}" >>"$log" 2>&1 || { say "FAILED: configure (see gpu-check.log)"; tail -30 "$log"; return 1; }
    step "build"
    cmake --build "$B" -j "$(nproc)" >>"$log" 2>&1 || { say "FAILED: build"; tail -30 "$log"; return 1; }
    say "build: $(( $(date +%s) - t0 )) s, CUDA $cuda"
    local MSH="$B/modelshrink"
    "$MSH" --version | tee -a "$sum"

    step "GPU tests (ctest -L gpu)"
    ctest --test-dir "$B" -L gpu --output-on-failure >>"$log" 2>&1
    local rc=$?
    say "ctest -L gpu: $(grep -E 'tests passed|tests failed' "$log" | tail -1) (rc $rc)"
    if [ "$gpu" = 1 ] && command -v compute-sanitizer >/dev/null; then
        for tool in memcheck racecheck; do
            step "compute-sanitizer --tool $tool test_gpu_engine"
            if compute-sanitizer --tool "$tool" --error-exitcode 9 "$B/tests/test_gpu_engine" \
                >>"$log" 2>&1; then
                say "compute-sanitizer $tool: no error"
            else
                say "compute-sanitizer $tool: FAILED (see gpu-check.log)"
            fi
        done
    else
        say "compute-sanitizer: not run (no GPU or no compute-sanitizer)"
    fi

    local W="$ROOT/bench-work/gpu-check-work"
    rm -rf "$W" && mkdir -p "$W"
    local corpus="$W/testdata"
    mkdir -p "$corpus"
    tar -xzf "$KIT/corpus.tgz" -C "$corpus" || say "FAILED: unpacking the corpus"
    step "--verify over $corpus"
    local dev=cuda
    [ "$gpu" = 1 ] || dev=cpu
    for opt in --fp16 --bf16 "--int8 --int8-min-elements 1" "--int4 --int4-min-elements 1"; do
        # shellcheck disable=SC2086
        "$MSH" convert -q --jobs "$(nproc)" --device $dev --verify $opt "$corpus" -o "$W/corpus" \
            --report "$W/corpus.jsonl" >>"$log" 2>&1
        local n ok
        n=$(grep -c '"type":"model"' "$W/corpus.jsonl" || true)
        ok=$(grep -c '"status":"ok"' "$W/corpus.jsonl" || true)
        local vf
        vf=$(grep -c 'verify:' "$W/corpus.jsonl" || true)
        say "corpus $opt on $dev with --verify: $ok of $n models converted, $vf verify mismatches"
        rm -rf "$W/corpus" "$W/corpus.jsonl"
    done

    local q="${GPU_CHECK_QUICK:-0}"
    export MSH_ROOT="$ROOT"
    step "models"
    "$py" - "$W" "$q" >>"$log" 2>&1 <<'PYEOF' || say "FAILED: making the models (see gpu-check.log)"
import os, sys
import numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
w, quick = sys.argv[1], sys.argv[2] == "1"
sys.path.insert(0, os.path.join(os.environ.get("MSH_ROOT", "."), "tests", "fixtures"))
import gen_models as g
onnx.save(g.make_bert() if not quick else g.make_albert(layers=2, hidden=64, embed=32, ffn=128,
                                                       vocab=500, heads=4), os.path.join(w, "bert.onnx"))
def mlp(path, gib, ext):
    rng = np.random.default_rng(15)
    n = max(1, int(gib * 1024 / 32))     # 32 MiB weights (2048 x 4096)
    inits, nodes, x = [], [], "x"
    for i in range(n):
        a, b = (2048, 4096) if i % 2 == 0 else (4096, 2048)
        wgt = (rng.standard_normal((a, b), dtype=np.float32) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(wgt, "w%d" % i))
        nodes.append(helper.make_node("MatMul", [x, "w%d" % i], ["h%d" % i]))
        x = "h%d" % i
    gr = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
                           [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2048 if n % 2 == 0 else 4096])], inits)
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, path, save_as_external_data=ext, location=os.path.basename(path) + ".data")
mlp(os.path.join(w, "m1g.onnx"), 0.0625 if quick else 1, False)
mlp(os.path.join(w, "m8g.onnx"), 0.125 if quick else 8, True)
try:
    import torch
    net = torch.nn.Sequential(*[torch.nn.Linear(2048 if not quick else 64, 2048 if not quick else 64) for _ in range(16)])
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 2048 if not quick else 64)).sum().backward()
    opt.step()
    torch.save({"epoch": 1, "model_state_dict": net.state_dict(), "optimizer_state_dict": opt.state_dict()},
               os.path.join(w, "adam.pth"))
except ImportError:
    print("no torch: no checkpoint")
PYEOF
    step "verify and time: BERT, 1 GiB, 8 GiB (external data), Adam checkpoint"
    {
        echo "| model | conversion | cpu s | $dev s | $dev vs cpu | verify |"
        echo "|---|---|---:|---:|---:|---|"
    } >"$W/table.md"
    local m opt
    for m in bert.onnx m1g.onnx m8g.onnx adam.pth; do
        [ -f "$W/$m" ] || continue
        local opts=("--fp16" "--int8" "--int4" "")
        [ "$m" = adam.pth ] && opts=("--fp16" "--format pth --fp16" "")
        for opt in "${opts[@]}"; do
            local ext=".onnx"
            [ "$m" = adam.pth ] && ext=".safetensors"
            case "$opt" in *"format pth"*) ext=".pth" ;; esac
            local tc tg vr
            # shellcheck disable=SC2086
            tc=$(secs "$MSH" convert -q --device cpu $opt "$W/$m" -o "$W/o_cpu$ext")
            # shellcheck disable=SC2086
            tg=$(secs "$MSH" convert -q --device $dev $opt "$W/$m" -o "$W/o_dev$ext")
            # shellcheck disable=SC2086
            if "$MSH" convert -q --device $dev --verify $opt "$W/$m" -o "$W/o_ver$ext" >>"$log" 2>&1 &&
                "$MSH" diff "$W/o_cpu$ext" "$W/o_dev$ext" >>"$log" 2>&1; then
                vr="0 mismatches, outputs identical"
            else
                vr="**FAILED** (see gpu-check.log)"
            fi
            echo "| $m | ${opt:-dedup} | $tc | $tg | $(awk -v a="$tc" -v b="$tg" 'BEGIN{ if (b > 0) printf "%.2fx", a / b; else print "n/a" }') | $vr |" >>"$W/table.md"
            rm -f "$W"/o_*
        done
    done
    cat "$W/table.md" | tee -a "$sum"

    step "INT4 search: --int4 --int4-search on the 1 GiB model, cpu vs $dev"
    if [ -f "$W/m1g.onnx" ]; then
        # the model's line says "search N GB/s" (FP32 weight bytes over the search scan's time)
        local d2 t_a t_b rate=() wall=() ran=()
        for d2 in cpu $dev; do
            t_a=$(date +%s%N)
            "$MSH" convert --device "$d2" --int4 --int4-search "$W/m1g.onnx" -o "$W/s_$d2.onnx" \
                >"$W/s_$d2.txt" 2>&1
            t_b=$(date +%s%N)
            cat "$W/s_$d2.txt" >>"$log"
            rate+=("$(grep -o 'search [0-9.]* GB/s' "$W/s_$d2.txt" | awk '{ print $2 }')")
            ran+=("$(grep -o 'on [a-z]*$' "$W/s_$d2.txt" | tail -1)")
            wall+=("$(awk -v n=$((t_b - t_a)) 'BEGIN { printf "%.2f", n / 1e9 }')")
        done
        local same="outputs identical"
        cmp -s "$W/s_cpu.onnx" "$W/s_$dev.onnx" || same="**outputs DIFFER**"
        [ -s "$W/s_cpu.onnx" ] || same="**FAILED** (see gpu-check.log)"
        say "int4 search, 1 GiB MatMul model: cpu ${rate[0]:-?} GB/s (${wall[0]} s), $dev ${rate[1]:-?} GB/s (${wall[1]} s, ${ran[1]:-failed}), $dev vs cpu $(awk -v a="${rate[0]:-0}" -v b="${rate[1]:-0}" 'BEGIN{ if (a > 0) printf "%.1fx", b / a; else print "n/a" }') (target >= 10x), $same"
        rm -f "$W"/s_*
    fi

    step "batch: 16 copies of the 1 GiB model, --jobs 1 and 16"
    mkdir -p "$W/zoo"
    for i in $(seq 1 16); do ln -f "$W/m1g.onnx" "$W/zoo/m$i.onnx"; done
    local j d
    for d in cpu $dev; do
        for j in 1 16; do
            local tb
            tb=$(secs "$MSH" convert -q --jobs $j --device $d --fp16 "$W/zoo" -o "$W/zoo_out")
            say "batch of 16 x 1 GiB, --fp16, --jobs $j, --device $d: $tb s"
            rm -rf "$W/zoo_out"
        done
    done

    if [ "$gpu" = 1 ] && [ -x "$B/modelshrink-gpubench" ]; then
        step "gpubench"
        "$B/modelshrink-gpubench" 1024 | tee -a "$sum" "$log"
    else
        say "gpubench: not run (no GPU)"
    fi
    say "gpu-check: done in $(( $(date +%s) - t0 )) s"
    {
        echo "## GPU"
        echo
        echo "Written by \`scripts/gpu-check.sh run\` on the GPU machine and merged with \`scripts/gpu-check.sh merge\`."
        echo
        echo '```'
        cat "$sum"
        echo '```'
    } >"$out/gpu-section.md"
    rm -rf "$W"
}

rehearse() {
    [ -d "$KIT/prefix" ] || prepare
    local d
    d="$(mktemp -d)"
    mkdir -p "$d/tree"
    # what the device tool sends: tracked and untracked-not-ignored files, plus the carried kit
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$d/tree" || die "copy failed"
    cp -a "$KIT" "$d/tree/gpu-kit"
    echo "gpu-check: rehearsing in $d/tree (the build uses the kit's pkg-config, protoc-c and libraries)"
    (cd "$d/tree" && GPU_CHECK_QUICK=1 GPU_CHECK_PYTHON="$ROOT/.venv/bin/python" \
        PATH="/usr/local/cuda/bin:$PATH" bash scripts/gpu-check.sh run "$d/out")
    local rc=$?
    cat "$d/out/summary.txt"
    echo "gpu-check: rehearsal exit $rc; files in $d/out"
    return $rc
}

merge() {
    local f="${1:-}"
    [ -f "$f" ] || die "merge needs the gpu-section.md a run wrote"
    "$ROOT/.venv/bin/python" - "$ROOT/BENCHMARKS.md" "$f" <<'PYEOF'
import sys
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(sys.argv[1]), "scripts", "bench"))
import report
report.update_section(sys.argv[1], "gpu", open(sys.argv[2]).read())
print("gpu-check: merged into", sys.argv[1])
PYEOF
}

case "${1:-}" in
prepare) prepare ;;
run) shift; run_check "$@" ;;
rehearse) rehearse ;;
merge) shift; merge "$@" ;;
*)
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
