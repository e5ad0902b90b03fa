#!/usr/bin/env bash
# Reproduce the default model pcclip-mini from scratch: pairs -> base -> PC-CLIP -> evaluation ->
# models/weights/*.safetensors, docs/results/ (report, plots) and the README results table.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/pcclip reproduce "$@"
