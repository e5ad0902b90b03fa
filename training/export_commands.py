"""`pcclip export`: a model to an ONNX bundle the service loads without torch."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to an ONNX bundle (checked for parity with torch)")
    p.add_argument("--model", default="pcclip-mini", help="model spec (default: pcclip-mini)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantization (never the default)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p.add_argument("--data-dir", default=None, help="real photos for the parity check (default: ../shared/data or PCCLIP_DATA)")
    p.add_argument("--eval-report", default=None, help="evaluation summary JSON to record in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from training.export import DEFAULT_OPSET, ExportError, export_bundle

    try:
        result = export_bundle(
            args.model,
            args.out,
            opset=args.opset or DEFAULT_OPSET,
            quantize=args.quantize,
            data_dir=args.data_dir,
            eval_report=args.eval_report,
            overwrite=args.overwrite,
        )
    except ExportError as err:
        print(f"export failed: {err}")
        return 1
    m = result.manifest
    size = sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file())
    parity = m["parity"].get("fp32", m["parity"])
    print(f"bundle {result.path} ({size / 1e6:.1f} MB): model {m['model_id']}, dim {m['embed_dim']}, "
          f"{m['quantization'] or 'fp32'}, fingerprint {m['fingerprint']}")
    print("parity fp32: " + json.dumps({k: parity[k] for k in ("images", "texts")}))
    if m.get("quantization_report"):
        print("int8: " + json.dumps({k: m["parity"]["int8"][k] for k in ("images", "texts")}))
        print("int8 CUB zero-shot: " + json.dumps(m["quantization_report"]))
    return 0
