"""Where an image's preprocessing time goes, before and after, and what JPEG draft decoding changes.

    .venv/bin/python -m bench.preprocess [--bundle DIR] [--repeats 7]

Per image, in this process (min over `--repeats` passes, milliseconds), on three sets of real
photos: the 16 CUB photos the serving benchmark sends, 16 COCO photos, and the large photos
(shorter side >= 448, where JPEG draft decoding can reduce) of coco-mini and imagenet-samples.

- before: full decode, resize + crop (Pillow), normalise with float arithmetic per image
  (ToTensor + Normalize, what preprocess_images did before);
- after: decode (draft to >= margin x the model's side when PCCLIP_JPEG_DRAFT_MARGIN is set),
  the same resize + crop, one table lookup per channel for the whole batch
  (`models.preprocess.normalise`, bit-identical);
- draft parity: the large photos' embeddings through the bundle, draft vs full decode, with the
  export's parity gate (max |d| <= 1e-4, cosine >= 0.9999), for margins 1 and 2; and how many
  photos of the CUB evaluation images are large enough to be drafted at all.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.harness import DATA_DIR, DEFAULT_BUNDLE, ensure_bundle, sample_photos
from bench.serving import finish, machine_note
from models.images import decode_image
from models.preprocess import PreprocessConfig, _resize_crop, normalise


def _large_photos(limit: int = 24, side: int = 448) -> list[bytes]:
    found = []
    for pattern, root in (("*.jpg", DATA_DIR / "coco-mini"), ("*.JPEG", DATA_DIR / "imagenet-samples")):
        for p in sorted(root.rglob(pattern)):
            with Image.open(p) as im:
                if min(im.size) >= side:
                    found.append(p.read_bytes())
            if len(found) >= limit:
                return found
    return found


def _ms(fn, n_items: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / n_items


def _arithmetic_normalise(crops: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    return np.stack([np.ascontiguousarray(((np.asarray(c, np.float32) / np.float32(255.0) - mean) / std).transpose(2, 0, 1)) for c in crops])


def step_times(photos: list[bytes], cfg: PreprocessConfig, repeats: int, min_side: int | None) -> dict:
    n = len(photos)
    decoded = [decode_image(p) for p in photos]
    drafted = [decode_image(p, min_side=min_side) for p in photos] if min_side else decoded
    crops = [_resize_crop(im, cfg) for im in decoded]
    crops_after = [_resize_crop(im, cfg) for im in drafted]
    before = {
        "decode": _ms(lambda: [decode_image(p) for p in photos], n, repeats),
        "resize_crop": _ms(lambda: [_resize_crop(im, cfg) for im in decoded], n, repeats),
        "normalise": _ms(lambda: _arithmetic_normalise(crops, cfg), n, repeats),
    }
    after = {
        "decode": _ms(lambda: [decode_image(p, min_side=min_side) for p in photos], n, repeats) if min_side else before["decode"],
        "resize_crop": _ms(lambda: [_resize_crop(im, cfg) for im in drafted], n, repeats) if min_side else before["resize_crop"],
        "normalise": _ms(lambda: normalise(np.stack([np.asarray(c) for c in crops_after]), cfg), n, repeats),
    }
    same = bool(np.array_equal(_arithmetic_normalise(crops, cfg), normalise(np.stack([np.asarray(c) for c in crops]), cfg)))
    out = {"n": n, "sizes": sorted({Image.open(io.BytesIO(p)).size for p in photos})[:4], "table_bit_identical": same}
    for name, steps in (("before", before), ("after", after)):
        total = sum(steps.values())
        out[name] = {"ms": {k: round(v, 3) for k, v in steps.items()}, "total_ms": round(total, 3),
                     "share": {k: round(v / total, 3) for k, v in steps.items()}}
    out["speedup"] = round(out["before"]["total_ms"] / out["after"]["total_ms"], 2)
    return out


def draft_parity(encoder, photos: list[bytes], margin: float) -> dict:
    from training.export import embedding_parity, within_tolerance

    side = int(margin * max(encoder.preprocess_cfg.image_size))
    full = encoder.encode_images([decode_image(p) for p in photos])
    drafted_images = [decode_image(p, min_side=side) for p in photos]
    reduced = sum(d.size != decode_image(p).size for d, p in zip(drafted_images, photos))
    figures = embedding_parity(full, encoder.encode_images(drafted_images))
    return {"margin": margin, "min_side": side, "reduced": reduced, **figures, "within_gate": within_tolerance(figures)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--margin", type=float, default=2.0, help="draft margin for the 'after' step times")
    args = parser.parse_args(argv)
    from models.onnx_backend import load_bundle_encoder

    encoder = load_bundle_encoder(ensure_bundle(args.bundle), batch_size=16)
    cfg = encoder.preprocess_cfg
    side = int(args.margin * max(cfg.image_size))
    out: dict = {"machine_before": machine_note(), "draft_margin": args.margin}
    coco = sorted((DATA_DIR / "coco-mini" / "val2017").glob("*.jpg"))[:16]
    sets = {"cub": sample_photos(16), "coco": [p.read_bytes() for p in coco], "large": _large_photos()}
    for name, photos in sets.items():
        out[name] = step_times(photos, cfg, args.repeats, side)
        b, a = out[name]["before"], out[name]["after"]
        print(f"{name} ({out[name]['n']} photos, e.g. {out[name]['sizes'][0]}): before {b['total_ms']:.2f} ms/img {b['share']}, "
              f"after {a['total_ms']:.2f} ms/img {a['share']}: x{out[name]['speedup']}", flush=True)
    out["draft_parity"] = [draft_parity(encoder, sets["large"], m) for m in (1.0, 2.0)]
    for d in out["draft_parity"]:
        print(f"draft margin {d['margin']}: {d['reduced']}/{len(sets['large'])} large photos reduced; max|d| {d['max_abs_diff']:.2e}, "
              f"min cos {d['min_cosine']:.6f}, within the parity gate: {d['within_gate']}", flush=True)
    cub_root = DATA_DIR / "cub100" / "images"
    cub_sides = [min(Image.open(p).size) for p in sorted(cub_root.rglob("*.jpg"))]
    out["cub_images_draftable"] = {m: int(sum(s >= 2 * int(m * max(cfg.image_size)) for s in cub_sides)) for m in (1.0, 2.0)}
    out["cub_images"] = len(cub_sides)
    print(f"CUB evaluation photos a draft would reduce: {out['cub_images_draftable']} of {len(cub_sides)}")
    out["machine_after"] = machine_note()
    out["targets"] = [
        {"target": "table normalisation bit-identical to the arithmetic", "figure": all(out[k]["table_bit_identical"] for k in sets),
         "met": all(out[k]["table_bit_identical"] for k in sets)},
        {"target": "preprocessing of the serving benchmark's CUB photos faster", "figure": f"x{out['cub']['speedup']}", "met": out["cub"]["speedup"] > 1},
    ]
    print(json.dumps({k: out[k]["after"]["share"] for k in sets}))
    finish(out, "preprocess")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
