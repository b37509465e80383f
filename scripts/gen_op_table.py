#!/usr/bin/env python3
"""Generate src/passes/op_schemas.c: the type constraints of every ONNX operator schema version.

The table comes from onnx.defs.get_all_schemas_with_history() of the installed onnx package, so a
new opset is a matter of upgrading onnx and re-running:

    .venv/bin/python scripts/gen_op_table.py            # writes src/passes/op_schemas.c
    .venv/bin/python scripts/gen_op_table.py --check    # exit 1 if the committed file is stale
    .venv/bin/python scripts/gen_op_table.py -o FILE    # write elsewhere

The output is deterministic (same onnx version, same bytes) and already clang-format clean
(.clang-format of the repo, checked with clang-format 14); clang-format is not run here so that
the bytes do not depend on which clang-format is installed. The lookup functions are emitted
verbatim at the end of the file (see TAIL below); the API is in src/passes/op_schemas.h.

Every domain the onnx package registers is included ("" = ai.onnx, ai.onnx.ml,
ai.onnx.preview.training, ai.onnx.preview, ...). Schemas marked deprecated are kept: a model can
still use them at the opsets where they were live.
"""
import argparse
import os
import re
import sys

import onnx
import onnx.defs
from onnx import TensorProto

NONTENSOR = 1 << 31
OPTION = {"Single": 0, "Optional": 1, "Variadic": 2}

# "float16" -> 10, ... from TensorProto.DataType itself, so new element types need no edit here.
ELEM = {name.lower(): num for name, num in TensorProto.DataType.items() if num != 0}


def type_mask(type_str, where):
    """Mask of one ONNX type string: bit t for tensor(<elem t>), NONTENSOR for anything else."""
    m = re.fullmatch(r"tensor\((\w+)\)", type_str)
    if m is None:
        if re.match(r"(seq|optional|map|sparse_tensor)\(", type_str):
            return NONTENSOR
        raise SystemExit(f"gen_op_table: {where}: unknown type string {type_str!r}")
    num = ELEM.get(m.group(1))
    if num is None:
        raise SystemExit(f"gen_op_table: {where}: unknown element type {type_str!r}")
    if num >= 31:
        raise SystemExit(f"gen_op_table: {where}: data type {num} does not fit the 31-bit mask")
    return 1 << num


def option_of(param):
    return OPTION[str(param.option).rsplit(".", 1)[-1]]


def c_str(s):
    if not re.fullmatch(r"[A-Za-z0-9_.]*", s):
        raise SystemExit(f"gen_op_table: unexpected characters in name {s!r}")
    return f'"{s}"'


def collect():
    schemas = sorted(
        onnx.defs.get_all_schemas_with_history(),
        key=lambda s: (s.domain.encode(), s.name.encode(), s.since_version),
    )
    out = []
    for s in schemas:
        where = f"{s.domain or 'ai.onnx'}::{s.name}-{s.since_version}"
        var_names = [c.type_param_str for c in s.type_constraints]
        var_masks = []
        for c in s.type_constraints:
            mask = 0
            for t in c.allowed_type_strs:
                mask |= type_mask(t, f"{where} constraint {c.type_param_str}")
            var_masks.append(mask)

        def params(formals, kind):
            res = []
            for i, p in enumerate(formals):
                if p.type_str in var_names:
                    var = var_names.index(p.type_str)
                    mask = var_masks[var]
                else:
                    var = -1
                    mask = type_mask(p.type_str, f"{where} {kind} {i} '{p.name}'")
                res.append((var, option_of(p), int(bool(p.is_homogeneous)), mask, p.name))
            return res

        ins, outs = params(s.inputs, "input"), params(s.outputs, "output")
        for n, what in ((len(ins), "inputs"), (len(outs), "outputs"), (len(var_names), "vars")):
            if n > 127:
                raise SystemExit(f"gen_op_table: {where}: {n} {what} do not fit the table")
        for kind, ps in (("input", ins), ("output", outs)):
            for i, p in enumerate(ps):
                if p[1] == OPTION["Variadic"] and i != len(ps) - 1:
                    raise SystemExit(f"gen_op_table: {where}: variadic {kind} {i} is not last")
        out.append((s.domain, s.name, s.since_version, ins, outs, var_names, var_masks,
                    function_unsafe(s, ins, var_masks)))
    return out


def function_unsafe(s, ins, var_masks):
    """Bit 0 (FLOAT16) / bit 1 (BFLOAT16): the schema allows the type, but ONNX's own function
    body for the op does not type-check with it (MeanVarianceNormalization-13 adds a float
    epsilon, for example). Found by running ONNX's strict type inference on a one-node model whose
    float inputs carry the type; only type errors count, anything else (missing attributes,
    shapes) is not held against the op."""
    if not (getattr(s, "has_function", False) or
            getattr(s, "has_context_dependent_function", False)):
        return 0
    from onnx import helper, shape_inference
    bits = 0
    for bit, t in ((1, 10), (2, 16)):
        if not any((m >> t) & 1 and (m >> 1) & 1 for m in var_masks):
            continue
        inputs, vis = [], []
        for i, (var, opt, hom, mask, pname) in enumerate(ins):
            if opt == OPTION["Optional"]:
                break
            if var >= 0 and (mask >> t) & 1 and (mask >> 1) & 1:
                et = t
            elif (mask >> 1) & 1:
                et = 1
            else:
                et = next((k for k in range(1, 31) if (mask >> k) & 1), 0)
            if not et:
                break
            inputs.append(f"i{i}")
            vis.append(helper.make_tensor_value_info(f"i{i}", et, None))
        node = helper.make_node(s.name, inputs, [f"o{j}" for j in range(len(s.outputs))],
                                domain=s.domain)
        graph = helper.make_graph([node], "probe", vis, [])
        opsets = [helper.make_opsetid(s.domain, s.since_version)]
        if s.domain:
            opsets.append(helper.make_opsetid("", 18))
        model = helper.make_model(graph, opset_imports=opsets)
        try:
            shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as e:  # noqa: BLE001 - onnx raises several error classes
            msg = str(e)
            if "inconsistent type" in msg or "type mismatch" in msg.lower():
                bits |= bit
    return bits


TAIL = r"""
const char msh_op_schemas_onnx_version[] = ONNX_VERSION;

const msh_op_schema *msh_op_schema_table(size_t *n) {
    if (n)
        *n = sizeof table / sizeof table[0];
    return table;
}

/* strcmp order on (domain, name), then since_version. */
static int key_cmp(const msh_op_schema *s, const char *domain, const char *op, int64_t version) {
    int c = strcmp(s->domain, domain);
    if (c == 0)
        c = strcmp(s->name, op);
    if (c == 0)
        c = (s->since_version > version) - (s->since_version < version);
    return c;
}

const msh_op_schema *msh_op_schema_find(const char *domain, const char *op, int64_t opset) {
    if (!op || opset < 1)
        return NULL;
    if (!domain || strcmp(domain, "ai.onnx") == 0)
        domain = "";
    /* First entry with key > (domain, op, opset); the one before it, when it is the same op, is
     * the version in force at `opset`. */
    size_t lo = 0, hi = sizeof table / sizeof table[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(&table[mid], domain, op, opset) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const msh_op_schema *s = &table[lo - 1];
    if (strcmp(s->domain, domain) != 0 || strcmp(s->name, op) != 0)
        return NULL;
    return s;
}

static const msh_op_param *param_at(const msh_op_param *p, size_t n, size_t i) {
    if (i < n)
        return &p[i];
    if (n > 0 && p[n - 1].option == MSH_OP_VARIADIC)
        return &p[n - 1];
    return NULL;
}

const msh_op_param *msh_op_input(const msh_op_schema *s, size_t i) {
    return s ? param_at(s->inputs, s->n_inputs, i) : NULL;
}

const msh_op_param *msh_op_output(const msh_op_schema *s, size_t i) {
    return s ? param_at(s->outputs, s->n_outputs, i) : NULL;
}

int msh_op_function_unsafe(const msh_op_schema *s, int32_t elem_type) {
    if (!s || s < table || s >= table + sizeof table / sizeof table[0])
        return 0;
    unsigned bits = fn_unsafe[s - table];
    return (elem_type == 10 && (bits & 1u)) || (elem_type == 16 && (bits & 2u));
}
"""


def label(dom, name, since):
    return f"{dom + '::' if dom else ''}{name}-{since}"


def aligned(group):
    """Lines "    code /* comment */" with the comments of the group in one column, as
    clang-format's AlignTrailingComments lays out consecutive lines."""
    if not group:
        return []
    width = max(len(code) for code, _ in group) + 1
    out = []
    for code, comment in group:
        line = f"    {code.ljust(width)}/* {comment} */"
        if len(line) > 100:
            raise SystemExit(f"gen_op_table: line too long: {line}")
        out.append(line)
    return out


def render(rows):
    ver = onnx.__version__
    lines = [
        "/* GENERATED by scripts/gen_op_table.py from onnx " + ver + " "
        "(onnx.defs.get_all_schemas_with_history()).",
        " * DO NOT EDIT BY HAND: change the script and re-run it.",
        f" * {len(rows)} schema versions, sorted by (domain, name, since_version).",
        " * Parameter rows: {type variable or -1, option, homogeneous, type mask}; see op_schemas.h. */",
        '#include "passes/op_schemas.h"',
        "",
        "#include <string.h>",
        "",
        f'#define ONNX_VERSION "{ver}"',
    ]
    # Domains by macro, so that every schema row fits on one 100-column line.
    dmacro = {"": '""'}
    for dom in sorted({r[0] for r in rows} - {""}):
        macro = "DOM_" + re.sub(r"\W", "_", dom.rsplit(".", 1)[-1].upper())
        if macro in dmacro.values():
            raise SystemExit(f"gen_op_table: two domains map to {macro}")
        dmacro[dom] = macro
        lines.append(f"#define {macro} {c_str(dom)}")
    lines += [
        "",
        "static const msh_op_param par[] = {",
    ]
    offsets = []
    n_par = 0
    for dom, name, since, ins, outs, vnames, vmasks, _ in rows:
        offsets.append(n_par)
        if ins or outs:
            lines.append(f"    /* {n_par}: {label(dom, name, since)} */")
        group = []
        for kind, ps in (("in", ins), ("out", outs)):
            for var, opt, hom, mask, pname in ps:
                group.append((f"{{{var}, {opt}, {hom}, 0x{mask:08x}u}},", f"{kind} {pname}"))
            n_par += len(ps)
        lines += aligned(group)
    if n_par == 0:
        lines.append("    {0, 0, 0, 0},")
    lines += ["};", "", "static const uint32_t vty[] = {"]
    voffsets = []
    vgroup, ngroup = [], []
    n_var = 0
    for dom, name, since, ins, outs, vnames, vmasks, _ in rows:
        voffsets.append(n_var)
        for v, m in zip(vnames, vmasks):
            vgroup.append((f"0x{m:08x}u,", f"{n_var}: {label(dom, name, since)} {v}"))
            ngroup.append((f"{c_str(v)},", f"{n_var}"))
            n_var += 1
    lines += aligned(vgroup) if vgroup else ["    0,"]
    lines += ["};", "", "static const char *const vna[] = {"]
    lines += aligned(ngroup) if ngroup else ['    "",']
    lines += ["};", "", "static const msh_op_schema table[] = {"]
    for (dom, name, since, ins, outs, vnames, vmasks, _), po, vo in zip(rows, offsets, voffsets):
        row = (
            f"    {{{dmacro[dom]}, {c_str(name)}, {since}, {len(ins)}, {len(outs)}, "
            f"{len(vnames)}, par + {po}, par + {po + len(ins)}, vty + {vo}, vna + {vo}}},"
        )
        if len(row) > 100:
            raise SystemExit(f"gen_op_table: row for {name} is too long for clang-format")
        lines.append(row)
    lines += ["};", "", "/* Function bodies that do not type-check in FLOAT16 (bit 0) / BFLOAT16 (bit 1). */",
              "static const uint8_t fn_unsafe[] = {"]
    unsafe = [(f"{r[7]},", label(r[0], r[1], r[2])) for r in rows if r[7]]
    flat = [str(r[7]) for r in rows]
    for i in range(0, len(flat), 32):
        lines.append("    " + ", ".join(flat[i:i + 32]) + ",")
    lines += ["};"]
    if unsafe:
        lines.append("/* unsafe: " + ", ".join(u[1] for u in unsafe)[:2000] + " */")
    return "\n".join(lines) + "\n" + TAIL


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=os.path.join(root, "src", "passes", "op_schemas.c"))
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    text = render(collect())
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        print(f"{args.output}: {'up to date' if same else 'STALE'}")
        return 0 if same else 1
    with open(args.output, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"{args.output}: {len(text)} bytes, onnx {onnx.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
