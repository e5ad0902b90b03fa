"""`pcclip train`: PC-CLIP finetuning (pairs) or base CLIP training (captions), one command.

    pcclip train --model pcclip-mini:base --pairs pairs.jsonl --out runs/pcclip      # PC-CLIP (paper defaults)
    pcclip train --preset base --model pcclip-mini:untrained --captions coco --captions cub --out runs/base
    torchrun --nproc_per_node=4 -m pcclip train --device cuda ...                     # several GPUs

Settings come from, highest first: the command-line flags, `--config FILE.json` (TrainConfig
fields), the `--preset`, the TrainConfig defaults. `--resume` continues the run in `--out` from
its `last.pt` with the settings saved in its `config.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# flag -> (TrainConfig field, argparse kwargs); every default is None so that unset flags fall through
_FLAGS = {
    "--model": ("model", dict(help="model spec to start from (pcclip-mini:base, ViT-B-32:/path/w.pt, a checkpoint, ...)")),
    "--pairs": ("pairs", dict(action="append", metavar="JSONL", help="pair records (repeatable)")),
    "--captions": ("captions", dict(action="append", metavar="SOURCE", help="image-caption source: coco[:train], cub[:train], or FILE.jsonl (repeatable)")),
    "--data": ("data", dict(help="data root the image paths are relative to (default $PCCLIP_DATA or ../shared/data)")),
    "--exclude-classes": ("exclude_classes", dict(metavar="SPLIT_FILE", help="classes kept out of training (default training/splits/cub100_reserved.txt; 'none' to keep all)")),
    "--train": ("train", dict(metavar="PARTS", help="comma list of parts that train: text-transformer, text, text-last:N, text-head, image-head, logit-scale")),
    "--temperature": ("temperature", dict(type=lambda v: v if v == "model" else float(v), help="temperature T (logit scale 1/T): fixed, or the start of a learned one (pc-clip preset: 1, as the official code; base preset and 'model': the model's logit scale)")),
    "--learn-temperature": ("learn_temperature", dict(action="store_const", const=True, help="learn the logit scale")),
    "--clip-weight": ("clip_weight", dict(type=float, help="weight of the CLIP loss on image-caption pairs mixed into PC-CLIP")),
    "--probe-weight": ("probe_weight", dict(type=float, help="weight of the attribute-direction loss (training.attribute_probe; needs attribute-writer pairs of CUB photos; 0 = off)")),
    "--wise-alpha": ("wise_alpha", dict(type=float, help="WiSE-FT: saved weights = alpha * finetuned + (1 - alpha) * base (1 = off)")),
    "--epochs": ("epochs", dict(type=int)),
    "--max-steps": ("max_steps", dict(type=int, help="stop after this many optimizer steps")),
    "--batch-size": ("batch_size", dict(type=int, help="pairs (or captions) per step per process")),
    "--caption-batch-size": ("caption_batch_size", dict(type=int)),
    "--lr": ("lr", dict(type=float)),
    "--weight-decay": ("weight_decay", dict(type=float)),
    "--warmup-steps": ("warmup_steps", dict(type=int)),
    "--grad-clip": ("grad_clip", dict(type=float, help="max gradient norm (0: off)")),
    "--seed": ("seed", dict(type=int)),
    "--device": ("device", dict(help="auto, cpu, cuda")),
    "--cache-dir": ("cache_dir", dict(help="image feature cache (default $PCCLIP_CACHE/features or ~/.cache/pcclip/features)")),
    "--save-every": ("save_every", dict(type=int, metavar="STEPS", help="also write last.pt every N steps (resume point)")),
    "--save-epochs": ("save_epochs", dict(action="store_const", const=True, help="also keep epoch-NNN.safetensors after each complete epoch (every weight; large for big models)")),
    "--feature-batch-size": ("feature_batch_size", dict(type=int)),
}


def register(sub) -> None:
    p = sub.add_parser("train", help="train PC-CLIP (pairs) or a base CLIP (captions)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", choices=("pc-clip", "base"), default=None, help="defaults for a PC-CLIP or a base run (default pc-clip)")
    p.add_argument("--config", help="JSON file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    for flag, (_, kwargs) in _FLAGS.items():
        p.add_argument(flag, default=None, **kwargs)
    p.set_defaults(handler=run_train)


def build_config(args) -> "TrainConfig":
    """Merge flags, --config, the preset and the defaults into a TrainConfig."""
    from training.data import RESERVED_SPLIT
    from training.trainer import PRESETS, TrainConfig

    values: dict = {}
    out = Path(args.out)
    if args.resume and (out / "config.json").exists():
        values.update(json.loads((out / "config.json").read_text()))
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    preset = args.preset or values.get("preset") or "pc-clip"
    merged = {**PRESETS[preset], **values, "preset": preset}
    for flag, (name, _) in _FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            merged[name] = value
    if merged.get("temperature") == "model":
        merged["temperature"] = None
    merged["out"] = str(out)
    if "exclude_classes" not in merged:
        merged["exclude_classes"] = str(RESERVED_SPLIT) if RESERVED_SPLIT.exists() else None
    if merged.get("exclude_classes") in ("none", ""):
        merged["exclude_classes"] = None
    if not merged.get("model"):
        raise SystemExit("pcclip train: --model is required")
    unknown = set(merged) - {f.name for f in TrainConfig.__dataclass_fields__.values()}
    if unknown:
        raise SystemExit(f"pcclip train: unknown config fields {sorted(unknown)}")
    return TrainConfig(**merged)


def run_train(args) -> int:
    import sys

    from models.loading import ModelLoadError
    from training.trainer import train

    cfg = build_config(args)
    try:
        summary = train(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError, ModelLoadError) as err:  # bad input: say what, no traceback
        print(f"pcclip train: error: {err}", file=sys.stderr)
        return 2
    if summary.get("final"):
        print(json.dumps(summary, indent=2))
    return 0
