"""One exact search pass, this checkout's `ExactIndex.search` against another commit's, on the same matrix.

The other commit's `service/vector_index.py` is read with `git show REF:...` and given this
checkout's matrix (n random unit vectors of size 384, float32); the two searches alternate, 7
rounds per batch size (1 and 4 queries, top 18, one row left out), and must return the same ids.
Prints the medians and their ratio (this / other), with the load average before and after.

    .venv/bin/python -m bench.search_pass_ab --ref b511477 --n 1000000     # at nice 0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import REPO_ROOT


def _other_module(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:service/vector_index.py"], capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout
    path = Path(tempfile.mkdtemp(prefix="pcclip-ab-")) / "vector_index_other.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("vector_index_other", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the commit to compare with (e.g. main)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    from service.vector_index import ExactIndex, Query

    other = _other_module(args.ref)
    dim, rng = 384, np.random.default_rng(0)
    this = ExactIndex(dim, "float32", capacity=args.n)
    for start in range(0, args.n, 50_000):
        count = min(50_000, args.n - start)
        this.upsert([f"v{i}" for i in range(start, start + count)], rng.standard_normal((count, dim), dtype=np.float32), [None] * count)
    that = other.ExactIndex(dim, "float32", capacity=1)
    view = this.snapshot()
    that._view = other._View(view.vectors, view.alive, view.ids, view.metadata, view.size)  # the same matrix
    that._row = this._row
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for batch in (1, 4):
        q = rng.standard_normal((batch, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        mine, theirs = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            a = this.search([Query(v, 18, None, (5,)) for v in q])
            mine.append(time.perf_counter() - started)
            started = time.perf_counter()
            b = that.search([other.Query(v, 18, None, (5,)) for v in q])
            theirs.append(time.perf_counter() - started)
            assert [[h.id for h in hits] for hits in a] == [[h.id for h in hits] for hits in b]
        print(json.dumps({"n": args.n, "queries": batch, "ref": args.ref, "ref_ms": round(float(np.median(theirs)) * 1000, 1),
                          "this_ms": round(float(np.median(mine)) * 1000, 1), "ratio": round(float(np.median(mine) / np.median(theirs)), 2)}))
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
