#!/usr/bin/env python3
"""Check that a converted model computes what the original computes, with onnxruntime.

    verify.py ref MODEL.onnx REF.npz        run MODEL on fixed inputs, keep inputs and outputs
    verify.py check REF.npz MODEL.onnx      run MODEL on the same inputs; print one JSON line:
        {"identical": bool, "max_abs_err": float, "outputs": int}

Inputs are deterministic (seed 0): integer inputs in [0, 100) (valid token ids for any vocabulary
of at least 100), float inputs from N(0, 1); symbolic dimensions become 16. One intra-op thread
and the same session options for both sides, so a difference means the model changed, not the
scheduling.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

SYMBOLIC_DIM = 16

_NP = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def make_inputs(sess):
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else SYMBOLIC_DIM for d in i.shape]
        dt = _NP.get(i.type)
        if dt is None:
            raise SystemExit("input %s: unsupported type %s" % (i.name, i.type))
        if np.issubdtype(dt, np.integer):
            feeds[i.name] = rng.integers(0, 100, size=shape).astype(dt)
        elif dt == np.bool_:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def main(argv):
    if len(argv) == 3 and argv[0] == "ref":
        sess = session(argv[1])
        feeds = make_inputs(sess)
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, feeds)
        arrays = {"in:" + k: v for k, v in feeds.items()}
        arrays.update({"out:" + k: v for k, v in zip(names, outs)})
        np.savez(argv[2], **arrays)
        return 0
    if len(argv) == 3 and argv[0] == "check":
        ref = np.load(argv[1])
        feeds = {k[3:]: ref[k] for k in ref.files if k.startswith("in:")}
        want = {k[4:]: ref[k] for k in ref.files if k.startswith("out:")}
        sess = session(argv[2])
        got = dict(zip(want, sess.run(list(want), feeds)))
        identical = True
        err = 0.0
        for k, w in want.items():
            g = got[k]
            if g.shape != w.shape or g.dtype != w.dtype:
                identical = False
                err = float("inf")
                continue
            identical = identical and g.tobytes() == w.tobytes()
            if w.size:
                d = np.abs(g.astype(np.float64) - w.astype(np.float64))
                err = max(err, float(np.nanmax(d)) if not np.isnan(d).all() else 0.0)
        print(json.dumps({"identical": identical, "max_abs_err": err, "outputs": len(want)}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
