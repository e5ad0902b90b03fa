"""Static int8 for the image tower of a bundle: speed and embedding cosine against fp32 (issue 14).

    .venv/bin/python scripts/experiments/static_int8_image.py [--bundle DIR] [--conv-only]

Quantizes `image.onnx` with `onnxruntime.quantization.quantize_static` (QDQ, per-channel int8
weights, uint8 activations), calibrated on 48 CUB photos (one per class), and compares it with
fp32 on 64 other CUB photos: cosine of the embeddings (min / mean) and images/s at batch 8 (3
rounds in turns). `--conv-only` quantizes the convolutions only, with percentile calibration.
Writes into a temporary directory; not part of the product.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bench.harness import DATA_DIR
    from models.onnx_backend import load_bundle_encoder, session_options
    from service.bundle_cache import resolve_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="bundle directory (default: the default model's cached bundle)")
    parser.add_argument("--conv-only", action="store_true")
    args = parser.parse_args()
    bundle = Path(args.bundle or resolve_bundle("pcclip-mini"))
    enc = load_bundle_encoder(bundle, verify=False)
    classes = sorted(p for p in (DATA_DIR / "cub100" / "images").iterdir() if p.is_dir())
    calib = enc.preprocess([sorted(c.glob("*.jpg"))[1].read_bytes() for c in classes[:48]])
    test = enc.preprocess([sorted(c.glob("*.jpg"))[2].read_bytes() for c in classes[:64]])

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": calib[i : i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        started = time.perf_counter()
        quant_pre_process(str(bundle / "image.onnx"), str(pre), skip_symbolic_shape=True)
        extra = dict(op_types_to_quantize=["Conv"], calibrate_method=CalibrationMethod.Percentile) if args.conv_only else {}
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **extra)
        print(f"quantized in {time.perf_counter() - started:.0f} s")
        fp32 = ort.InferenceSession(str(bundle / "image.onnx"), session_options(), providers=["CPUExecutionProvider"])
        int8 = ort.InferenceSession(str(out), session_options(), providers=["CPUExecutionProvider"])
        a, b = fp32.run(None, {"pixels": test})[0], int8.run(None, {"pixels": test})[0]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"cosine int8 vs fp32 over {len(test)} photos: min {cos.min():.4f}, mean {cos.mean():.4f}")
        x = test[:8]
        for r in range(3):
            for name, session in (("fp32", fp32), ("int8", int8)):
                t, n = time.perf_counter(), 0
                while time.perf_counter() - t < 2:
                    session.run(None, {"pixels": x})
                    n += 1
                print(f"round {r + 1} {name}: {8 * n / (time.perf_counter() - t):.1f} images/s")


if __name__ == "__main__":
    main()
