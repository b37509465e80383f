#!/usr/bin/env python3
"""End-to-end: `convert --fp16` over ONNX's own backend test models (Debian's libonnx-testdata),
side by side with onnxconverter-common's float16.convert_float_to_float16(keep_io_types=True).

Conversions run with `--fp16 --allow-larger`: most models here hold no weight, and without it
the default would leave FP16 out (only Casts, a larger file) instead of typing every op.

Selection: every */model.onnx whose graph has a FLOAT input or holds FLOAT tensors
(initializers, Constant values, attribute tensors, in any subgraph).

Oracle: onnx.reference.ReferenceEvaluator runs the ORIGINAL model on its test_data_set_0 inputs;
models it cannot run, or that take more than ORIG_BUDGET_S seconds, are listed and skipped. Each
converted model must then (1) come out of the converter (modelshrink: exit 0), (2) pass
onnx.checker.check_model(full_check=True) (the basic check where the original itself fails the
full check), (3) run in ReferenceEvaluator on the same inputs (where the evaluator lacks an FP16 kernel, e.g. Det,
onnxruntime's outputs are judged instead), and
(4) agree with the original's outputs (models with random ops: same shapes and dtypes only): for floating outputs, compared in float64,
|got - ref| <= ATOL + RTOL * |ref| elementwise with RTOL = ATOL = 1e-2, NaN where ref is NaN and
the same infinities; integer/bool/string outputs equal; same shapes.

The test FAILS when modelshrink exits non-zero or crashes on any selected model, when its output
fails the checker, when the evaluator cannot run its output, or when its output is outside the
tolerance on a model where onnxconverter-common's output passes all four steps (unless the model
is in ALLOWLIST below, each entry with its reason). Models where both are outside tolerance are
listed (FP16 math itself: huge values, cancellation, ...), not failed.

A per-model report (name, status and worst abs error for both tools) goes to WORK/report.tsv;
the top offenders are printed. Without onnxconverter_common the test skips (exit 77): it is
what a model outside the tolerance is judged against.

Data folder: $MSH_ONNX_TESTDATA or /usr/share/libonnx-testdata/data (skip when missing).
Parallel workers: $MSH_JOBS or the CPU count."""

import concurrent.futures as cf
import glob
import os
import signal
import subprocess
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_fp16_corpus"
DATA = os.environ.get("MSH_ONNX_TESTDATA", "/usr/share/libonnx-testdata/data")
RTOL = 1e-2
ATOL = 1e-2
ORIG_BUDGET_S = 5.0     # skip models whose ORIGINAL takes longer in the evaluator
CONV_BUDGET_S = 120.0   # a converted model's evaluator run may take this long (FP16 numpy is slow)

# Models whose modelshrink output cannot be judged, or is outside the tolerance for reasons that
# are not modelshrink's. Keep minimal; every entry says why.
_CAST1 = ("opset 1: FP16 needs Cast-1, whose `to` is a STRING ('FLOAT16'); "
          "onnx.reference's Cast cannot run a string `to` at all (KeyError even for 'FLOAT') "
          "and onnxruntime does not support opset 1, so no engine here can run the output "
          "(the checker passes it)")
ALLOWLIST = {
    "node/test_globalaveragepool": _CAST1,
    "node/test_globalaveragepool_precomputed": _CAST1,
    "node/test_globalmaxpool": _CAST1,
    "node/test_globalmaxpool_precomputed": _CAST1,
    "node/test_softplus": _CAST1,
    "node/test_softplus_example": _CAST1,
    "node/test_softsign": _CAST1,
    "node/test_softsign_example": _CAST1,
}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def with_budget(seconds, fn, *a):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*a)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
              "Bernoulli", "Multinomial"}


def nondeterministic(m):
    """Random ops (and Dropout fed a training_mode input) give other values on every run: for
    those models only shapes and dtypes are compared."""
    for g in C.all_graphs(m.graph):
        for n in g.node:
            if n.op_type in RANDOM_OPS:
                return True
            if n.op_type == "Dropout" and len(n.input) >= 3 and n.input[2]:
                return True
    return False


def has_float(onnx, m):
    FLOAT = onnx.TensorProto.FLOAT
    inits = {t.name for t in m.graph.initializer}
    for i in m.graph.input:
        if i.name not in inits and i.type.WhichOneof("value") == "tensor_type" and \
                i.type.tensor_type.elem_type == FLOAT:
            return True
    for g in C.all_graphs(m.graph):
        if any(t.data_type == FLOAT for t in g.initializer):
            return True
        if any(t.values.data_type == FLOAT for t in g.sparse_initializer):
            return True
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t") and a.t.data_type == FLOAT:
                    return True
                if any(t.data_type == FLOAT for t in a.tensors):
                    return True
                if n.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                    return True
    return False


def compare(np, ref, got):
    """(ok, worst abs error, detail) for one output value (arrays, lists, None)."""
    if ref is None or got is None:
        return (ref is None and got is None), 0.0, "" if ref is None and got is None else \
            "None vs value"
    if isinstance(ref, (list, tuple)) or isinstance(got, (list, tuple)):
        if not (isinstance(ref, (list, tuple)) and isinstance(got, (list, tuple))) or \
                len(ref) != len(got):
            return False, float("inf"), "sequence length/kind differs"
        worst, ok, det = 0.0, True, ""
        for a, b in zip(ref, got):
            o, w, d = compare(np, a, b)
            ok, worst, det = ok and o, max(worst, w), det or d
        return ok, worst, det
    r, g = np.asarray(ref), np.asarray(got)
    if r.shape != g.shape:
        return False, float("inf"), "shape %s vs %s" % (r.shape, g.shape)
    if r.dtype.kind not in "fc" or r.dtype == object:
        if r.dtype == object or g.dtype == object:
            same = r.tolist() == g.tolist()
        else:
            same = r.dtype == g.dtype and np.array_equal(r, g)
        return same, 0.0 if same else float("inf"), "" if same else "%s values differ (%s vs %s)" \
            % (r.dtype, r.dtype, g.dtype)
    if g.dtype.kind not in "fc":
        return False, float("inf"), "dtype %s vs %s" % (r.dtype, g.dtype)
    r64, g64 = r.astype(np.float64), g.astype(np.float64)
    if r.size == 0:
        return True, 0.0, ""
    rn, gn = np.isnan(r64), np.isnan(g64)
    ri = np.isinf(r64)
    if not np.array_equal(rn, gn) or not np.array_equal(r64[ri], g64[ri]):
        return False, float("inf"), "NaN/inf differ: ref %d NaN %d inf, got %d NaN %d inf" % (
            rn.sum(), ri.sum(), gn.sum(), np.isinf(g64).sum())
    fin = ~rn & ~ri
    if not fin.any():
        return True, 0.0, ""
    d = np.abs(g64[fin] - r64[fin])
    worst = float(np.nanmax(d)) if not np.isnan(d).all() else float("inf")
    over = ~(d <= ATOL + RTOL * np.abs(r64[fin]))
    if over.any():
        i = int(np.flatnonzero(over)[0])
        return False, worst, "%d of %d values outside tolerance, e.g. ref %.6g got %.6g" % (
            int(over.sum()), int(fin.sum()), r64[fin][i], g64[fin][i])
    return True, worst, ""


def evaluate(onnx, path_or_model, feeds):
    from onnx.reference import ReferenceEvaluator
    m = path_or_model if not isinstance(path_or_model, str) else onnx.load(path_or_model)
    sess = ReferenceEvaluator(m)
    names = [o.name for o in m.graph.output]
    return dict(zip(names, sess.run(None, feeds)))


def ort_outputs(path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def judge(np, onnx, path, feeds, ref, shapes_only=False, full_check=True):
    """{'stage': 'ok'|'checker'|'run'|'timeout'|'tolerance', 'worst': float, 'detail': str}.
    ``full_check`` False (the original itself fails the full check): the basic checker only.
    When the reference evaluator cannot run the output but onnxruntime can (e.g. the
    evaluator's Det has no float16), onnxruntime's outputs are judged instead (noted)."""
    try:
        onnx.checker.check_model(path, full_check=full_check)
    except Exception as e:  # noqa: BLE001
        return {"stage": "checker", "worst": None, "detail": str(e).strip()[:300]}
    note = ""
    try:
        got = with_budget(CONV_BUDGET_S, evaluate, onnx, path, feeds)
    except Timeout:
        return {"stage": "timeout", "worst": None, "detail": "evaluator > %.0f s" % CONV_BUDGET_S}
    except Exception as e:  # noqa: BLE001
        err = ("%s: %s" % (type(e).__name__, e)).strip()[:300]
        try:
            got = ort_outputs(path, feeds)
            note = "(evaluator cannot run it: %s; judged with onnxruntime) " % err[:120]
        except Exception:  # noqa: BLE001
            return {"stage": "run", "worst": None, "detail": err}
    worst, ok, det = 0.0, True, note
    for k, r in ref.items():
        if k not in got:
            return {"stage": "tolerance", "worst": float("inf"), "detail": "output %r missing" % k}
        if shapes_only:
            a, b = np.asarray(r), np.asarray(got[k])
            o = a.shape == b.shape and (a.dtype == b.dtype or a.dtype.kind == b.dtype.kind == "f")
            w, d = 0.0, "" if o else "shape/dtype %s %s vs %s %s" % (a.shape, a.dtype, b.shape,
                                                                    b.dtype)
        else:
            o, w, d = compare(np, r, got[k])
        worst = max(worst, w)
        if not o:
            ok = False
            det = det or "%s: %s" % (k, d)
    return {"stage": "ok" if ok else "tolerance", "worst": worst, "detail": det if not ok or
            note else ""}


def work_one(job):
    """Everything for one model, in a worker process."""
    import numpy as np
    import onnx
    import test_testdata as TD
    model_path, binary, work, peer = job
    name = os.path.relpath(os.path.dirname(model_path), DATA)
    res = {"name": name, "orig": "ok", "orig_detail": "", "ms": None, "peer": None,
           "ms_cmd": ""}
    warnings.simplefilter("ignore")
    try:
        feeds, _ = TD.load_case(onnx, model_path)
        m = onnx.load(model_path)
        res["random"] = nondeterministic(m)
        try:
            onnx.checker.check_model(m, full_check=True)
            res["orig_full"] = True
        except Exception:  # noqa: BLE001
            res["orig_full"] = False
        t0 = time.perf_counter()
        ref = with_budget(ORIG_BUDGET_S, evaluate, onnx, m, feeds)
        res["orig_s"] = time.perf_counter() - t0
    except Timeout:
        res["orig"] = "slow"
        return res
    except Exception as e:  # noqa: BLE001
        res["orig"] = "cannot"
        res["orig_detail"] = ("%s: %s" % (type(e).__name__, e)).strip().splitlines()[0][:200]
        return res
    d = os.path.join(work, name.replace("/", "__"))
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, "ms.onnx")
    # --allow-larger: most corpus models hold no weight, so only Casts would be added and the
    # default leaves FP16 out; the typing of every op is what this test checks
    argv = [binary, "convert", "--fp16", "--allow-larger", model_path, "-o", dst]
    res["ms_cmd"] = " ".join(argv)
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        rc, err = p.returncode, p.stderr.decode("utf-8", "replace").strip()
    except subprocess.TimeoutExpired:
        rc, err = 124, "timed out after 120 s"
    if rc != 0 or not os.path.isfile(dst):
        res["ms"] = {"stage": "convert", "worst": None,
                     "detail": "exit %d%s: %s" % (rc, " (signal %d)" % -rc if rc < 0 else "",
                                                  err[:300])}
    else:
        res["ms"] = judge(np, onnx, dst, feeds, ref, res["random"], res["orig_full"])
    if peer:
        pdst = os.path.join(d, "peer.onnx")
        try:
            from onnxconverter_common import float16
            pm = float16.convert_float_to_float16(onnx.load(model_path), keep_io_types=True)
            onnx.save(pm, pdst)
            res["peer"] = judge(np, onnx, pdst, feeds, ref, res["random"], res["orig_full"])
        except Exception as e:  # noqa: BLE001
            res["peer"] = {"stage": "convert", "worst": None,
                           "detail": ("%s: %s" % (type(e).__name__, e)).strip()[:300]}
    return res


def main():
    np, onnx = C.import_deps("numpy", "onnx")
    args = C.parse_args(__doc__)
    if not os.path.isdir(DATA):
        C.skip("ONNX test data folder %s not found (install libonnx-testdata or set "
               "MSH_ONNX_TESTDATA)" % DATA)
    F = C.Failures()
    try:
        import onnxconverter_common  # noqa: F401
        peer = True
    except ImportError:
        # the verdict on a model outside the tolerance depends on the peer's result: without
        # it nothing could fail, so the test does not pass either
        C.skip("onnxconverter_common is not importable (scripts/deps.sh installs it from "
               "scripts/requirements-test.txt): models outside the FP16 tolerance cannot be "
               "judged without the peer")

    models = sorted(glob.glob(os.path.join(DATA, "**", "model.onnx"), recursive=True))
    selected = []
    for p in models:
        try:
            if has_float(onnx, onnx.load(p, load_external_data=False)):
                selected.append(p)
        except Exception:  # noqa: BLE001
            pass
    print("%d models, %d with FLOAT inputs or FLOAT tensors" % (len(models), len(selected)),
          flush=True)
    jobs = int(os.environ.get("MSH_JOBS", os.cpu_count() or 1))
    t0 = time.time()
    results = []
    with cf.ProcessPoolExecutor(max_workers=jobs) as ex:
        futs = [ex.submit(work_one, (p, args.bin, args.work, peer)) for p in selected]
        for i, f in enumerate(cf.as_completed(futs)):
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - a worker died
                F.fail("a worker process failed", str(e))
            if (i + 1) % 100 == 0:
                print("  %d/%d done (%.0f s)" % (i + 1, len(selected), time.time() - t0),
                      flush=True)
    results.sort(key=lambda r: r["name"])
    print("evaluated in %.0f s with %d workers" % (time.time() - t0, jobs))

    cannot = [r for r in results if r["orig"] == "cannot"]
    slow = [r for r in results if r["orig"] == "slow"]
    print("evaluator cannot run the original: %d: %s" % (
        len(cannot), ", ".join(r["name"] for r in cannot)))
    print("original slower than %.0f s in the evaluator (skipped): %d: %s" % (
        ORIG_BUDGET_S, len(slow), ", ".join(r["name"] for r in slow)))
    done = [r for r in results if r["orig"] == "ok"]
    nofull = [r["name"] for r in done if not r.get("orig_full")]
    print("originals failing checker full_check themselves (outputs get the basic check): "
          "%d: %s" % (len(nofull), ", ".join(nofull)))
    rnd = [r["name"] for r in done if r.get("random")]
    print("random ops (outputs compared by shape and dtype only): %d: %s" % (
        len(rnd), ", ".join(rnd)))
    ms_ok = [r for r in done if r["ms"]["stage"] == "ok"]
    peer_ok = [r for r in done if peer and r["peer"]["stage"] == "ok"]

    def fmt(x):
        if x is None:
            return "-"
        return "%s%s" % (x["stage"], "" if x["worst"] is None else " %.3g" % x["worst"])

    with open(os.path.join(args.work, "report.tsv"), "w") as f:
        f.write("model\tmodelshrink\tms_worst_abs\tms_detail\tpeer\tpeer_worst_abs\tpeer_detail\n")
        for r in results:
            if r["orig"] != "ok":
                f.write("%s\toriginal:%s\t\t%s\t\t\t\n" % (r["name"], r["orig"], r["orig_detail"]))
                continue
            ms, pe = r["ms"], r["peer"] or {"stage": "-", "worst": None, "detail": ""}
            f.write("%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
                r["name"], ms["stage"], "" if ms["worst"] is None else "%.6g" % ms["worst"],
                ms["detail"].replace("\t", " ").replace("\n", " "), pe["stage"],
                "" if pe["worst"] is None else "%.6g" % pe["worst"],
                pe["detail"].replace("\t", " ").replace("\n", " ")))

    print("\nRESULTS (tolerance |got-ref| <= %g + %g*|ref|, float64; ints/bools equal)" % (
        ATOL, RTOL))
    print("  evaluated models: %d" % len(done))
    print("  modelshrink --fp16 passes:            %d / %d" % (len(ms_ok), len(done)))
    if peer:
        print("  onnxconverter-common float16 passes:  %d / %d" % (len(peer_ok), len(done)))
    else:
        print("  onnxconverter-common: not installed, not compared")
    for tool, key in (("modelshrink", "ms"), ("onnxconverter-common", "peer")):
        if key == "peer" and not peer:
            continue
        stages = {}
        for r in done:
            stages[r[key]["stage"]] = stages.get(r[key]["stage"], 0) + 1
        print("  %s by stage: %s" % (tool, ", ".join("%s %d" % kv for kv in sorted(
            stages.items()))))

    tol = sorted((r for r in done if r["ms"]["stage"] == "tolerance"),
                 key=lambda r: -(r["ms"]["worst"] or 0))
    if tol:
        print("\nmodelshrink outputs outside tolerance (%d), worst first:" % len(tol))
        for r in tol[:40]:
            print("  %-60s worst abs %-10.3g peer: %-16s %s" % (
                r["name"], r["ms"]["worst"], fmt(r["peer"]), r["ms"]["detail"][:120]))

    for r in done:
        ms, pe = r["ms"], r["peer"]
        where = "%s (%s)" % (r["name"], r["ms_cmd"])
        if ms["stage"] == "convert":
            F.fail("%s: convert --fp16 exits 0" % r["name"], "%s\n%s" % (r["ms_cmd"],
                                                                         ms["detail"]))
        elif ms["stage"] == "checker":
            F.fail("%s: output passes checker full_check" % r["name"],
                   "%s\n%s" % (r["ms_cmd"], ms["detail"]))
        elif ms["stage"] == "run" and r["name"] in ALLOWLIST:
            print("  allowlisted: %s (evaluator cannot run the output: %s): %s" % (
                r["name"], ms["detail"][:40], ALLOWLIST[r["name"]][:70] + "..."))
        elif ms["stage"] == "run":
            F.fail("%s: ReferenceEvaluator runs the output" % r["name"],
                   "%s\n%s" % (r["ms_cmd"], ms["detail"]))
        elif ms["stage"] == "tolerance" and pe is not None and pe["stage"] == "ok":
            if r["name"] in ALLOWLIST:
                print("  allowlisted: %s: %s" % (r["name"], ALLOWLIST[r["name"]]))
                continue
            F.fail("%s: within FP16 tolerance (onnxconverter-common's output is)" % r["name"],
                   "%s\nmodelshrink: %s\npeer worst abs %.3g" % (where, ms["detail"],
                                                                 pe["worst"] or 0))
        else:
            F.check(True, r["name"])
    both_tol = [r["name"] for r in tol if r["peer"] is None or r["peer"]["stage"] != "ok"]
    print("\noutside tolerance with modelshrink where the peer does not pass either "
          "(listed, not failed): %d: %s" % (len(both_tol), ", ".join(both_tol)))
    peer_only_fail = [r["name"] for r in done if peer and r["peer"]["stage"] != "ok"
                      and r["ms"]["stage"] == "ok"]
    print("modelshrink passes, onnxconverter-common does not: %d" % len(peer_only_fail))
    print("report: %s" % os.path.join(args.work, "report.tsv"))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
