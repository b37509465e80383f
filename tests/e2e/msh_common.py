"""Shared helpers for modelshrink's end-to-end tests (tests/e2e/test_*.py).

Every test is run as ``python tests/e2e/test_X.py --bin PATH/modelshrink --work SCRATCH`` and
exits 0 (pass), 1 (fail) or 77 (skip: a Python module or a data folder is missing).
"""

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")


def skip(reason):
    print("SKIP: " + reason)
    sys.exit(SKIP)


def import_deps(*names):
    """Import numpy/onnx/onnxruntime (whichever are named); exit 77 if one is missing."""
    mods = []
    for n in names:
        try:
            mods.append(__import__(n))
        except ImportError as e:
            skip("Python module %r is not available (%s)" % (n, e))
    return mods


def gen_models():
    if FIXTURES not in sys.path:
        sys.path.insert(0, FIXTURES)
    import gen_models as g
    return g


class Failures:
    """Collects failures so one run reports all of them."""

    def __init__(self):
        self.items = []
        self.checks = 0

    def check(self, cond, what, detail=""):
        self.checks += 1
        if not cond:
            msg = "FAIL: " + what + (("\n      " + detail.replace("\n", "\n      ")) if detail
                                      else "")
            print(msg, flush=True)
            self.items.append(what)
        return cond

    def fail(self, what, detail=""):
        return self.check(False, what, detail)

    def finish(self, name):
        if self.checks == 0:
            print("FAIL: %s made no checks (a test that checks nothing must not pass)" % name)
            return 1
        if self.items:
            print("%s: %d of %d checks FAILED:" % (name, len(self.items), self.checks))
            for it in self.items:
                print("  - " + it)
            return 1
        print("%s: all %d checks passed" % (name, self.checks))
        return 0


def parse_args(desc, add_arguments=None):
    """The common command line; ``add_arguments(parser)`` adds a test's own options."""
    ap = argparse.ArgumentParser(description=desc)
    ap.add_argument("--bin", required=True, help="path to the modelshrink binary")
    ap.add_argument("--work", required=True, help="scratch folder (created; contents replaced)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    ap.add_argument("-v", "--verbose", action="store_true")
    if add_arguments:
        add_arguments(ap)
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        print("FAIL: modelshrink binary %r does not exist or is not executable" % args.bin)
        sys.exit(1)
    args.work = os.path.abspath(args.work)
    if os.path.exists(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work)
    wrap = os.environ.get("MSH_TEST_WRAPPER", "").strip()
    if wrap:
        # Run every modelshrink command under this prefix (scripts/valgrind.sh sets it to a
        # valgrind command line): a shell script stands in for the binary, so tests that start
        # the binary themselves (signals, rlimits, Slurm jobs) are wrapped too.
        args.real_bin = args.bin
        args.bin = os.path.join(args.work, "modelshrink-wrapped")
        with open(args.bin, "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (wrap, shlex.quote(args.real_bin)))
        os.chmod(args.bin, 0o755)
    return args


def run_main(name, body):
    """Run ``body()`` (which returns an exit code), turning an unexpected exception into a
    failure with its traceback."""
    try:
        rc = body()
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        print("FAIL: %s raised an unexpected exception (above)" % name)
        rc = 1
    sys.exit(rc)


class Result:
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def cmd(self):
        return " ".join(self.argv)

    def describe(self):
        return "command: %s\nexit: %d\nstdout: %s\nstderr: %s" % (
            self.cmd(), self.rc, _clip(self.out), _clip(self.err))


def _clip(s, n=2000):
    s = s.rstrip("\n")
    return s if len(s) <= n else s[:n] + "... [%d more chars]" % (len(s) - n)


def run(binary, *args, cwd=None, timeout=900):
    argv = [binary] + [str(a) for a in args]
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return Result(argv, p.returncode, p.stdout.decode("utf-8", "replace"),
                  p.stderr.decode("utf-8", "replace"))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_state(folder):
    """{relative path: (kind, sha256 or link target)} for everything under ``folder``."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = os.path.join(root, n)
            rel = os.path.relpath(p, folder)
            if os.path.islink(p):
                state[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                state[rel] = ("dir", "")
            else:
                state[rel] = ("file", sha256(p))
    return state


# ---------------------------------------------------------------------------------------------
# onnxruntime helpers
# ---------------------------------------------------------------------------------------------

def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_model(path, feeds):
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def same_value(a, b):
    """Bitwise equality of two onnxruntime output values (arrays, lists of arrays, None)."""
    import numpy as np
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return False
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return False
        return all(same_value(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    if a.dtype.kind in "fc" and not np.array_equal(a, b, equal_nan=True):
        return False
    return a.tobytes() == b.tobytes()


def diff_outputs(ref, got):
    """'' when the output dicts are bitwise identical, else a description of the first
    differences."""
    import numpy as np
    lines = []
    if list(ref.keys()) != list(got.keys()):
        return "output names differ: %s vs %s" % (list(ref.keys()), list(got.keys()))
    for k in ref:
        if not same_value(ref[k], got[k]):
            a, b = ref[k], got[k]
            try:
                a, b = np.asarray(a), np.asarray(b)
                if a.shape == b.shape and a.dtype.kind in "fiu" and b.dtype == a.dtype:
                    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
                    lines.append("output %r differs: dtype %s shape %s, %d elements differ, max "
                                 "abs diff %g" % (k, a.dtype, a.shape,
                                                  int(np.count_nonzero(a != b)), np.nanmax(d)))
                else:
                    lines.append("output %r differs: %s %s vs %s %s" % (
                        k, getattr(a, "dtype", type(a)), getattr(a, "shape", ""),
                        getattr(b, "dtype", type(b)), getattr(b, "shape", "")))
            except Exception:
                lines.append("output %r differs" % k)
    return "\n".join(lines)


def all_graphs(graph):
    """The graph and all its subgraphs (attributes g/graphs, to any depth)."""
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                out.extend(all_graphs(attr.g))
            for sg in attr.graphs:
                out.extend(all_graphs(sg))
    return out


def count_initializers(model):
    return sum(len(g.initializer) for g in all_graphs(model.graph))


# ---------------------------------------------------------------------------------------------
# what modelshrink prints: byte counts, convert lines
# ---------------------------------------------------------------------------------------------

def human_bytes(n):
    """A byte count as convert's lines and inspect's tables print it (src/cli/table.c,
    msh_cli_human_bytes): "512 B", then powers of 1000 with one decimal ("198.6 kB"); the unit
    steps up where one decimal would round to 1000. Exact counts are in the JSON."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    x, i = float(n), 0
    while i < 5 and (x >= 1000.0 if i == 0 else x >= 999.95):
        x /= 1000.0
        i += 1
    return "%.0f B" % x if i == 0 else "%.1f %s" % (x, units[i])


SIZE = r"\d+(?:\.\d)? (?:B|kB|MB|GB|TB|PB)"
# "IN -> OUT: 198.6 kB -> 132.5 kB (1.50x)[, details]": one line per model
CONVERT_LINE_RE = re.compile(r"^(?P<inp>.+) -> (?P<out>.+): (?P<a>%s) -> (?P<b>%s) "
                             r"\((?P<ratio>[0-9.]+)x\)" % (SIZE, SIZE))


# ---------------------------------------------------------------------------------------------
# JSON Schemas of inspect --json and diff --json (include/schema/)
# ---------------------------------------------------------------------------------------------

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "include", "schema")
_validators = {}


def require_jsonschema():
    """Skip (exit 77) when the jsonschema package is missing: a test that validates its JSON
    must never pass without validating it. Call it before the test's work starts."""
    try:
        import jsonschema  # noqa: F401
        import referencing  # noqa: F401
    except ImportError as e:
        skip("Python module 'jsonschema' is not available (%s): inspect --json and diff --json "
             "outputs cannot be validated against include/schema/ (scripts/deps.sh installs "
             "it at its pin in scripts/requirements-test.txt)" % e)


def _strict(node):
    """A copy of a schema in which every object schema ("type": "object" with "properties")
    refuses other fields: the tests hold the schema to every field the output has, while users'
    validators accept added fields, as the stability rule allows. (Conditions, the "if" parts,
    name no type and stay as they are.)"""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.get("type") == "object" and "properties" in out and \
            "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def schema_validator(name):
    """A draft 2020-12 validator for include/schema/NAME (its relative $refs resolve to the other
    files of the folder), strict as _strict says."""
    require_jsonschema()
    if name not in _validators:
        import json
        import jsonschema
        from referencing import Registry, Resource
        resources = []
        for fn in sorted(os.listdir(SCHEMA_DIR)):
            if fn.endswith(".schema.json"):
                with open(os.path.join(SCHEMA_DIR, fn), encoding="utf-8") as f:
                    resources.append((fn, Resource.from_contents(_strict(json.load(f)))))
        reg = Registry().with_resources(resources)
        schema = reg.contents(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        _validators[name] = jsonschema.Draft202012Validator(schema, registry=reg)
    return _validators[name]


def check_schema(F, doc, name, what):
    """One check: `doc` (parsed JSON, or the text of it) is valid against include/schema/NAME.
    Returns whether it is."""
    import json
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except ValueError as e:
            return F.fail("%s: output is JSON (for %s)" % (what, name), str(e))
    v = schema_validator(name)
    errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return F.check(not errs, "%s: output is valid against include/schema/%s" % (what, name),
                   "\n".join("%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)",
                                         e.message[:300]) for e in errs[:6]))


def check_inspect_json(F, doc, what):
    """inspect --json's output against include/schema/inspect.schema.json (each file entry by
    its format's schema)."""
    return check_schema(F, doc, "inspect.schema.json", what)


def check_diff_json(F, doc, what):
    """diff --json's output against include/schema/diff.schema.json."""
    return check_schema(F, doc, "diff.schema.json", what)
