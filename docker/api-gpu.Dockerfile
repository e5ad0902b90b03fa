# GPU API image: the same service with onnxruntime-gpu (`.[serve,gpu]`) on a CUDA 12 + cuDNN 9
# runtime base. The bundle's sessions take the CUDA execution provider when the container sees a
# GPU (`docker run --gpus all`, or compose's `gpu` profile) and fall back to the CPU provider,
# with a warning in the log, when it does not.
#   docker build -f docker/api-gpu.Dockerfile -t pcclip-api-gpu .
#   docker run --gpus all -p 8000:8000 -v pcclip-models:/models:ro pcclip-api-gpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pcclip ./pcclip
COPY models ./models
COPY service ./service
RUN pip install --no-cache-dir ".[serve,gpu]" \
 && rm -rf /src \
 && groupadd --system --gid 10001 pcclip \
 && useradd --system --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin pcclip \
 && mkdir -p /models \
 && chown pcclip:pcclip /models
ENV PCCLIP_MODEL=/models/pcclip-mini \
    PCCLIP_HOST=0.0.0.0 \
    PCCLIP_PORT=8000 \
    PCCLIP_REDIS_URL=redis://redis:6379/0
USER 10001:10001
WORKDIR /home/pcclip
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PCCLIP_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["pcclip"]
CMD ["serve"]
