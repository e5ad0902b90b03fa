#!/usr/bin/env bash
# Set up a fresh machine: Redis server (Debian package) and a virtual environment at .venv
# with the project and all its extras (serve + cpu ONNX Runtime + train + dev).
# Re-running it is cheap: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${PCCLIP_EXTRAS:-serve,cpu,train,dev}"
PYTHON="${PYTHON:-python3}"

# Debian packages: redis-server (class stores), docker-compose (v1: validates docker-compose.yml
# offline) and prometheus (promtool and the server the deployment tests scrape the API with).
APT_PACKAGES=""
command -v redis-server >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES redis-server"
command -v docker-compose >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES docker-compose"
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || APT_PACKAGES="$APT_PACKAGES prometheus"
if [ -n "$APT_PACKAGES" ]; then
  echo "[setup] installing$APT_PACKAGES"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
fi
# The Debian package starts a system-wide server on :6379 on some machines; tests start their own.

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
# torch first, pinned: the registry's unpinned torch drags in several GB of CUDA packages.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[${EXTRAS}]"
# The default model's ONNX bundle, which `pcclip serve` runs (built once, cached by weight fingerprint
# in ~/.cache/pcclip/bundles); without it the first `pcclip serve` builds it (about a minute here).
.venv/bin/python -c "from service.bundle_cache import resolve_bundle; print('[setup] default bundle:', resolve_bundle())" \
  || echo "[setup] the default bundle was not built; the first pcclip serve will try again"
echo "[setup] done: $(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__)')"
