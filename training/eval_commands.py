"""`pcclip eval`: the paper's evaluation protocols, base model and PC-CLIP side by side.

    pcclip eval --model runs/pcclip/final.safetensors --out runs/pcclip/eval   # base: the model the run started from
    pcclip eval --model runs/pcclip/final.safetensors --base pcclip-mini:base --out eval/

Writes `report.json` (every number for both models), `summary.png` (bar chart per task) and
`ranked_strip.png` (reserved-class photos ranked by an attribute text).
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model against its base (difference, ranking, zero-shot, hints)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model to evaluate (a checkpoint, a spec)")
    p.add_argument("--base", help="the base model to compare with (default: the model the checkpoint's run started from, "
                   "a random initialisation rebuilt from the run's seed)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data", help="data root (default $PCCLIP_DATA or ../shared/data)")
    p.add_argument("--split-file", help="reserved classes (default training/splits/cub100_reserved.txt)")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the difference classification")
    p.add_argument("--pairs-per-seed", type=int, default=500)
    p.add_argument("--max-photos-per-class", type=int, help="limit test photos per class (small budgets)")
    p.add_argument("--max-classes", type=int, help="limit the classes: the reserved ones first (small budgets)")
    p.add_argument("--confused-pairs", type=int, default=5, help="most-confused class pairs that get hints")
    p.add_argument("--rank-text", default="a larger bird", help="attribute text of the ranked photo strip")
    p.add_argument("--cache-dir", help="image feature cache (default $PCCLIP_CACHE/features)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=run_eval)


def run_eval(args) -> int:
    import sys

    from models.loading import ModelLoadError
    from training.evaluate import run_evaluation

    try:
        report = run_evaluation(
            args.model, args.out, base=args.base, root=args.data, split_file=args.split_file, seeds=args.seeds,
            pairs_per_seed=args.pairs_per_seed, max_photos_per_class=args.max_photos_per_class,
            max_classes=args.max_classes, confused_pairs=args.confused_pairs, cache_dir=args.cache_dir,
            device=args.device, batch_size=args.batch_size, rank_text=args.rank_text,
        )
    except (ValueError, FileNotFoundError, ModelLoadError) as err:  # bad input: say what, no traceback
        print(f"pcclip eval: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report["summary"]["values"], indent=2))
    print(f"report: {args.out}/report.json; plots: {', '.join(report['plots'].values())}")
    return 0
