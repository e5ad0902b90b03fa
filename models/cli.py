"""`pcclip embed` and `pcclip info`: the models core from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed images and texts with a model and print their similarities")
    p.add_argument("--model", default=None, help="model spec (default: pcclip-mini)")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--text", action="append", default=[], help="text (repeatable)")
    p.add_argument("--json", action="store_true", help="print embeddings as JSON instead of a table")
    p.set_defaults(handler=cmd_embed)

    p = sub.add_parser("info", help="print what a model spec loads to")
    p.add_argument("--model", default=None, help="model spec (default: pcclip-mini)")
    p.set_defaults(handler=cmd_info)


def cmd_embed(args) -> int:
    import numpy as np

    from models.loading import DEFAULT_MODEL, load_encoder

    if not args.image and not args.text:
        raise SystemExit("give at least one --image or --text")
    enc = load_encoder(args.model or DEFAULT_MODEL)
    images = enc.encode_images([Path(p).read_bytes() for p in args.image]) if args.image else np.zeros((0, enc.dim), np.float32)
    texts = enc.encode_texts(args.text) if args.text else np.zeros((0, enc.dim), np.float32)
    if args.json:
        print(json.dumps({
            "model": enc.model_id, "dim": enc.dim,
            "image_embeddings": images.tolist(), "text_embeddings": texts.tolist(),
        }))
        return 0
    print(f"model {enc.model_id} ({enc.backend}, dim {enc.dim})")
    if len(images) and len(texts):
        sims = images @ texts.T
        for i, path in enumerate(args.image):
            print(f"{Path(path).name}:")
            for j in np.argsort(-sims[i]):
                print(f"  {sims[i, j]:+.4f}  {args.text[j]}")
    else:
        for label, emb in [*zip(args.image, images), *zip(args.text, texts)]:
            print(f"{label}: norm {np.linalg.norm(emb):.4f}, first values {np.round(emb[:4], 4).tolist()}")
    return 0


def cmd_info(args) -> int:
    from models.loading import DEFAULT_MODEL, load_encoder

    enc = load_encoder(args.model or DEFAULT_MODEL)
    print(json.dumps(enc.info(), indent=2))
    return 0
