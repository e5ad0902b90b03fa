# Training image: torch 2.13.0 with the `train` extra (open_clip, transformers, the packaged
# pretrained encoders, onnx) and onnxruntime (`cpu` extra: the export's parity check runs the
# bundle). It runs `pcclip pairs`, `pcclip train` (under torchrun for several GPUs), `pcclip eval`
# and `pcclip export`. PyPI's Linux torch wheel is the CUDA build (~2.5 GB with its CUDA packages);
# for a CPU-only image (~200 MB of torch; compose's `export` service builds it so) pass
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# or put the CPU wheel into docker/wheels/ (builds without that index).
#   docker build -f docker/train.Dockerfile -t pcclip-train .
#   docker run --gpus all -v "$PWD/../shared/data:/data:ro" -v pcclip-runs:/runs pcclip-train \
#       torchrun --nproc-per-node 4 -m pcclip train --device cuda --pairs /runs/pairs/train.jsonl --out /runs/pcclip-mini

FROM python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned, from the chosen index, or from a wheel in docker/wheels/ (a local CPU build
# wins over PyPI's CUDA build of the same version); then the project resolves against it.
RUN --mount=type=bind,source=docker/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --find-links /tmp/wheels --index-url "${TORCH_INDEX_URL}" \
      --extra-index-url https://pypi.org/simple "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pcclip ./pcclip
COPY models ./models
COPY service ./service
COPY training ./training
# Editable: training reads data files next to its code (training/splits/).
RUN pip install --no-cache-dir -e ".[train,cpu]" \
 && groupadd --system --gid 10001 pcclip \
 && useradd --system --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin pcclip \
 && mkdir -p /models /runs /data /cache \
 && chown pcclip:pcclip /models /runs /cache
# PCCLIP_DATA: the data root (mount ../shared/data here); PCCLIP_CACHE: image feature cache.
ENV PCCLIP_DATA=/data \
    PCCLIP_CACHE=/cache
USER 10001:10001
WORKDIR /runs
VOLUME ["/models", "/runs", "/cache"]
ENTRYPOINT ["pcclip"]
CMD ["train", "--help"]
