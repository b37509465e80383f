#!/usr/bin/env python3
"""Peer for the INT4 benchmarks: onnxruntime's MatMulNBitsQuantizer, as a user runs it.

    peer_int4.py IN.onnx OUT.onnx [--method default|k_quant] [--block 32] [--asym]

Loads IN (with its external data), runs MatMulNBitsQuantizer(model, bits=4, block_size=BLOCK,
is_symmetric=not ASYM) with the method's config: `default` is DefaultWeightOnlyQuantConfig
(onnxruntime's C++ round-to-nearest kernel), `k_quant` is KQuantWeightOnlyQuantConfig (its
k-quant search, in numpy), both writing com.microsoft.MatMulNBits for MatMul weights; then saves
OUT with its tensors in OUT.data when IN had external data or is over protobuf's 2 GiB, as a
user would have to.
"""
import argparse
import logging
import os
import sys
import warnings


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--method", choices=("default", "k_quant"), default="default")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--asym", action="store_true")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        KQuantWeightOnlyQuantConfig, MatMulNBitsQuantizer)

    external = _had_external(a.inp)
    m = onnx.load(a.inp)
    cfg = KQuantWeightOnlyQuantConfig() if a.method == "k_quant" else None
    q = MatMulNBitsQuantizer(m, bits=4, block_size=a.block, is_symmetric=not a.asym,
                             algo_config=cfg)
    q.process()
    if external:
        q.model.save_model_to_file(a.out, use_external_data_format=True)
    else:
        onnx.save(q.model.model, a.out)
    return 0


def _had_external(path):
    import onnx
    m = onnx.load(path, load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
