"""The Python package as a user gets it: installed with `pip install .[check,test]` into a fresh
venv (scripts/test.sh, step "Python package"), imported from there, never from the source tree.

Oracles: the installed `modelshrink` command's bytes (the package must write what the CLI
writes), onnx's own reading of the models, numpy for the values check() must report, and a C
compiler for the struct layouts the ctypes binding declares."""

import concurrent.futures
import filecmp
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelshrink
from modelshrink import _native

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTDATA = "/usr/share/libonnx-testdata/data"
CONV = TESTDATA + "/pytorch-converted/test_Conv3d_groups/model.onnx"
CKPT = os.path.join(ROOT, "tests/fixtures/pth/resnet_adam.pth")
CLI = os.path.join(sysconfig.get_path("scripts"), "modelshrink")


def need(path):
    if not os.path.exists(path):
        pytest.skip("%s is missing (scripts/deps.sh installs libonnx-testdata)" % path)
    return path


def cli(*args, check=True):
    return subprocess.run([CLI, *args], capture_output=True, text=True, check=check)


def listing(d):
    return sorted(os.listdir(d))


def mlp(path, w, b, opset=17):
    """y = x @ w + b, a model whose outputs numpy can compute."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(m, path)
    return path


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(7)
    out = []
    for i in range(4):
        w = (rng.standard_normal((64, 32)) * 0.05).astype(np.float32)
        b = rng.standard_normal(32).astype(np.float32)
        out.append(mlp(str(tmp_path / ("m%d.onnx" % i)), w, b))
    return out


def test_installed_not_source_tree():
    assert os.path.dirname(modelshrink.__file__) != os.path.join(ROOT, "python", "modelshrink")
    pkg = os.path.dirname(modelshrink.__file__)
    for f in ("py.typed", _native.SONAME, "bin/modelshrink"):
        assert os.path.exists(os.path.join(pkg, f)), f


def test_versions_agree():
    lib = modelshrink.library_version()
    hdr = open(os.path.join(ROOT, "include/modelshrink.h")).read()
    parts = [line.split()[2] for line in hdr.splitlines()
             if line.startswith("#define MSH_VERSION_") and line.split()[1][-5:] in
             ("MAJOR", "MINOR", "PATCH")]
    assert lib == ".".join(parts)
    assert modelshrink.__version__ == lib
    assert cli("--version").stdout.split()[1] == lib
    r = subprocess.run([sys.executable, "-m", "modelshrink", "--version"], capture_output=True,
                       text=True, check=True)
    assert r.stdout == cli("--version").stdout


def test_cuda_as_built():
    want = os.environ.get("MSH_EXPECT_CUDA")
    if want is None:
        pytest.skip("MSH_EXPECT_CUDA not set (scripts/test.sh sets it from nvcc's presence)")
    assert modelshrink.cuda_built() == (want == "1")
    if modelshrink.cuda_device_count() == 0:
        with pytest.raises(modelshrink.Error) as e:
            modelshrink.convert(need(CONV), "/tmp/never-written.onnx", device="cuda")
        assert e.value.status == "MSH_ERR_CUDA"
        assert not os.path.exists("/tmp/never-written.onnx")


def test_struct_layouts_match_the_header(tmp_path):
    """Every field the binding declares is where the C compiler puts it, and no field is
    missing (sizes equal)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    lines = []
    for cname, py in (("msh_convert_options", _native.ConvertOptions),
                      ("msh_convert_result", _native.ConvertResult),
                      ("msh_progress", _native.Progress), ("msh_error", _native.Error)):
        lines.append('printf("%s size %%zu\\n", sizeof(%s));' % (cname, cname))
        for f, _t in py._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cname, f, cname, f))
    src = tmp_path / "layout.c"
    src.write_text("#include <modelshrink.h>\n#include <stddef.h>\n#include <stdio.h>\n"
                   "int main(void) {\n%s\nreturn 0;\n}\n" % "\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", os.path.join(ROOT, "include"), str(src), "-o",
                    str(exe)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    want = []
    for cname, py in (("msh_convert_options", _native.ConvertOptions),
                      ("msh_convert_result", _native.ConvertResult),
                      ("msh_progress", _native.Progress), ("msh_error", _native.Error)):
        import ctypes
        want.append("%s size %d" % (cname, ctypes.sizeof(py)))
        for f, _t in py._fields_:
            want.append("%s %s %d" % (cname, f, getattr(py, f).offset))
    assert got.split("\n")[:-1] == want


def test_inspect_is_the_commands_json():
    m = need(CONV)
    info = modelshrink.inspect(m)
    assert info == json.loads(cli("inspect", "--json", m).stdout)["files"][0]
    model = onnx.load(m)
    assert info["tensor_count"] == len(model.graph.initializer)
    assert info["tensor_bytes"] == sum(len(numpy_helper.to_array(t).tobytes())
                                       for t in model.graph.initializer)


def test_inspect_checkpoint():
    info = modelshrink.inspect(CKPT)
    assert info["format"] == "pth"
    assert info["breakdown"]["optimizer_state"] > 0


def test_convert_writes_the_commands_bytes(tmp_path, models):
    cases = (({}, []), ({"fp16": True}, ["--fp16"]),
             ({"int8": True, "int8_min_elements": 16}, ["--int8", "--int8-min-elements", "16"]),
             ({"int4": True, "int4_min_elements": 16, "int4_asym": True},
              ["--int4", "--int4-min-elements", "16", "--int4-asym"]),
             ({"int4": True, "int4_min_elements": 16, "int4_format": "matmulnbits"},
              ["--int4", "--int4-min-elements", "16", "--int4-format", "matmulnbits"]),
             ({"int4": True, "int4_min_elements": 16, "int4_search": True},
              ["--int4", "--int4-min-elements", "16", "--int4-search"]))
    results = []
    for kw, flags in cases:
        a, b = str(tmp_path / "py.onnx"), str(tmp_path / "cli.onnx")
        r = modelshrink.convert(models[0], a, **kw)
        cli("convert", *flags, models[0], "-o", b)
        assert filecmp.cmp(a, b, shallow=False), flags
        assert r["bytes_out"] == os.path.getsize(a)
        assert r["bytes_in"] == os.path.getsize(models[0])
        assert r["format"] == "onnx" and r["device"] == "cpu"
        if "matmulnbits" not in flags:  # com.microsoft ops have no ONNX schema
            onnx.checker.check_model(onnx.load(a), full_check=True)
        results.append(r)
    assert results[2]["int8_tensors"] == 1
    assert results[3]["int4_tensors"] == 1 and results[3]["int4_opset"] == 21
    assert results[4]["int4_tensors"] == 1 and results[4]["int4_why"] == ""
    assert results[5]["int4_tensors"] == 1 and results[5]["int4_search_seconds"] > 0


def test_convert_checkpoint(tmp_path):
    a, b = str(tmp_path / "py.safetensors"), str(tmp_path / "cli.safetensors")
    r = modelshrink.convert(CKPT, a, fp16=True)
    cli("convert", "--fp16", CKPT, "-o", b)
    assert filecmp.cmp(a, b, shallow=False)
    assert r["format"] == "pth" and r["strip_saved_bytes"] > 0 and r["float_tensors"] > 0
    # The safetensors header: every tensor FP16 or an integer buffer.
    with open(a, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
    dtypes = {v["dtype"] for k, v in hdr.items() if k != "__metadata__"}
    assert "F32" not in dtypes and "F16" in dtypes


def test_errors_carry_the_librarys_message(tmp_path):
    with pytest.raises(modelshrink.Error) as e:
        modelshrink.inspect(str(tmp_path / "absent.onnx"))
    assert e.value.status == "MSH_ERR_IO" and "absent.onnx" in str(e.value)
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f not a model")
    before = listing(tmp_path)
    with pytest.raises(modelshrink.Error) as e:
        modelshrink.convert(str(bad), str(tmp_path / "out.onnx"))
    assert e.value.status == "MSH_ERR_FORMAT" and str(e.value).startswith(str(bad) + ": ")
    assert listing(tmp_path) == before
    # An option that does not apply is refused before anything is written.
    with pytest.raises(modelshrink.Error) as e:
        modelshrink.convert(CKPT, str(tmp_path / "x.safetensors"), int8=True)
    assert e.value.status == "MSH_ERR_USAGE" and "int8" in str(e.value)
    assert listing(tmp_path) == before
    with pytest.raises(modelshrink.Error):
        modelshrink.convert(CKPT, str(tmp_path / "x.safetensors"), fp16=True, bf16=True)
    with pytest.raises(modelshrink.Error):
        modelshrink.convert(CKPT, str(tmp_path / "x.safetensors"), device="tpu")
    assert listing(tmp_path) == before


def test_progress_and_cancel(tmp_path, models):
    seen = []
    modelshrink.convert(models[0], str(tmp_path / "a.onnx"), fp16=True, progress=seen.append)
    assert seen and all(isinstance(p, modelshrink.Progress) for p in seen)
    writes = [p for p in seen if p.phase == "write"]
    assert writes[0].bytes_done == 0 and writes[-1].bytes_done == writes[-1].bytes_total > 0
    assert writes[-1].tensors_done == writes[-1].tensors_total == 2
    assert all(p.path == models[0] for p in seen)

    before = listing(tmp_path)
    with pytest.raises(modelshrink.Cancelled) as e:
        modelshrink.convert(models[0], str(tmp_path / "b.onnx"), progress=lambda p: True)
    assert e.value.status == "MSH_ERR_CANCELLED"
    assert listing(tmp_path) == before

    class Boom(Exception):
        pass

    def boom(p):
        raise Boom("from the callback")

    with pytest.raises(Boom):
        modelshrink.convert(models[0], str(tmp_path / "c.onnx"), progress=boom)
    assert listing(tmp_path) == before

    tok = modelshrink.CancelToken()
    tok.request()
    assert tok.requested
    with pytest.raises(modelshrink.Cancelled):
        modelshrink.convert(models[0], str(tmp_path / "d.onnx"), cancel=tok)
    assert listing(tmp_path) == before
    tok.reset()
    modelshrink.convert(models[0], str(tmp_path / "d.onnx"), cancel=tok)
    assert os.path.exists(tmp_path / "d.onnx")


def test_threads_give_the_sequential_bytes(tmp_path, models):
    seq = []
    for i, m in enumerate(models):
        out = str(tmp_path / ("seq%d.onnx" % i))
        modelshrink.convert(m, out, fp16=True)
        seq.append(out)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(modelshrink.convert, m, str(tmp_path / ("par%d.onnx" % i)), fp16=True)
                for i, m in enumerate(models)]
        for f in futs:
            f.result()
    for i, s in enumerate(seq):
        assert filecmp.cmp(s, str(tmp_path / ("par%d.onnx" % i)), shallow=False)


def test_check_reports_what_numpy_computes(tmp_path):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 8)) * 0.1).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    w2 = w.copy()
    w2[:, :4] *= -1  # a broken "conversion": half the columns flipped
    a = mlp(str(tmp_path / "a.onnx"), w, b)
    c = mlp(str(tmp_path / "c.onnx"), w2, b)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    r = modelshrink.check(a, c, inputs={"x": x})
    ya, yc = x.astype(np.float64) @ w + b, x.astype(np.float64) @ w2 + b
    s = r["outputs"]["y"]
    assert r["engines"] == {"original": "onnxruntime", "converted": "onnxruntime"}
    assert s["max_abs_err"] == pytest.approx(np.abs(ya - yc).max(), rel=1e-4)
    cos = float((ya * yc).sum() / np.sqrt((ya * ya).sum() * (yc * yc).sum()))
    assert s["cosine"] == pytest.approx(cos, abs=1e-5) and s["cosine"] < 0.99
    # A real conversion of a real model: FP16 stays close.
    out = str(tmp_path / "conv.fp16.onnx")
    modelshrink.convert(need(CONV), out, fp16=True)
    r = modelshrink.check(CONV, out, runs=2)
    (s,) = r["outputs"].values()
    assert s["cosine"] > 0.9999 and 0 < s["max_abs_err"] < 1e-2 and s["note"] == ""


def test_console_command_is_the_cli(tmp_path):
    r = cli("convert", "--int8", CKPT, "-o", str(tmp_path / "x.safetensors"), check=False)
    assert r.returncode == 2 and "int8" in r.stderr
    assert not os.path.exists(tmp_path / "x.safetensors")
    help_text = cli("convert", "--help").stdout
    assert "--fp16" in help_text and "--int8" in help_text


def test_readme_python_example(tmp_path):
    """README.md's Python example, run as written on a model of the test data."""
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("```python\n", text.index("## Python")) + len("```python\n")
    code = text[start:text.index("```", start)]
    shutil.copy(need(CONV), tmp_path / "model.onnx")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "model.fp16.onnx")
    assert r.stdout.strip(), "the example prints what it did"
    print(textwrap.indent(r.stdout, "    "))
