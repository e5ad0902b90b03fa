"""`pcclip pairs`: write difference-text pairs (JSONL, the shared pair-record contract)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "pairs", help="write difference texts for image pairs (JSONL)",
        description="Sample image pairs and write how the first differs from the second, one JSON "
                    "record a line. CUB pairs from --split train leave out the reserved evaluation "
                    "classes unless told otherwise.")
    p.add_argument("--writer", choices=("attributes", "llm", "captions"), default="attributes")
    p.add_argument("--data", default=None, help="shared data root (default $PCCLIP_DATA or ../shared/data)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--n", type=int, default=1000, help="number of pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="photo split (CUB train/test; COCO train2017/val2017)")
    p.add_argument("--dataset", choices=("cub", "coco"), default="cub",
                   help="image source (the attributes writer needs cub)")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--exclude-reserved", dest="classes", action="store_const", const="exclude",
                         help="leave out the reserved classes (default for --split train)")
    classes.add_argument("--only-reserved", dest="classes", action="store_const", const="only",
                         help="only the reserved classes (evaluation pairs)")
    classes.add_argument("--all-classes", dest="classes", action="store_const", const="all",
                         help="all 100 CUB classes (default for --split test)")
    p.add_argument("--reserved", default=None,
                   help="class split file (default training/splits/cub100_reserved.txt)")
    p.add_argument("--top-k", type=int, default=3,
                   help="attributes writer: choose among the k strongest differences of a pair")
    llm = p.add_argument_group("llm writer (any OpenAI-compatible chat-completions endpoint)")
    llm.add_argument("--llm-base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (env PCCLIP_LLM_BASE_URL)")
    llm.add_argument("--llm-model", default=None, help="model name (env PCCLIP_LLM_MODEL); key from env PCCLIP_LLM_API_KEY")
    llm.add_argument("--llm-prompt", default=None, help="prompt template with {T1} and {T2}")
    llm.add_argument("--llm-concurrency", type=int, default=8)
    llm.add_argument("--llm-max-tokens", type=int, default=None)
    llm.add_argument("--llm-temperature", type=float, default=None)
    llm.add_argument("--llm-cache", default="runs/llm_cache.sqlite", help="response cache (SQLite)")
    p.set_defaults(handler=run_pairs)


def _class_mode(args: argparse.Namespace) -> str:
    return args.classes or ("exclude" if args.split == "train" else "all")


def build_writer(args: argparse.Namespace):
    """The writer and a short description of what it samples from."""
    from training.data import (RESERVED_SPLIT, AttributeTable, CubDataset, default_data_dir,
                               load_class_split, load_coco_captions)
    from training.pairs.base import CocoCaptionSource, CubCaptionSource

    root = default_data_dir() if args.data is None else Path(args.data)
    if args.writer == "attributes" and args.dataset != "cub":
        raise SystemExit("pcclip pairs: the attributes writer needs --dataset cub")
    if args.dataset == "coco":
        if args.classes in ("only", "exclude"):
            raise SystemExit("pcclip pairs: reserved classes apply to CUB only")
        images = load_coco_captions(root, args.split)
        source, what = CocoCaptionSource(images), f"{len(images)} COCO photos"
    else:
        mode = _class_mode(args)
        reserved = load_class_split(args.reserved or RESERVED_SPLIT)
        dataset = CubDataset(root, exclude_classes=reserved if mode == "exclude" else (),
                             only_classes=reserved if mode == "only" else None)
        table = AttributeTable.from_cub(root)
        what = f"{len(dataset.classes)} CUB classes ({mode} reserved: {len(reserved)})"
        if args.writer == "attributes":
            from training.pairs.attributes import AttributePairWriter

            return AttributePairWriter(dataset, table, args.split, top_k=args.top_k), what
        source = CubCaptionSource(dataset, table, args.split)
    if args.writer == "captions":
        from training.pairs.captions import CaptionPairWriter

        return CaptionPairWriter(source), what
    from training.pairs.llm import ChatClient, LLMConfig, LLMPairWriter

    try:
        config = LLMConfig.from_env(base_url=args.llm_base_url, model=args.llm_model,
                                    prompt=args.llm_prompt, concurrency=args.llm_concurrency,
                                    max_tokens=args.llm_max_tokens, temperature=args.llm_temperature,
                                    cache_path=args.llm_cache)
    except ValueError as err:
        raise SystemExit(f"pcclip pairs: {err}") from None
    return LLMPairWriter(source, ChatClient(config), progress=False), what


def run_pairs(args: argparse.Namespace) -> int:
    import random
    import time

    from tqdm import tqdm

    from training.pairs.base import write_jsonl

    if args.n < 1:
        raise SystemExit("pcclip pairs: --n must be at least 1")
    writer, what = build_writer(args)
    start = time.perf_counter()
    records = tqdm(writer.pairs(args.n, random.Random(args.seed)), total=args.n, desc="pairs",
                   unit="pair", disable=None)
    count = write_jsonl(records, args.out)
    summary = (f"wrote {count} pairs to {args.out} (writer {args.writer}, {args.split} split, {what}, "
               f"seed {args.seed}) in {time.perf_counter() - start:.1f}s")
    if args.writer == "llm":
        stats = writer.client.stats
        summary += (f"; llm: {stats.requests} requests, {stats.cache_hits} cached, {stats.retries} "
                    f"retries, {stats.failed} failed, {writer.dropped} answers dropped by cleaning")
    print(summary)
    return 0 if count == args.n else 1
