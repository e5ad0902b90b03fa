#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md, one after the other (about 45 min on the 2-core machine).
# Results: printed, and JSON/PNG under artifacts/bench/. Loopback only; each script stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m bench.serving --requests "${BENCH_REQUESTS:-120}"
$PY -m bench.memory --requests 10000
$PY -m bench.soak --requests 20000 --concurrency 32
$PY -m bench.training
