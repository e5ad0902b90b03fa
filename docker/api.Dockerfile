# Slim CPU API image: serving dependencies only (`.[serve,cpu]`: FastAPI, uvicorn, Redis client,
# Prometheus client, onnxruntime), no torch. It serves an ONNX bundle from the model volume at
# /models (written by `pcclip export`; docker-compose.yml's `export` service fills it).
#   docker build -f docker/api.Dockerfile -t pcclip-api .
#   docker run -p 8000:8000 -v pcclip-models:/models:ro -e PCCLIP_REDIS_URL=redis://HOST:6379/0 pcclip-api

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pcclip ./pcclip
COPY models ./models
COPY service ./service
# The wheels of the project and its serving dependencies; the runtime stage installs only these.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve,cpu]"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "pcclip[serve,cpu]" \
 && groupadd --system --gid 10001 pcclip \
 && useradd --system --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin pcclip \
 && mkdir -p /models \
 && chown pcclip:pcclip /models
# Settings (every PCCLIP_* variable is a field of service.settings.Settings).
ENV PCCLIP_MODEL=/models/pcclip-mini \
    PCCLIP_HOST=0.0.0.0 \
    PCCLIP_PORT=8000 \
    PCCLIP_REDIS_URL=redis://redis:6379/0
USER 10001:10001
WORKDIR /home/pcclip
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PCCLIP_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["pcclip"]
CMD ["serve"]
