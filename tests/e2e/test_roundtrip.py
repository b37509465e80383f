#!/usr/bin/env python3
"""End-to-end: what `convert` must carry through untouched.

- Unknown protobuf fields (field numbers 1000+, every wire type) appended by hand to the
  ModelProto, GraphProto, NodeProto and an initializer's TensorProto survive
  `convert --no-dedup`: onnx parses the output and each message still carries its unknown fields.
- Fields newer than Debian's onnx.proto 1.12 (node/graph metadata_props) survive.
- Tensors stored in typed fields (float_data, int32_data for INT32/FLOAT16/BOOL/UINT8, int64_data,
  double_data, string_data), empty tensors, FLOAT8 and odd-length INT4 initializers, Constant
  nodes with tensor / value_floats / value_int attributes: `convert` (dedup on) and
  `convert --no-dedup` give models that load, keep every remaining initializer's values, and
  compute bit-identical outputs.
- metadata_props, doc_strings, producer/domain/model_version, opset imports are preserved."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402

NAME = "test_roundtrip"
N = 8


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def unknown_fields(tag_base, marker):
    """Unknown fields of all four wire types: varint, fixed64, length-delimited, fixed32."""
    return (varint((tag_base << 3) | 0) + varint(300 + tag_base)
            + varint(((tag_base + 1) << 3) | 1) + (0x0102030405060708).to_bytes(8, "little")
            + varint(((tag_base + 2) << 3) | 2) + varint(len(marker)) + marker
            + varint(((tag_base + 3) << 3) | 5) + (0xA1B2C3D4).to_bytes(4, "little"))


MARK = {"model": b"MSH_UNKNOWN_IN_MODEL", "graph": b"MSH_UNKNOWN_IN_GRAPH",
        "node": b"MSH_UNKNOWN_IN_NODE", "tensor": b"MSH_UNKNOWN_IN_TENSOR"}
BASE = {"model": 1000, "graph": 1100, "node": 1200, "tensor": 1300}


def with_unknown(msg, key):
    msg.MergeFromString(unknown_fields(BASE[key], MARK[key]))


def build_typed_model(np, onnx):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(11)
    vals = rng.normal(0, 1, N).astype(np.float32)

    def typed(name, dtype, dims, field, values):
        t = TensorProto()
        t.name, t.data_type = name, dtype
        t.dims.extend(dims)
        getattr(t, field).extend(values)
        t.doc_string = "typed tensor " + name
        return t

    half_bits = vals.astype(np.float16).view(np.uint16).astype(np.int32).tolist()
    inits = [
        typed("wf_a", TensorProto.FLOAT, [N], "float_data", vals.tolist()),
        typed("wf_b", TensorProto.FLOAT, [N], "float_data", vals.tolist()),          # dup of wf_a
        numpy_helper.from_array(vals.copy(), "wf_raw"),                             # same, raw
        typed("wi32", TensorProto.INT32, [N], "int32_data", list(range(-4, 4))),
        typed("wi64", TensorProto.INT64, [N], "int64_data", [2**40, -3, 0, 7, 1, 2, 3, -(2**35)]),
        typed("wi64_b", TensorProto.INT64, [N], "int64_data",
              [2**40, -3, 0, 7, 1, 2, 3, -(2**35)]),                                 # dup
        typed("wh", TensorProto.FLOAT16, [N], "int32_data", half_bits),
        typed("wd", TensorProto.DOUBLE, [N], "double_data", (vals * 3).astype(np.float64).tolist()),
        typed("wb", TensorProto.BOOL, [N], "int32_data", [1, 0, 1, 1, 0, 0, 1, 0]),
        typed("wu8", TensorProto.UINT8, [N], "int32_data", [0, 1, 2, 3, 250, 251, 254, 255]),
        typed("ws_a", TensorProto.STRING, [2], "string_data", [b"hello", b"w\xc3\xb6rld"]),
        typed("ws_b", TensorProto.STRING, [2], "string_data", [b"hello", b"w\xc3\xb6rld"]),  # dup
        numpy_helper.from_array(np.zeros((0,), np.float32), "wempty_a"),
        numpy_helper.from_array(np.zeros((0,), np.float32), "wempty_b"),            # dup (empty)
    ]
    # newer element types, unused by the graph: only their bytes must survive
    f8 = TensorProto()
    f8.name, f8.data_type = "w_f8", TensorProto.FLOAT8E4M3FN
    f8.dims.extend([N])
    f8.raw_data = bytes([0x00, 0x38, 0x40, 0xB8, 0x7E, 0x01, 0x80, 0x44])
    i4 = TensorProto()
    i4.name, i4.data_type = "w_i4", TensorProto.INT4
    i4.dims.extend([7])                                   # odd: 4 bytes, last high nibble unused
    i4.raw_data = bytes([0x21, 0x43, 0x65, 0x07])
    i4b = TensorProto()
    i4b.CopyFrom(i4)
    i4b.name = "w_i4_b"
    inits += [f8, i4, i4b]

    c_tensor = TensorProto()
    c_tensor.name, c_tensor.data_type = "c_t", TensorProto.FLOAT
    c_tensor.dims.extend([N])
    c_tensor.float_data.extend((vals * 0.5).tolist())
    c_i64 = TensorProto()
    c_i64.name, c_i64.data_type = "c_i", TensorProto.INT64
    c_i64.dims.extend([N])
    c_i64.int64_data.extend([1, 2, 3, 4, 5, 6, 7, 8])

    nodes = [
        helper.make_node("Constant", [], ["c1"], name="const_tensor", value=c_tensor,
                         doc_string="Constant with float_data"),
        helper.make_node("Constant", [], ["c2"], name="const_floats",
                         value_floats=(vals * 0.25).tolist()),
        helper.make_node("Constant", [], ["c3"], name="const_int", value_int=3),
        helper.make_node("Constant", [], ["c4"], name="const_i64", value=c_i64),
        helper.make_node("Add", ["x", "wf_a"], ["s1"], name="add_a", doc_string="x + wf_a"),
        helper.make_node("Mul", ["s1", "wf_b"], ["s2"], name="mul_b"),
        helper.make_node("Add", ["s2", "wf_raw"], ["s3"], name="add_raw"),
        helper.make_node("Cast", ["wi32"], ["f_i32"], name="cast_i32", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wi64"], ["f_i64"], name="cast_i64", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wi64_b"], ["f_i64b"], name="cast_i64b", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wh"], ["f_h"], name="cast_h", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wd"], ["f_d"], name="cast_d", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wu8"], ["f_u8"], name="cast_u8", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c3"], ["f_c3"], name="cast_c3", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c4"], ["f_c4"], name="cast_c4", to=TensorProto.FLOAT),
        helper.make_node("Sum", ["s3", "f_i32", "f_i64", "f_i64b", "f_h", "f_d", "f_u8", "c1",
                                 "c2", "f_c3", "f_c4"], ["s4"], name="sum"),
        helper.make_node("Neg", ["s4"], ["neg"], name="neg"),
        helper.make_node("Where", ["wb", "s4", "neg"], ["s5"], name="where"),
        helper.make_node("Concat", ["s5", "wempty_a", "wempty_b"], ["y"], name="concat", axis=0),
        helper.make_node("Identity", ["ws_a"], ["strings_a"], name="id_sa"),
        helper.make_node("Identity", ["ws_b"], ["strings_b"], name="id_sb"),
    ]
    g = helper.make_graph(
        nodes, "typed_fields",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N]),
         helper.make_tensor_value_info("strings_a", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("strings_b", TensorProto.STRING, [2])],
        initializer=inits, doc_string="graph doc: typed fields")
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.example.unused", 1)],
                          producer_name="msh-roundtrip", producer_version="1.2.3",
                          domain="org.example.msh", model_version=42,
                          doc_string="model doc: \u00fcn\u00efc\u00f8d\u00e9 \u2713")
    m.ir_version = 10
    helper.set_model_props(m, {"author": "modelshrink tests", "license": "MIT",
                               "unicode": "\u00fcn\u00efc\u00f8d\u00e9 \u2713", "empty": ""})
    # fields newer than onnx.proto 1.12
    e = g.node[4].metadata_props.add() if hasattr(g.node[4], "metadata_props") else None
    if e is not None:
        e.key, e.value = "node_meta", "kept"
        e = m.graph.node[4].metadata_props.add()
        e.key, e.value = "node_meta", "kept"
    if hasattr(m.graph, "metadata_props"):
        e = m.graph.metadata_props.add()
        e.key, e.value = "graph_meta", "kept too"
    return m


def main():
    np, onnx, _ = C.import_deps("numpy", "onnx", "onnxruntime")
    args = C.parse_args(__doc__)
    G = C.gen_models()
    F = C.Failures()
    w = args.work
    from google.protobuf import unknown_fields as U
    from onnx import helper, numpy_helper

    def unknown_of(msg):
        return sorted((f.field_number, f.wire_type, f.data if not isinstance(f.data, U.UnknownFieldSet)
                       else None) for f in U.UnknownFieldSet(msg))

    def convert(src, dst, *opts):
        r = C.run(args.bin, "convert", *opts, src, "-o", dst)
        return F.check(r.rc == 0 and os.path.isfile(dst), "convert %s %s exits 0"
                       % (" ".join(opts), os.path.basename(src)), r.describe())

    def loads_and_checks(path, what):
        try:
            m = onnx.load(path)
        except Exception as e:
            F.fail("%s: onnx.load parses the output" % what, str(e))
            return None
        try:
            onnx.checker.check_model(m)
            F.check(True, "%s: onnx.checker passes" % what)
        except Exception as e:
            F.fail("%s: onnx.checker passes" % what, str(e))
        return m

    def same_outputs(src, dst, feeds, what):
        try:
            ref, got = C.run_model(src, feeds), C.run_model(dst, feeds)
        except Exception as e:
            return F.fail("%s: onnxruntime runs input and output" % what, str(e))
        d = C.diff_outputs(ref, got)
        F.check(not d, "%s: outputs bit-identical" % what, d)

    # ---- unknown fields --------------------------------------------------------------------
    m = G.make_mlp_dup(seed=5, width=64)
    m.graph.node[0].doc_string = "first node"
    with_unknown(m, "model")
    with_unknown(m.graph, "graph")
    with_unknown(m.graph.node[0], "node")
    big = [t for t in m.graph.initializer if t.name == "fc2.weight"][0]
    with_unknown(big, "tensor")
    src = os.path.join(w, "unknown.onnx")
    with open(src, "wb") as f:
        f.write(m.SerializeToString())
    raw_in = open(src, "rb").read()
    for k, mark in MARK.items():
        assert mark in raw_in, k
    expect = {"model": unknown_of(m), "graph": unknown_of(m.graph),
              "node": unknown_of(m.graph.node[0]), "tensor": unknown_of(big)}
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    dst = os.path.join(w, "unknown.out.onnx")
    if convert(src, dst, "--no-dedup"):
        raw_out = open(dst, "rb").read()
        for k, mark in MARK.items():
            F.check(mark in raw_out, "unknown fields: %s's marker bytes appear in the output" % k)
        om = loads_and_checks(dst, "unknown fields")
        if om is not None:
            node = [n for n in om.graph.node if n.name == m.graph.node[0].name]
            tens = [t for t in om.graph.initializer if t.name == "fc2.weight"]
            got = {"model": unknown_of(om), "graph": unknown_of(om.graph),
                   "node": unknown_of(node[0]) if node else None,
                   "tensor": unknown_of(tens[0]) if tens else None}
            for k in expect:
                F.check(got[k] == expect[k], "unknown fields of the %s survive, in place" % k,
                        "expected %s\ngot      %s" % (expect[k], got[k]))
            F.check(node and node[0].doc_string == "first node", "node doc_string kept")
        same_outputs(src, dst, {"x": x}, "unknown fields --no-dedup")
    dst = os.path.join(w, "unknown.dedup.onnx")
    if convert(src, dst):
        om = loads_and_checks(dst, "unknown fields, dedup")
        if om is not None:
            F.check(unknown_of(om) == expect["model"] and unknown_of(om.graph) == expect["graph"],
                    "unknown fields of model and graph survive a dedup convert too")
        same_outputs(src, dst, {"x": x}, "unknown fields, dedup")

    # ---- typed fields, Constant nodes, metadata --------------------------------------------
    m = build_typed_model(np, onnx)
    src = os.path.join(w, "typed.onnx")
    onnx.save(m, src)
    try:
        onnx.checker.check_model(src)
    except Exception as e:
        F.fail("fixture: typed model passes onnx.checker", str(e))
    feeds = {"x": np.linspace(-3, 3, N, dtype=np.float32)}
    in_vals = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    def meta(mm):
        return dict(ir=mm.ir_version, producer=(mm.producer_name, mm.producer_version),
                    domain=mm.domain, version=mm.model_version, doc=mm.doc_string,
                    gdoc=mm.graph.doc_string, gname=mm.graph.name,
                    props=[(p.key, p.value) for p in mm.metadata_props],
                    opsets=sorted((o.domain, o.version) for o in mm.opset_import),
                    ndocs=[(n.name, n.doc_string) for n in mm.graph.node],
                    nmeta=[(n.name, [(p.key, p.value) for p in n.metadata_props])
                           for n in mm.graph.node],
                    gmeta=[(p.key, p.value) for p in mm.graph.metadata_props],
                    inputs=[i.SerializeToString() for i in mm.graph.input],
                    outputs=[o.SerializeToString() for o in mm.graph.output])

    for opts, label in (((), "typed, dedup"), (("--no-dedup",), "typed, --no-dedup")):
        dst = os.path.join(w, "typed.%s.onnx" % ("nodedup" if opts else "dedup"))
        if not convert(src, dst, *opts):
            continue
        om = loads_and_checks(dst, label)
        if om is None:
            continue
        a, b = meta(m), meta(om)
        # the always-on clean-up drops opset imports of domains no node uses
        a["opsets"] = [o for o in a["opsets"] if o[0] != "com.example.unused"]
        for k in a:
            F.check(a[k] == b[k], "%s: %s preserved" % (label, k),
                    "before %r\nafter  %r" % (a[k], b[k]))
        out_vals = {t.name: numpy_helper.to_array(t) for t in om.graph.initializer}
        bad = []
        for name, v in out_vals.items():
            ref = in_vals.get(name)
            if ref is None or ref.dtype != v.dtype or ref.shape != v.shape or (
                    ref.tobytes() != v.tobytes() if v.dtype != object
                    else ref.tolist() != v.tolist()):
                bad.append(name)
        F.check(not bad, "%s: every output initializer holds its input values" % label,
                "differ or unknown: %s" % bad)
        unused = {"w_f8", "w_i4", "w_i4_b"}
        F.check(not (unused & set(out_vals)), "%s: unused initializers removed" % label,
                "still there: %s" % sorted(unused & set(out_vals)))
        if opts:
            F.check(sorted(out_vals) == sorted(set(in_vals) - unused),
                    "%s: all used initializers present" % label,
                    "missing %s" % sorted(set(in_vals) - unused - set(out_vals)))
        else:
            F.check(len(out_vals) < len(in_vals), "%s: some duplicates merged" % label,
                    "%d -> %d initializers" % (len(in_vals), len(out_vals)))
        consts = {n.name: n.SerializeToString() for n in m.graph.node if n.op_type == "Constant"}
        oconsts = {n.name: n for n in om.graph.node if n.op_type == "Constant"}
        for name in consts:
            n = oconsts.get(name)
            same = n is not None and all(
                np.array_equal(onnx.numpy_helper.to_array(x.t) if x.HasField("t") else 0,
                               onnx.numpy_helper.to_array(y.t) if y.HasField("t") else 0)
                and list(x.floats) == list(y.floats) and x.i == y.i
                for x, y in zip(sorted([a for a in onnx.NodeProto.FromString(consts[name])
                                        .attribute], key=lambda a: a.name),
                                sorted(n.attribute, key=lambda a: a.name)))
            F.check(same, "%s: Constant node %s keeps its value" % (label, name))
        same_outputs(src, dst, feeds, label)

    # ---- newer element types that a node reads: their raw bytes survive untouched ---------
    ids = [helper.make_node("Identity", [t.name], ["o_" + t.name], name="id_" + t.name)
           for t in (m.graph.initializer) if t.name in ("w_f8", "w_i4", "w_i4_b")]
    raw_in = {t.name: t.raw_data for t in m.graph.initializer if t.name in ("w_f8", "w_i4", "w_i4_b")}
    shapes = {t.name: (t.data_type, list(t.dims)) for t in m.graph.initializer}
    g = helper.make_graph(ids, "raw_types", [], [
        helper.make_tensor_value_info("o_" + k, shapes[k][0], shapes[k][1]) for k in sorted(raw_in)],
        initializer=[t for t in m.graph.initializer if t.name in raw_in])
    rm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    rm.ir_version = 10
    src = os.path.join(w, "rawtypes.onnx")
    onnx.save(rm, src)
    for opts, label in (((), "raw types, dedup"), (("--no-dedup",), "raw types, --no-dedup")):
        dst = os.path.join(w, "rawtypes.%s.onnx" % ("nodedup" if opts else "dedup"))
        if not convert(src, dst, *opts):
            continue
        om = loads_and_checks(dst, label)
        if om is None:
            continue
        raw = {t.name: t.raw_data for t in om.graph.initializer}
        F.check(raw.get("w_i4") == bytes([0x21, 0x43, 0x65, 0x07])
                and raw.get("w_f8") == bytes([0x00, 0x38, 0x40, 0xB8, 0x7E, 0x01, 0x80, 0x44]),
                "%s: INT4 (odd length) and FLOAT8 raw bytes unchanged" % label, repr(raw))
        if opts:
            F.check(raw == raw_in, "%s: all three tensors kept" % label, sorted(raw))
        else:
            F.check(len(raw) == 2, "%s: the INT4 duplicate merged" % label, sorted(raw))
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
