#!/usr/bin/env python3
"""End-to-end: FP16, BF16 and INT8 on models made as users make them, where converters fail.

Fixtures (tests/fixtures/make_precision_models.py, run here with Debian's torch and
torchvision under /usr/bin/python3, then the onnx package for the Constant rewrite):
  detector_bn      MobileNetV3-Small text detector, BatchNorm running_var 1e7..1e8 (opset 13)
  detector_folded  the same exported with BatchNorm folded into the Convs
  crnn_op11        CNN + 2-layer bidirectional LSTM text recognizer (opset 11)
  gated, gated_op11  an If with Linear weights in both branches, every weight a Constant node
                   (Paddle style), opsets 13 and 11; fed both ways so both branches run
  pitch.pth        a bare state dict of a pitch estimator, BatchNorm running_var up to 5e5

Each ONNX fixture is converted with `--fp16`, `--fp16 --fp16-clamp`, `--fp16 --storage-only`,
`--bf16 --storage-only`, `--bf16` and `--int8`. The oracle is onnxruntime (CPU) on the FP32
original; a converted model runs in onnxruntime too, or, where onnxruntime has no CPU kernel for
an FP16/BF16 op (NOT_IMPLEMENTED), in onnx.reference.ReferenceEvaluator. Cosine similarity of all
outputs (flattened, float64) must be >= 0.999 for `--fp16`, both `--storage-only` modes and
`--int8`; every output must pass onnx.checker.check_model(full_check=True); `--storage-only`
outputs must run in onnxruntime itself. The traps must be real: `--fp16-clamp` must break
detector_bn (cosine < 0.99), and the default line must say which tensors it kept FP32 and why.
`--bf16` (full BF16 compute) is reported, not judged: onnxruntime has no BF16 CPU kernels for
most ops. INT8 must quantize the Constant-node weights (inside the If too) and the LSTM weights.
onnxconverter-common's convert_float_to_float16(keep_io_types=True) runs on every ONNX fixture
when it is installed (reported only; its figures go to BENCHMARKS.md through
scripts/bench/traps.py).

The checkpoint is converted to safetensors and to .pth with `--fp16`, `--fp16 --fp16-clamp`,
`--fp16 --fp16-clamp --keep-fp32 '*running_var'` and `--bf16`; torch (the model's own code)
loads each output into the FP32 module (load_state_dict copies and widens) and runs it. Cosine to
the original >= 0.999 except `--fp16-clamp`, which must fall below 0.99 (the trap).

Every result goes to WORK/precision.tsv. Skips (77) when /usr/bin/python3 cannot import torch and
torchvision, or the test venv lacks onnx/onnxruntime."""

import json
import os
import re
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_precision"
SYS_PY = "/usr/bin/python3"
GEN = os.path.join(C.FIXTURES, "make_precision_models.py")
COS = 0.999
TRAP_COS = 0.99

MODES = {
    "fp16": ["--fp16"],
    "fp16-clamp": ["--fp16", "--fp16-clamp"],
    "fp16-storage": ["--fp16", "--storage-only"],
    "bf16-storage": ["--bf16", "--storage-only"],
    "bf16": ["--bf16"],
    "int8": ["--int8"],
}
JUDGED = ("fp16", "fp16-storage", "bf16-storage", "int8")
ONNX_FIXTURES = {  # name -> the feed sets (keys of inputs.npz) it runs on
    "detector_bn": ["detector"],
    "detector_folded": ["detector"],
    "crnn_op11": ["crnn"],
    "gated": ["gated", "gated_else"],
    "gated_op11": ["gated", "gated_else"],
}

# Runs under /usr/bin/python3 (torch): argv = model.py, state dict (.pth / .safetensors) or "-"
# for the original, original .pth, input .npy; prints the outputs as a JSON list.
TORCH_RUN = r'''
import json, struct, sys
import numpy as np
import torch
src, sd_path, orig, inp = sys.argv[1:5]
ns = {}
exec(open(src).read(), ns)
model = ns["Pitch"]()
model.load_state_dict(torch.load(orig, weights_only=True))
if sd_path.endswith(".safetensors"):
    raw = open(sd_path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    sd = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = data[a:b]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, {"F32": np.float32, "F16": np.float16,
                                      "I64": np.int64}[v["dtype"]])
        sd[k] = torch.from_numpy(arr.reshape(v["shape"]).copy())
    model.load_state_dict(sd)
elif sd_path != "-":
    model.load_state_dict(torch.load(sd_path, weights_only=True))
model.eval()
with torch.no_grad():
    y = model(torch.from_numpy(np.load(inp)))
print(json.dumps(y.double().numpy().tolist()))
'''


def main():
    np, onnx, ort = C.import_deps("numpy", "onnx", "onnxruntime")
    from onnx.reference import ReferenceEvaluator
    args = C.parse_args(__doc__)
    probe = subprocess.run([SYS_PY, "-c", "import torch, torchvision"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        C.skip("%s cannot import torch and torchvision (Debian's python3-torch and "
               "python3-torchvision): %s" % (SYS_PY, probe.stderr.strip()[-200:]))
    F = C.Failures()
    w = args.work
    fx = os.path.join(w, "fixtures")
    t0 = time.time()
    for argv in ([SYS_PY, GEN, fx], [sys.executable, GEN, fx, "--constants"]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if not F.check(r.returncode == 0, "fixtures: %s" % " ".join(argv), r.stderr[-3000:]):
            return F.finish(NAME)
    print("fixtures made in %.1f s" % (time.time() - t0))
    inputs = np.load(os.path.join(fx, "inputs.npz"))
    feeds_of = {}
    for k in inputs.files:
        m, name = k.split("/", 1)
        feeds_of.setdefault(m, {})[name] = inputs[k]
    rows = []

    def cosine(a, b):
        a = np.concatenate([np.asarray(x, np.float64).ravel() for x in a])
        b = np.concatenate([np.asarray(x, np.float64).ravel() for x in b])
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return float("nan")
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return 1.0 if na == nb else 0.0
        return float(np.dot(a, b) / (na * nb))

    def run_ort(path, feeds):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return s.run(None, feeds)

    def run_any(path, feeds):
        """(outputs, engine): onnxruntime, or the reference evaluator where onnxruntime has no
        CPU kernel for the model's types."""
        try:
            return run_ort(path, feeds), "onnxruntime"
        except Exception as e:  # noqa: BLE001
            if "NOT_IMPLEMENTED" not in str(e) and "Could not find an implementation" not in str(e):
                raise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = ReferenceEvaluator(path)
            return ev.run(None, feeds), "reference"

    def line_of(r):
        return r.out.strip().splitlines()[-1] if r.out.strip() else ""

    # ---- ONNX fixtures ----
    peer = None
    try:
        from onnxconverter_common import float16 as peer  # noqa: F811
    except ImportError:
        print("onnxconverter_common not installed: the peer rows are skipped")
    for name, feed_sets in ONNX_FIXTURES.items():
        src = os.path.join(fx, name + ".onnx")
        base = {fs: run_ort(src, feeds_of[fs]) for fs in feed_sets}
        outs = {}
        for mode, flags in MODES.items():
            dst = os.path.join(w, "%s.%s.onnx" % (name, mode))
            t = time.time()
            r = C.run(args.bin, "convert", *flags, src, "-o", dst)
            secs = time.time() - t
            tag = "%s %s" % (name, mode)
            if not F.check(r.rc == 0 and os.path.isfile(dst), tag + ": convert exits 0",
                           r.describe()):
                continue
            line = line_of(r)
            outs[mode] = (dst, line)
            try:
                onnx.checker.check_model(dst, full_check=True)
                F.check(True, tag + ": check_model(full_check=True)")
            except Exception as e:  # noqa: BLE001
                F.fail(tag + ": check_model(full_check=True)", str(e)[:600])
            cos, engine, err = [], set(), ""
            for fs in feed_sets:
                try:
                    got, eng = (run_ort(dst, feeds_of[fs]), "onnxruntime") \
                        if mode.endswith("storage") else run_any(dst, feeds_of[fs])
                    engine.add(eng)
                    cos.append(cosine(base[fs], got))
                except Exception as e:  # noqa: BLE001
                    err = "%s: %s" % (type(e).__name__, str(e)[:300])
            c = min(cos) if cos and not err else float("nan")
            rows.append((name, mode, "modelshrink", c, "+".join(sorted(engine)) or "-",
                         os.path.getsize(src), os.path.getsize(dst), "%.2f" % secs, line))
            print("  %-16s %-13s cosine %-9s %-22s %s" % (
                name, mode, "%.6f" % c if c == c else "n/a", "+".join(sorted(engine)),
                line.split(": ", 1)[-1][:150]))
            if mode in JUDGED:
                if mode.endswith("storage"):
                    F.check(not err, tag + ": runs in onnxruntime on the CPU", err)
                else:
                    F.check(not err, tag + ": the output runs", err)
                if not err:
                    F.check(c >= COS, "%s: cosine %.6f >= %g" % (tag, c, COS), line)
        # what each fixture is there to show
        if "fp16" in outs:
            line = outs["fp16"][1]
            m = re.search(r"kept fp32: \d+ tensors? (?:\((\d+) beyond FP16 range, max \|x\| "
                          r"([0-9.e+]+);|beyond FP16 range \(max \|x\| ([0-9.e+]+)\))", line)
            above = 0 if not m else int(m.group(1)) if m.group(1) else \
                int(re.search(r"kept fp32: (\d+)", line).group(1))
            mx = 0.0 if not m else float(m.group(2) or m.group(3))
            # detector_bn: three BatchNorms with variances 1e7..1e8; detector_folded: torch
            # folds them into their Convs except the head's, after a ConvTranspose
            want = {"detector_bn": 3, "detector_folded": 1}.get(name, 0)
            F.check(above == want and (want == 0 or mx >= 1e7),
                    "%s fp16: the line says %d tensors beyond FP16 range were kept FP32%s" % (
                        name, want, " (max |x| >= 1e7)" if want else ""), line)
        if name == "detector_bn" and "fp16-clamp" in outs:
            c = [r_[3] for r_ in rows if r_[0] == name and r_[1] == "fp16-clamp"]
            F.check(bool(c) and c[0] < TRAP_COS, "detector_bn fp16-clamp: the trap is real "
                    "(cosine %s < %g)" % (c[0] if c else "?", TRAP_COS))
        if name.endswith("op11") and "bf16-storage" in outs:
            F.check("BF16 needs opset 13" in outs["bf16-storage"][1],
                    "%s bf16-storage: the line says BF16 needs opset 13" % name,
                    outs["bf16-storage"][1])
        if "int8" in outs:
            dst, line = outs["int8"]
            m = re.search(r"int8: (\d+) tensors?", line)
            n = int(m.group(1)) if m else 0
            om = onnx.load(dst)
            if name.startswith("gated"):
                F.check(n >= 3, "%s int8: the three Linear weights held in Constant nodes (two "
                        "inside the If) are quantized (%d)" % (name, n), line)
                big = []
                for g in C.all_graphs(om.graph):
                    for nd in g.node:
                        for a in nd.attribute:
                            if nd.op_type == "Constant" and a.t.data_type == 1 and \
                                    np.prod(a.t.dims) >= 4096:
                                big.append(nd.output[0])
                F.check(not big, "%s int8: no FP32 weight left in a Constant node" % name,
                        str(big))
            if name == "crnn_op11":
                F.check(n >= 5, "crnn_op11 int8: the LSTM W and R of both layers and the Linear "
                        "are quantized (%d)" % n, line)
                ratio = os.path.getsize(src) / os.path.getsize(dst)
                F.check(ratio >= 3.5, "crnn_op11 int8: %.2fx smaller (>= 3.5x)" % ratio, line)
        if peer is not None:
            dst = os.path.join(w, "%s.occ.onnx" % name)
            t = time.time()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pm = peer.convert_float_to_float16(onnx.load(src), keep_io_types=True)
                onnx.save(pm, dst)
                secs = time.time() - t
                cos, engine = [], set()
                for fs in feed_sets:
                    got, eng = run_any(dst, feeds_of[fs])
                    engine.add(eng)
                    cos.append(cosine(base[fs], got))
                c = min(cos)
                rows.append((name, "fp16", "onnxconverter-common", c, "+".join(sorted(engine)),
                             os.path.getsize(src), os.path.getsize(dst), "%.2f" % secs, ""))
                print("  %-16s %-13s cosine %.6f (onnxconverter-common)" % (name, "fp16", c))
            except Exception as e:  # noqa: BLE001
                rows.append((name, "fp16", "onnxconverter-common", float("nan"), "-",
                             os.path.getsize(src), 0, "-", "%s: %s" % (type(e).__name__,
                                                                      str(e)[:200])))
                print("  %-16s onnxconverter-common failed: %s" % (name, str(e)[:200]))

    # ---- the checkpoint ----
    pth = os.path.join(fx, "pitch.pth")
    helper = os.path.join(w, "torch_run.py")
    with open(helper, "w") as f:
        f.write(TORCH_RUN)
    model_py = os.path.join(fx, "pitch_model.py")
    inp = os.path.join(fx, "pitch_input.npy")

    def torch_out(sd):
        r = subprocess.run([SYS_PY, helper, model_py, sd, pth, inp], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-1500:])
        return np.array(json.loads(r.stdout))

    ref = torch_out("-")
    ck_modes = [
        ("fp16", ["--fp16"], True),
        ("fp16-clamp", ["--fp16", "--fp16-clamp"], False),
        ("fp16-clamp+keep", ["--fp16", "--fp16-clamp", "--keep-fp32", "*running_var"], True),
        ("bf16", ["--bf16"], True),
    ]
    for mode, flags, judged in ck_modes:
        for ext in ("safetensors", "pth"):
            dst = os.path.join(w, "pitch.%s.%s" % (mode, ext))
            fmt = ["--format", "pth"] if ext == "pth" else []
            t = time.time()
            r = C.run(args.bin, "convert", *flags, *fmt, pth, "-o", dst)
            secs = time.time() - t
            tag = "pitch.pth %s -> %s" % (mode, ext)
            if not F.check(r.rc == 0, tag + ": convert exits 0", r.describe()):
                continue
            line = line_of(r)
            try:
                got = torch_out(dst)
            except RuntimeError as e:
                F.fail(tag + ": torch loads the output into the model and runs it", str(e))
                continue
            c = cosine([ref], [got])
            same_argmax = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
            rows.append(("pitch.pth", "%s (%s)" % (mode, ext), "modelshrink", c, "torch",
                         os.path.getsize(pth), os.path.getsize(dst), "%.2f" % secs, line))
            print("  %-16s %-24s cosine %.6f, argmax agrees on %.0f%%   %s" % (
                "pitch.pth", mode + " " + ext, c, 100 * same_argmax,
                line.split(": ", 1)[-1][:120]))
            if judged:
                F.check(c >= COS, "%s: cosine %.6f >= %g" % (tag, c, COS), line)
            else:
                F.check(c < TRAP_COS, "%s: the trap is real (cosine %.6f < %g)" % (
                    tag, c, TRAP_COS), line)
            if mode == "fp16":
                F.check(re.search(r"kept fp32: \d+ tensors? beyond FP16 range", line) is not None,
                        tag + ": the line says which tensors were kept FP32", line)
            if mode == "fp16-clamp+keep":
                F.check("kept fp32 by --keep-fp32" in line, tag + ": the line counts the "
                        "--keep-fp32 tensors", line)

    with open(os.path.join(w, "precision.tsv"), "w") as f:
        f.write("fixture\tmode\ttool\tcosine\tengine\tbytes_in\tbytes_out\tseconds\tline\n")
        for r_ in rows:
            f.write("\t".join(str(x) for x in r_) + "\n")
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
