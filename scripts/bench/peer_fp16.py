#!/usr/bin/env python3
"""Peer for the FP16 benchmark: onnxconverter-common's float16 conversion, as a user runs it.

    peer_fp16.py IN.onnx OUT.onnx

onnx.load (external data too), float16.convert_float_to_float16(model, keep_io_types=True) with
its defaults otherwise, onnx.save (external data beside OUT when over protobuf's 2 GiB limit).
"""
import sys
import warnings

import onnx
from onnxconverter_common import float16


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")  # it warns once per clamped tensor
    model = onnx.load(argv[0])
    model = float16.convert_float_to_float16(model, keep_io_types=True)
    big = model.ByteSize() >= 2**31 - 1
    onnx.save_model(model, argv[1], save_as_external_data=big)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
