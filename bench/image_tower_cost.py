"""What the concept head costs at serving time: pcclip-mini's image tower with and without it.

Times the whole tower (trunk, MLP head, concept head) against the same tower with the concept head
left out, on the same batches, taking turns, and prints the ratio (median of rounds).
`.venv/bin/python -m bench.image_tower_cost [--batch 16] [--rounds 15]`
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    from models.loading import load_model

    visual = load_model("pcclip-mini").model.visual.eval()
    pixels = torch.randn(args.batch, 3, 224, 224)

    def with_concepts():
        return visual(pixels)

    def without_concepts():
        return visual.head(visual.features(pixels))

    ratios = []
    with torch.inference_mode():
        for fn in (with_concepts, without_concepts):
            fn()  # warm up
        for _ in range(args.rounds):
            times = {}
            for fn in (with_concepts, without_concepts):
                t0 = time.perf_counter()
                fn()
                times[fn.__name__] = time.perf_counter() - t0
            ratios.append(times["with_concepts"] / times["without_concepts"])
    print(f"image tower, batch {args.batch}, {args.rounds} rounds: with / without the concept head = "
          f"{statistics.median(ratios):.3f} (median; range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
