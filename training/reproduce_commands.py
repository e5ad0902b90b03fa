"""`pcclip reproduce`: train and evaluate the default model pcclip-mini from scratch (training.default_model)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="train pcclip-mini's base and PC-CLIP weights from the real data, evaluate, write weights and docs")
    p.add_argument("--out", default="runs/reproduce", help="run directory (default runs/reproduce)")
    p.add_argument("--data", default="", help="data root (default ../shared/data)")
    p.add_argument("--n-pairs", type=int, default=None, help="PC-CLIP training pairs")
    p.add_argument("--pc-steps", type=int, default=None)
    p.add_argument("--base-steps", type=int, default=None)
    p.add_argument("--text-layers", type=int, default=None, help="last MiniLM layers PC-CLIP trains")
    p.add_argument("--clip-weight", type=float, default=None, help="CLIP loss weight mixed into PC-CLIP")
    p.add_argument("--short-fraction", type=float, default=None, help="share of PC-CLIP pairs phrased as a short comparative")
    p.add_argument("--pair-top-k", type=int, default=None, help="strongest claims per class pair in PC-CLIP texts (0: all)")
    p.add_argument("--probe-weight", type=float, default=None,
                   help="weight of the attribute-direction loss in PC-CLIP (0: the paper's loss alone)")
    p.add_argument("--awa2-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="the attribute-direction loss also on AwA2 pairs (a probe fitted on the seen animals' photos; default on)")
    p.add_argument("--anchor-weight", type=float, default=None,
                   help="PC-CLIP: weight of keeping everyday texts at their base embeddings (default 1; 0: off)")
    p.add_argument("--no-ablation", action="store_true", help="skip the extra PC-CLIP run with the paper's loss alone")
    p.add_argument("--max-photos-per-class", type=int, default=None, help="CUB test photos per class in the evaluation (default all)")
    p.add_argument("--awa2-pairs", type=int, default=None, help="AwA2 attribute-difference pairs in PC-CLIP")
    p.add_argument("--coco-pairs", type=int, default=None, help="COCO caption-difference pairs in PC-CLIP")
    p.add_argument("--install-run", default=None, metavar="DIR",
                   help="install a finished run directory (weights, docs, README table) without training")
    p.add_argument("--reevaluate-run", default=None, metavar="DIR",
                   help="re-run the everyday evaluations of a finished run on its weights and rewrite its report "
                        "and results (no training; combine with --install-run to install it)")
    p.add_argument("--install", action="store_true",
                   help="also replace the shipped weights (models/weights), docs/results and the README table "
                        "(default: everything stays in --out)")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    import logging

    from training.default_model import ReproduceConfig, reproduce

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.reevaluate_run:
        from training.default_model import reevaluate_everyday

        _print_targets(reevaluate_everyday(args.reevaluate_run))
    if args.install_run:
        from training.default_model import install_run

        install_run(args.install_run)
        print(f"installed {args.install_run}: models/weights, docs/results, README table")
    if args.reevaluate_run or args.install_run:
        return 0
    cfg = ReproduceConfig(out=args.out, data=args.data, install=args.install)
    cfg.ablation = not args.no_ablation
    for name in ("n_pairs", "pc_steps", "base_steps", "text_layers", "clip_weight", "probe_weight", "max_photos_per_class",
                 "awa2_pairs", "coco_pairs", "awa2_probe", "anchor_weight"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.short_fraction is not None:
        cfg.short_fraction = args.short_fraction
    if args.pair_top_k is not None:
        cfg.pair_top_k = args.pair_top_k or None
    _print_targets(reproduce(cfg))
    return 0


def _print_targets(report: dict) -> None:
    for t in report["targets"]:
        print(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['figure']}")
