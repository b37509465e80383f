#!/usr/bin/env python3
"""End-to-end: safetensors in and out.

Good files are made at run time: one by the safetensors package's own writer (numpy API), one
by hand (every dtype including BF16, a scalar, special FP32 values, data stored in a
different order than the header lists it, a group of three identical tensors plus same-bytes
tensors of another dtype and another shape that are not duplicates), one with zero-size tensors
(offsets [k, k]) first, between others and last, and one with no tensors. Check groups:

- inspect: `inspect --json`: format "safetensors", file_bytes, tensor_count, tensor_bytes, by_dtype
  counts and bytes, duplicates (one group {dup_a, dup_b, dup_c}, 2 tensors, 2 x 64 bytes).
- convert: `convert a.safetensors -o b.safetensors`: exit 0, a strictly valid file that the
  package also reads, the same names, dtypes, shapes and bytes; the input unchanged.
- fp16 / bf16: `--fp16` / `--bf16`: F32 tensors become F16 / BF16 equal bit for bit to numpy's
  round-to-nearest-even of the F32 values (FP16 saturating: finite magnitudes above 65504
  become 65504, non-zero ones below 2^-24 become 2^-24, NaN and inf stay), other dtypes keep
  their bytes.
- invalid: header length past the end, header over 100,000,000 bytes (a real 100 MB file),
  JSON that is not an object / not JSON / not UTF-8, an unknown dtype, shape and offsets that
  disagree, overlapping offsets, a gap, a data area longer or shorter than the last offset,
  a negative dim, begin > end, a shape whose byte size overflows, __metadata__ that is not
  string to string, a tensor entry without data_offsets, a 5-byte file, a zero header length:
  convert and inspect exit 1 with one stderr line naming the file, no output, input unchanged.
  (Whether the safetensors package refuses each of them too is printed for information.)

Exit 0 / 1; 77 when numpy or safetensors is missing."""

import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msh_common as C  # noqa: E402
import st_common as S  # noqa: E402

NAME = "test_safetensors"


def main():
    np, = C.import_deps("numpy")
    C.import_deps("safetensors")
    import safetensors.numpy as stnp
    from safetensors import safe_open
    args = C.parse_args(__doc__)
    C.require_jsonschema()
    F = C.Failures()
    w = args.work
    notes = []
    rng = np.random.default_rng(11)

    def raw(a):
        return np.ascontiguousarray(a).tobytes()

    # ---- good files ----------------------------------------------------------------------
    good = {}
    pkg = {"embed.weight": rng.standard_normal((50, 16)).astype(np.float32),
           "fc.bias": rng.standard_normal(16).astype(np.float16),
           "step": np.array(7, dtype=np.int64),
           "mask": np.array([True, False, True])}
    p = os.path.join(w, "good", "package.safetensors")
    os.makedirs(os.path.dirname(p))
    stnp.save_file(pkg, p, metadata={"format": "pt"})
    good["package.safetensors"] = p

    special = np.array([0.0, -0.0, 1e-30, -1e-30, 3e-8, 6e-8, 1e5, -1e5, 65504.0, 65519.0,
                        65520.0, 1.0 / 3.0, np.inf, -np.inf, np.nan, 2.0 ** -14, 2.0 ** -24,
                        -(2.0 ** -25), 1.00048828125, 1.0009765625], dtype=np.float32)
    f32 = rng.standard_normal((8, 12)).astype(np.float32)
    dup = rng.standard_normal((4, 4)).astype(np.float32)
    bf = (rng.standard_normal(10).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    hand = {
        "w.f32": ("F32", [8, 12], raw(f32)),
        "w.special": ("F32", [20], raw(special)),
        "w.f16": ("F16", [3, 5], raw(rng.standard_normal((3, 5)).astype(np.float16))),
        "w.bf16": ("BF16", [10], raw(bf)),
        "w.f64": ("F64", [4], raw(rng.standard_normal(4))),
        "i.i64": ("I64", [5], raw(np.arange(-2, 3, dtype=np.int64))),
        "i.i32": ("I32", [3], raw(np.array([-1, 0, 1 << 30], dtype=np.int32))),
        "i.i16": ("I16", [2], raw(np.array([-300, 300], dtype=np.int16))),
        "i.i8": ("I8", [2], raw(np.array([-128, 127], dtype=np.int8))),
        "i.u8": ("U8", [3], raw(np.array([0, 1, 255], dtype=np.uint8))),
        "i.u16": ("U16", [2], raw(np.array([0, 65535], dtype=np.uint16))),
        "i.u32": ("U32", [1], raw(np.array([4000000000], dtype=np.uint32))),
        "i.u64": ("U64", [1], raw(np.array([2 ** 63], dtype=np.uint64))),
        "b.bool": ("BOOL", [4], raw(np.array([True, False, False, True]))),
        "s.scalar": ("F32", [], raw(np.array(2.5, dtype=np.float32))),
        "dup_a": ("F32", [4, 4], raw(dup)),
        "dup_b": ("F32", [4, 4], raw(dup)),
        "dup_c": ("F32", [4, 4], raw(dup)),
        "dup_as_int": ("I32", [4, 4], raw(dup)),        # same bytes, other dtype: not a dup
        "dup_reshaped": ("F32", [16], raw(dup)),        # same bytes, other shape: not a dup
    }
    order = sorted(hand, key=lambda k: (len(hand[k][2]) % 7, k[::-1]))  # data order != header
    p = os.path.join(w, "good", "hand.safetensors")
    with open(p, "wb") as f:
        f.write(S.st_bytes(hand, metadata={"format": "pt", "source": "test_safetensors"},
                           order=order))
    good["hand.safetensors"] = p
    # zero-size tensors (offsets [k, k]) between, before and after others
    zs = {"a": ("F32", [2], raw(np.array([1.5, -2.0], dtype=np.float32))),
          "e.mid": ("F32", [0, 3], b""),
          "e.first": ("I64", [0], b""),
          "e.last": ("F16", [4, 0], b""),
          "b": ("F16", [3], raw(np.array([1, 2, 3], dtype=np.float16)))}
    p = os.path.join(w, "good", "zero_size.safetensors")
    with open(p, "wb") as f:
        f.write(S.st_bytes(zs, order=["e.first", "a", "e.mid", "b", "e.last"]))
    good["zero_size.safetensors"] = p
    p = os.path.join(w, "good", "empty.safetensors")
    with open(p, "wb") as f:
        f.write(S.st_bytes({}))
    good["empty.safetensors"] = p

    # every good file is valid for the package and for our reader
    contents = {}
    for name, p in good.items():
        try:
            _n, meta, ts, _d = S.read_st(p)
            contents[name] = (meta, ts)
        except S.STError as e:
            F.fail("fixtures: %s invalid for our reader" % name, str(e))
            continue
        try:
            with safe_open(p, framework="np") as f:
                for k in f.keys():
                    if ts[k][0] != "BF16":
                        F.check(f.get_tensor(k).tobytes() == ts[k][2],
                                "fixtures: %s: package reads %s differently" % (name, k))
        except Exception as e:  # noqa: BLE001
            F.fail("fixtures: the safetensors package refuses %s" % name, str(e))

    # ---- inspect -------------------------------------------------------------------------
    for name, p in good.items():
        if name not in contents:
            continue
        meta, ts = contents[name]
        r = C.run(args.bin, "inspect", "--json", p)
        if not F.check(r.rc == 0, "inspect: %s: exit %d" % (name, r.rc), r.describe()):
            continue
        C.check_inspect_json(F, r.out, "inspect: %s" % name)
        try:
            j = json.loads(r.out)["files"][0]
        except (ValueError, KeyError, IndexError) as e:
            F.fail("inspect: %s: not the expected JSON" % name, "%s\n%s" % (e, r.out[:500]))
            continue
        F.check(j.get("format") == "safetensors", "inspect: %s: format %r" % (
            name, j.get("format")))
        F.check(j.get("file_bytes") == os.path.getsize(p), "inspect: %s: file_bytes %r" % (
            name, j.get("file_bytes")))
        F.check(j.get("tensor_count") == len(ts), "inspect: %s: tensor_count %r, expected %d" % (
            name, j.get("tensor_count"), len(ts)))
        total = sum(len(t[2]) for t in ts.values())
        F.check(j.get("tensor_bytes") == total, "inspect: %s: tensor_bytes %r, expected %d" % (
            name, j.get("tensor_bytes"), total))
        want = {}
        for dt, _sh, b in ts.values():
            c, n = want.get(dt, (0, 0))
            want[dt] = (c + 1, n + len(b))
        got = {S.canon_dtype(x.get("dtype")): (x.get("count"), x.get("bytes"))
               for x in j.get("by_dtype") or []}
        F.check(got == want, "inspect: %s: by_dtype %r, expected %r" % (name, got, want))
        dups = j.get("duplicates") or {}
        if name == "hand.safetensors":
            lst = dups.get("list") or []
            F.check(dups.get("groups") == 1 and len(lst) == 1, "inspect: hand: %r duplicate "
                    "groups, expected 1" % dups.get("groups"), json.dumps(dups)[:600])
            if lst:
                F.check(sorted(lst[0].get("members", [])) == ["dup_a", "dup_b", "dup_c"],
                        "inspect: hand: duplicate members %r, expected dup_a/b/c" % (
                            lst[0].get("members"),))
            F.check(dups.get("tensors") == 2 and dups.get("saved_bytes") == 128,
                    "inspect: hand: duplicates.tensors %r / saved_bytes %r, expected 2 / 128" % (
                        dups.get("tensors"), dups.get("saved_bytes")))
        else:
            F.check(not dups.get("groups"), "inspect: %s: reports duplicates" % name,
                    json.dumps(dups)[:300])
    r = C.run(args.bin, "inspect", good["hand.safetensors"])
    F.check(r.rc == 0 and "safetensors" in r.out.lower(), "inspect: hand: table form fails or "
            "does not say safetensors", r.describe())

    # ---- convert / fp16 / bf16 -----------------------------------------------------------
    kept_fp32 = 0
    for mode in ("plain", "fp16", "fp16-clamp", "bf16"):
        for name, p in good.items():
            if name not in contents:
                continue
            meta, ts = contents[name]
            sha = C.sha256(p)
            out = os.path.join(w, mode, name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            flags = {"plain": [], "fp16-clamp": ["--fp16", "--fp16-clamp"]}.get(
                mode, ["--" + mode])
            r = C.run(args.bin, "convert", *flags, p, "-o", out)
            F.check(C.sha256(p) == sha, "%s: %s: input changed" % (mode, name))
            if not F.check(r.rc == 0 and os.path.isfile(out), "%s: %s: exit %d" % (
                    mode, name, r.rc), r.describe()):
                continue
            try:
                _n, ometa, ots, _d = S.read_st(out)
            except S.STError as e:
                F.fail("%s: %s: output is not valid safetensors" % (mode, name), str(e))
                continue
            try:
                with safe_open(out, framework="np") as f:
                    for k in f.keys():
                        if ots[k][0] != "BF16":
                            F.check(f.get_tensor(k).tobytes() == ots[k][2],
                                    "%s: %s: package reads %s differently" % (mode, name, k))
            except Exception as e:  # noqa: BLE001
                F.fail("%s: %s: the safetensors package refuses the output" % (mode, name),
                       str(e))
            F.check(sorted(ots) == sorted(ts), "%s: %s: names differ" % (mode, name),
                    "missing %s extra %s" % (sorted(set(ts) - set(ots)),
                                             sorted(set(ots) - set(ts))))
            if ometa != meta:
                notes.append("%s: %s: metadata %r became %r" % (mode, name, meta, ometa))
            for k, (dt, sh, b) in ts.items():
                if k not in ots:
                    continue
                odt, osh, ob = ots[k]
                F.check(osh == sh, "%s: %s: %s shape %s, expected %s" % (mode, name, k, osh, sh))
                if mode == "fp16" and dt == "F32" and S.f16_range_keep(np, b, len(sh)):
                    # FP16 cannot hold it: kept F32 byte for byte (README, "FP16 range")
                    kept_fp32 += 1
                    F.check(odt == "F32" and ob == b, "fp16: %s: %s (beyond FP16's range: %s) is "
                            "%s, expected its F32 bytes" % (name, k, S.f16_range_keep(np, b, len(sh)), odt))
                elif mode != "plain" and dt == "F32":
                    want_dt = "BF16" if mode == "bf16" else "F16"
                    if F.check(odt == want_dt, "%s: %s: %s is %s, expected %s" % (
                            mode, name, k, odt, want_dt)):
                        cmp = S.compare_bf16 if mode == "bf16" else S.compare_f16
                        d = cmp(np, ob, b, "%s %s" % (name, k))
                        F.check(not d, "%s: %s: %s values are not the RNE reference" % (
                            mode, name, k), d)
                else:
                    F.check(odt == dt and ob == b, "%s: %s: %s changed (%s -> %s)" % (
                        mode, name, k, dt, odt))
            if mode == "plain":
                F.check(os.path.getsize(out) <= os.path.getsize(p) + 64,
                        "plain: %s: output %d bytes, input %d" % (
                            name, os.path.getsize(out), os.path.getsize(p)))
            F.check(not [x for x in os.listdir(os.path.dirname(out)) if x.startswith(".")],
                    "%s: %s: a temporary file was left behind" % (mode, name))
    F.check(kept_fp32 >= 1, "fp16: some fixture tensor is beyond FP16's range (kept %d)"
            % kept_fp32)

    # ---- invalid -------------------------------------------------------------------------
    def hdr_file(h, data=b"", n_override=None, raw_header=None):
        js = raw_header if raw_header is not None else json.dumps(h).encode()
        js += b" " * ((-len(js)) % 8)
        n = len(js) if n_override is None else n_override
        return struct.pack("<Q", n) + js + data

    t16 = bytes(range(16))
    bad = {
        "header_past_end": hdr_file({"a": {"dtype": "F32", "shape": [4],
                                           "data_offsets": [0, 16]}}, t16, n_override=1 << 20),
        "not_object": hdr_file(None, raw_header=b"[1, 2, 3]"),
        "string_json": hdr_file(None, raw_header=b'"abc"'),
        "invalid_json": hdr_file(None, raw_header=b'{"a": {"dtype": "F32", '),
        "not_utf8": hdr_file(None, raw_header=b'{"a\xff": {"dtype": "F32", "shape": [4], '
                             b'"data_offsets": [0, 16]}}') + t16,
        "bad_dtype": hdr_file({"a": {"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}},
                              t16),
        "shape_offset_mismatch": hdr_file({"a": {"dtype": "F32", "shape": [2, 2],
                                                 "data_offsets": [0, 12]}}, t16[:12]),
        "overlap": hdr_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
                            t16 + t16[:8]),
        "gap": hdr_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                         "b": {"dtype": "F32", "shape": [4], "data_offsets": [20, 36]}},
                        t16 + t16 + b"\0" * 4),
        "data_longer": hdr_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                t16 + b"\0" * 8),
        "data_shorter": hdr_file({"a": {"dtype": "F32", "shape": [4],
                                        "data_offsets": [0, 16]}}, t16[:10]),
        "negative_dim": hdr_file({"a": {"dtype": "F32", "shape": [-1, 4],
                                        "data_offsets": [0, 16]}}, t16),
        "begin_after_end": hdr_file({"a": {"dtype": "F32", "shape": [0],
                                           "data_offsets": [16, 0]}}, t16),
        "shape_overflow": hdr_file({"a": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62, 16],
                                          "data_offsets": [0, 16]}}, t16),
        "metadata_not_strings": hdr_file({"__metadata__": {"epoch": 3},
                                          "a": {"dtype": "F32", "shape": [4],
                                                "data_offsets": [0, 16]}}, t16),
        "no_offsets": hdr_file({"a": {"dtype": "F32", "shape": [4]}}, t16),
        "five_bytes": b"\x08\x00\x00\x00\x00",
        "zero_header_len": struct.pack("<Q", 0),
    }
    bdir = os.path.join(w, "bad")
    os.makedirs(bdir)
    paths = {}
    for k, data in bad.items():
        paths[k] = os.path.join(bdir, k + ".safetensors")
        with open(paths[k], "wb") as f:
            f.write(data)
    # over the 100,000,000-byte header cap, in a file that really is that long
    big_n = 100_000_008
    p = os.path.join(bdir, "header_over_cap.safetensors")
    with open(p, "wb") as f:
        body = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        f.write(struct.pack("<Q", big_n) + body)
        left = big_n - len(body)
        chunk = b" " * (1 << 20)
        while left > 0:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    paths["header_over_cap"] = p
    for k, p in sorted(paths.items()):
        try:
            with safe_open(p, framework="np") as f:
                for key in f.keys():
                    f.get_tensor(key)
            notes.append("invalid: the safetensors package accepts %s" % k)
        except Exception:  # noqa: BLE001
            pass
        base = os.path.basename(p)
        sha = C.sha256(p)
        outdir = os.path.join(w, "bad_out", k)
        os.makedirs(outdir)
        r = C.run(args.bin, "convert", p, "-o", os.path.join(outdir, "out.safetensors"))
        F.check(r.rc == 1, "invalid: %s: convert exits %d, expected 1" % (k, r.rc), r.describe())
        if F.check(S.one_line(r), "invalid: %s: stderr is not one line" % k, r.describe()):
            F.check(base in r.err, "invalid: %s: the message does not name the file" % k,
                    r.err.strip())
        F.check(os.listdir(outdir) == [], "invalid: %s: output folder not empty: %s" % (
            k, os.listdir(outdir)))
        F.check(C.sha256(p) == sha, "invalid: %s: input changed" % k)
        r2 = C.run(args.bin, "inspect", "--json", p)
        C.check_inspect_json(F, r2.out, "invalid: %s: inspect --json" % k)
        F.check(r2.rc == 1 and S.one_line(r2), "invalid: %s: inspect does not exit 1 with one "
                "line" % k, r2.describe())
    os.remove(paths["header_over_cap"])
    shutil.rmtree(os.path.join(w, "bad_out"), ignore_errors=True)

    for n in notes:
        print("NOTE: " + n)
    return F.finish(NAME)


if __name__ == "__main__":
    C.run_main(NAME, main)
