#!/usr/bin/env python3
"""Peer for the INT8 benchmarks: onnxruntime's dynamic quantization, as a user runs it.

    peer_int8.py IN.onnx OUT.onnx

onnxruntime.quantization.quantize_dynamic(IN, OUT, weight_type=QuantType.QInt8,
per_channel=True), its defaults otherwise (it quantizes the weights of MatMul, Gemm, Conv, Gather
and others it knows, and rewrites the graph to integer kernels: DynamicQuantizeLinear +
MatMulInteger / ConvInteger). External data beside OUT when the model is over protobuf's 2 GiB.
"""
import logging
import os
import sys
import warnings


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    from onnxruntime.quantization import QuantType, quantize_dynamic
    big = os.path.getsize(argv[0]) >= 2**31 - 1
    quantize_dynamic(argv[0], argv[1], weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=big)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
