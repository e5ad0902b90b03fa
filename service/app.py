"""The FastAPI application: `create_app(settings=None, encoder=None)`.

The lifespan hook loads the encoder (`models.loading.load_encoder(settings.model)`: an ONNX bundle
or a torch model behind the same `Encoder` interface) unless one is given, starts the batchers and
connects the class stores to Redis. Routes are documented at /docs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models.difference import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPLATES,
    Hint,
    attribute_scores,
    class_embeddings,
    compare,
    compare_probability,
    comparative_prompting,
    softmax,
    zero_shot_logits,
)
from models.encoders import Encoder
from models.images import ImageDecodeError
from service import schemas
from service.batcher import QueueFull
from service.errors import ApiError, error_response
from service.inference import InferenceEngine
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.stores import STORE_NAME, ClassStore, StoreRegistry, StoreUnavailable
from service.vocabulary import difference_vocabulary

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
DEFAULT_TOP_K = 5


@dataclass
class ServiceState:
    """What the routes share: settings, metrics, and (once loaded) the encoder, engine and stores."""

    settings: Settings
    metrics: ServiceMetrics
    encoder: Encoder | None = None
    engine: InferenceEngine | None = None
    stores: StoreRegistry | None = None
    loaded_at: float | None = None


# -- ASGI middleware ---------------------------------------------------------------------------
class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length up front, and by counting streamed bodies."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, "body_too_large", f"request body exceeds the limit of {self.max_bytes} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_bytes:
                    return await too_large(scope, receive, send)
            except ValueError:
                return await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
        # Read the (possibly chunked) body here, counting, then replay it to the app.
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await too_large(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class AuthMiddleware:
    """API keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`): 401 missing, 403 wrong.

    With keys configured every route but health, metrics and the docs needs one; with
    `public_reads` only the store writes (PUT/DELETE /v1/stores/...) do.
    """

    def __init__(self, app, keys: list[str], public_reads: bool):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public_reads = public_reads

    def _needs_key(self, scope) -> bool:
        path, method = scope["path"], scope["method"]
        if not self.keys or path in OPEN_PATHS:
            return False
        is_store_write = path.startswith("/v1/stores/") and method in ("PUT", "DELETE", "POST", "PATCH")
        return is_store_write or not self.public_reads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._needs_key(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if key is None and auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
        if not key:
            response = error_response(401, "missing_api_key", "an API key is required (Authorization: Bearer KEY or X-API-Key)",
                                      headers={"WWW-Authenticate": "Bearer"})
        elif not any(hmac.compare_digest(key, k) for k in self.keys):
            response = error_response(403, "invalid_api_key", "the API key is not valid")
        else:
            return await self.app(scope, receive, send)
        return await response(scope, receive, send)


class MetricsMiddleware:
    """Counts requests by route template and status, and observes their latency."""

    def __init__(self, app, metrics: ServiceMetrics, routes_of):
        self.app = app
        self.metrics = metrics
        self.routes_of = routes_of

    def _route(self, scope) -> str:
        for route in self.routes_of():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, started, status = self._route(scope), time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - started)


# -- input helpers -----------------------------------------------------------------------------
def image_bytes(value: str, field: str, index: int | None, max_bytes: int) -> bytes:
    """A request's image string (base64 or data URI) -> the file's bytes, or a 4xx ApiError."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_image", "image is empty", field, index)
    text = value.strip()
    if text[:8].lower().startswith(("http://", "https://", "ftp://", "file:/")):
        raise ApiError(422, "image_url_not_supported", "image URLs are not fetched: send the file as base64 or a data URI", field, index)
    if text[:5].lower() == "data:":
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header.lower():
            raise ApiError(422, "invalid_data_uri", "a data URI must look like data:image/png;base64,...", field, index)
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes + 3:
        raise ApiError(413, "image_too_large", f"image is larger than the limit of {max_bytes} bytes", field, index)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            data = base64.urlsafe_b64decode(text) if set(text) & set("-_") else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise ApiError(422, "invalid_base64", "image is not valid base64 (nor a base64 data URI)", field, index) from None
    if not data:
        raise ApiError(422, "invalid_image", "image is empty", field, index)
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"image is {len(data)} bytes, more than the limit of {max_bytes}", field, index)
    return data


def _validation_error(errors: list[dict]) -> JSONResponse:
    err = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": "invalid"}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return error_response(422, "invalid_json", f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
    field_path = [str(p) for p in loc if not isinstance(p, int)]
    index = next((p for p in loc if isinstance(p, int)), None)
    field_name = ".".join(field_path) or None
    where = f"{field_name}: " if field_name else ""
    return error_response(422, "invalid_request", f"{where}{err.get('msg', 'invalid value')}", field_name, index)


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes `{"error": {...}}`; bad input is 4xx, never 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request, exc: RequestValidationError):
        return _validation_error(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request, exc: ValidationError):
        return _validation_error(exc.errors())

    @app.exception_handler(ImageDecodeError)
    async def _image_error(request, exc: ImageDecodeError):
        status = 413 if exc.code == "image_too_large" else 422
        return error_response(status, exc.code, str(exc), getattr(exc, "field", None) or "images", exc.index)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, exc: QueueFull):
        return error_response(503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request, exc: StoreUnavailable):
        return error_response(503, "store_unavailable", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", "internal server error")


# -- the app -------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the service. `encoder` (already loaded) skips loading `settings.model`."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    svc = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if encoder is None:
            from models.loading import load_encoder

            log.info("loading model %s", settings.model)
            svc.encoder = await asyncio.to_thread(load_encoder, settings.model, device=settings.device, batch_size=settings.max_batch_size)
        else:
            svc.encoder = encoder
        enc = svc.encoder
        svc.engine = InferenceEngine(enc, settings, metrics)
        svc.engine.start()
        svc.stores = StoreRegistry(settings.redis_url, enc.model_id, enc.fingerprint, metrics,
                                   timeout_s=settings.redis_timeout_s, check_interval_s=settings.redis_check_interval_s)
        await svc.stores.start()
        metrics.model_info.info({k: str(v) for k, v in enc.info().items()})
        metrics.model_loaded.set(1)
        svc.loaded_at = time.time()
        log.info("serving %s (%s on %s, dim %d)", enc.model_id, enc.backend, enc.provider, enc.dim)
        try:
            yield
        finally:
            await svc.stores.stop()
            await svc.engine.stop()
            metrics.model_loaded.set(0)

    app = FastAPI(
        title="pcclip",
        version="0.1.0",
        description="Difference-aware CLIP embeddings (PC-CLIP): embed, rank by attribute, compare, classify, explain.",
        lifespan=lifespan,
        responses={400: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}},
    )
    app.state.svc = svc
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, keys=settings.api_keys, public_reads=settings.public_reads)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes_of=lambda: app.routes)

    # -- helpers bound to this app ---------------------------------------------------------
    def check_count(items: list, what: str, limit: int) -> None:
        if len(items) > limit:
            raise ApiError(422, "too_many_items", f"{len(items)} {what}, more than the limit of {limit} per request", what)

    def check_texts(texts: list[str], field_name: str) -> None:
        for i, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                raise ApiError(422, "text_too_long", f"text has {len(text)} characters, more than the limit of {settings.max_text_chars}", field_name, i)

    async def embed_image_strings(values: list[str], fields: list[str] | str, indexed: bool = True) -> np.ndarray:
        names = fields if isinstance(fields, list) else [fields] * len(values)
        data = [image_bytes(v, names[i], i if indexed else None, settings.max_image_bytes) for i, v in enumerate(values)]
        try:
            return await svc.engine.embed_images(data)
        except ImageDecodeError as err:
            err.field = names[err.index] if err.index is not None else names[0]
            if not indexed:
                err.index = None
            raise

    async def build_classes(classes: list[str], templates: list[str] | None, hints: list[schemas.Hint] | None, alpha: float | None) -> tuple[np.ndarray, list[str], list[Hint], float]:
        check_count(classes, "classes", settings.max_classes)
        check_texts(classes, "classes")
        if len(set(classes)) != len(classes):
            raise ApiError(422, "duplicate_class", "class names must be distinct", "classes")
        templates = list(templates) if templates else list(DEFAULT_TEMPLATES)
        check_count(templates, "templates", settings.max_templates)
        check_texts(templates, "templates")
        for i, t in enumerate(templates):
            try:
                t.format("x")
            except (IndexError, KeyError, ValueError):
                raise ApiError(422, "invalid_template", "a template may contain one '{}' where the class name goes (and no other braces)", "templates", i) from None
        hint_objs = [Hint(h.a, h.b, h.text) for h in hints or []]
        check_count(hint_objs, "hints", settings.max_classes)
        known = set(classes)
        for i, h in enumerate(hint_objs):
            for name in (h.a, h.b):
                if name not in known:
                    raise ApiError(422, "unknown_hint_class", f"hint names class {name!r}, which is not among the classes", "hints", i)
            if len(h.text) > settings.max_text_chars:
                raise ApiError(422, "text_too_long", f"hint text is longer than {settings.max_text_chars} characters", "hints", i)
        alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
        loop = asyncio.get_running_loop()

        def encode_via_engine(texts: list[str]) -> np.ndarray:  # runs in a worker thread
            # in pieces of one batch: a class set larger than the queue limit must not be refused as "overloaded"
            step = settings.max_batch_size
            parts = [asyncio.run_coroutine_threadsafe(svc.engine.embed_texts(list(texts[i : i + step])), loop).result()
                     for i in range(0, len(texts), step)]
            return np.concatenate(parts) if parts else np.zeros((0, svc.encoder.dim), dtype=np.float32)

        def compute() -> np.ndarray:
            w = class_embeddings(classes, encode_via_engine, templates)
            if hint_objs:
                w = comparative_prompting(classes, w, hint_objs, encode_via_engine([h.text for h in hint_objs]), alpha=alpha)
            return w

        return await asyncio.to_thread(compute), templates, hint_objs, alpha

    async def get_store(name: str) -> ClassStore:
        if not STORE_NAME.match(name):
            raise ApiError(422, "invalid_store_name", "store names are 1-128 characters of letters, digits, '_', '.', '-'", "store")
        store = await svc.stores.get(name)
        if store is None:
            raise ApiError(404, "store_not_found", f"no class store named {name!r} for model {svc.encoder.model_id}", "store")
        return store

    def store_info(store: ClassStore) -> schemas.StoreInfo:
        return schemas.StoreInfo(**store.meta())

    def top_k_of(top_k: int | None, n: int, default: int | None) -> int:
        k = top_k if top_k is not None else (default or n)
        return max(1, min(int(k), n))

    # -- health -------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz():
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        """Model loaded (200) or not (503); Redis reachable or not; execution provider."""
        enc = svc.encoder
        if enc is None or svc.loaded_at is None:
            return JSONResponse({"status": "loading", "model": None, "redis": None}, status_code=503)
        stores = svc.stores
        return {
            "status": "ready",
            "model": enc.model_id,
            "fingerprint": enc.fingerprint,
            "backend": enc.backend,
            "provider": enc.provider,
            "dim": enc.dim,
            "info": enc.info(),
            "redis": {"up": stores.up, "url": stores._safe_url(), "error": stores.last_error, "cached_stores": len(stores.cache)},
            "queues": {"text": svc.engine.text_batcher.pending_items, "image": svc.engine.image_batcher.pending_items},
            "text_cache": len(svc.engine.text_cache),
        }

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics():
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- embeddings ---------------------------------------------------------------------------
    embed_body = {
        "required": True,
        "content": {
            "application/json": {"schema": schemas.EmbedRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "texts": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
    }

    @app.post("/v1/embed", response_model=schemas.EmbedResponse, tags=["embeddings"], openapi_extra={"requestBody": embed_body})
    async def embed(request: Request):
        """L2-normalised embeddings of texts and images: JSON (images as base64 / data URIs) or multipart files."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=settings.max_items, max_fields=settings.max_items)
            except StarletteHTTPException:
                raise
            except Exception as err:  # malformed multipart
                raise ApiError(400, "invalid_multipart", f"cannot parse the multipart body: {err}") from None
            texts = [str(t) for t in form.getlist("texts") if isinstance(t, str)]
            uploads = [f for f in form.getlist("images") if not isinstance(f, str)]
            if any(isinstance(v, str) for v in form.getlist("images")):
                raise ApiError(422, "invalid_request", "multipart 'images' parts must be files", "images")
            check_count(uploads, "images", settings.max_items)
            check_count(texts, "texts", settings.max_items)
            check_texts(texts, "texts")
            data = []
            for i, up in enumerate(uploads):
                blob = await up.read()
                if len(blob) > settings.max_image_bytes:
                    raise ApiError(413, "image_too_large", f"image is {len(blob)} bytes, more than the limit of {settings.max_image_bytes}", "images", i)
                if not blob:
                    raise ApiError(422, "invalid_image", "image is empty", "images", i)
                data.append(blob)
            try:
                image_embs = await svc.engine.embed_images(data)
            except ImageDecodeError as err:
                err.field = "images"
                raise
        else:
            req = schemas.EmbedRequest.model_validate_json(await request.body())
            texts = req.texts or []
            check_count(texts, "texts", settings.max_items)
            check_count(req.images or [], "images", settings.max_items)
            check_texts(texts, "texts")
            image_embs = await embed_image_strings(req.images or [], "images")
        text_embs = await svc.engine.embed_texts(texts)
        return schemas.EmbedResponse(
            model=svc.encoder.model_id, dim=svc.encoder.dim,
            text_embeddings=text_embs.tolist(), image_embeddings=image_embs.tolist(),
        )

    @app.post("/v1/embeddings", response_model=schemas.OpenAIEmbeddingsResponse, tags=["embeddings"])
    async def openai_embeddings(req: schemas.OpenAIEmbeddingsRequest):
        """OpenAI-compatible text embeddings (`encoding_format` float or base64)."""
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise ApiError(422, "invalid_request", "input must not be empty", "input")
        check_count(texts, "input", settings.max_items)
        check_texts(texts, "input")
        embs = await svc.engine.embed_texts(texts)
        ids = svc.encoder.tokenize(texts)
        tokens = int((ids != getattr(svc.encoder.tokenizer, "pad_id", 0)).sum())
        data = []
        for i, e in enumerate(embs):
            value = base64.b64encode(e.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else e.tolist()
            data.append(schemas.OpenAIEmbedding(index=i, embedding=value))
        return schemas.OpenAIEmbeddingsResponse(data=data, model=svc.encoder.model_id, usage=schemas.OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))

    # -- differences --------------------------------------------------------------------------
    @app.post("/v1/rank", response_model=schemas.RankResponse, tags=["differences"])
    async def rank(req: schemas.RankRequest):
        """Images ordered by how much they have the attribute, highest score first (scores: cos(f(T), n(g(I))))."""
        check_count(req.images, "images", settings.max_items)
        check_texts([req.attribute], "attribute")
        images = await embed_image_strings(req.images, "images")
        text = (await svc.engine.embed_texts([req.attribute]))[0]
        scores = attribute_scores(images, text)
        order = np.argsort(-scores, kind="stable")[: top_k_of(req.top_k, len(scores), None)]
        return schemas.RankResponse(
            model=svc.encoder.model_id, attribute=req.attribute,
            ranking=[schemas.RankItem(index=int(i), score=float(scores[i])) for i in order],
        )

    @app.post("/v1/compare", response_model=schemas.CompareResponse, tags=["differences"])
    async def compare_images(req: schemas.CompareRequest):
        """Does `difference` describe how image a differs from image b? score = cos(f(T), d(a, b))."""
        check_texts([req.difference], "difference")
        pair = await embed_image_strings([req.image_a, req.image_b], ["image_a", "image_b"], indexed=False)
        text = (await svc.engine.embed_texts([req.difference]))[0]
        score = float(compare(pair[0], pair[1], text))
        cal = svc.encoder.calibration
        probability = float(compare_probability(score, float(cal.get("temperature", 0.1)), float(cal.get("bias", 0.0))))
        return schemas.CompareResponse(score=score, holds=score > 0, probability=probability, model=svc.encoder.model_id, calibration=cal)

    @app.post("/v1/explain", response_model=schemas.ExplainResponse, tags=["differences"])
    async def explain(req: schemas.ExplainRequest):
        """The texts that best describe how a differs from b (candidates, or the built-in vocabulary)."""
        if req.candidates is not None:
            if not req.candidates:
                raise ApiError(422, "invalid_request", "candidates must not be empty (leave it out for the built-in vocabulary)", "candidates")
            check_count(req.candidates, "candidates", settings.max_classes)
            check_texts(req.candidates, "candidates")
            texts, source = list(req.candidates), "candidates"
        else:
            texts, source = difference_vocabulary(settings.explain_subject), "built-in"
        pair = await embed_image_strings([req.image_a, req.image_b], ["image_a", "image_b"], indexed=False)
        text_embs = await svc.engine.embed_texts(texts)
        scores = compare(pair[0][None, :], pair[1][None, :], text_embs)
        order = np.argsort(-scores, kind="stable")[: top_k_of(req.top_k, len(texts), DEFAULT_TOP_K)]
        return schemas.ExplainResponse(
            differences=[schemas.Difference(text=texts[i], score=float(scores[i])) for i in order],
            model=svc.encoder.model_id, vocabulary=source,
        )

    # -- classification -----------------------------------------------------------------------
    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, tags=["classification"])
    async def classify(req: schemas.ClassifyRequest):
        """Zero-shot classification against `classes` (templates, comparative-prompting hints, alpha) or a `store`."""
        if (req.classes is None) == (req.store is None):
            raise ApiError(422, "invalid_request", "give exactly one of 'classes' and 'store'", "classes")
        check_count(req.images, "images", settings.max_items)
        if req.store is not None:
            if req.templates or req.hints or req.alpha is not None:
                raise ApiError(422, "invalid_request", "templates, hints and alpha belong to the store (set them with PUT /v1/stores/{name})", "store")
            store = await get_store(req.store)
            names, weights = store.classes, store.embeddings
        else:
            if not req.classes:
                raise ApiError(422, "invalid_request", "classes must not be empty", "classes")
            weights, _, _, _ = await build_classes(req.classes, req.templates, req.hints, req.alpha)
            names = req.classes
        images = await embed_image_strings(req.images, "images")
        probs = softmax(zero_shot_logits(images, weights, svc.encoder.logit_scale))
        k = top_k_of(req.top_k, len(names), DEFAULT_TOP_K)
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results.append(schemas.ClassifyResult(labels=[schemas.Label(label=names[i], probability=float(row[i])) for i in order]))
        return schemas.ClassifyResponse(model=svc.encoder.model_id, results=results, store=req.store)

    # -- stores -------------------------------------------------------------------------------
    @app.put("/v1/stores/{name}", response_model=schemas.StoreInfo, tags=["stores"])
    async def put_store(name: str, req: schemas.StoreRequest):
        """Compute the class embeddings (templates, hints, alpha applied) and keep them (Redis + cache)."""
        if not STORE_NAME.match(name):
            raise ApiError(422, "invalid_store_name", "store names are 1-128 characters of letters, digits, '_', '.', '-'", "name")
        if not svc.stores.up:  # fail fast, before encoding anything
            raise svc.stores._unavailable(f"write (put {name!r})")
        weights, templates, hints, alpha = await build_classes(req.classes, req.templates, req.hints, req.alpha)
        store = ClassStore(
            name=name, classes=list(req.classes), templates=templates,
            hints=[{"a": h.a, "b": h.b, "text": h.text} for h in hints], alpha=alpha,
            embeddings=weights, model=svc.encoder.model_id, fingerprint=svc.encoder.fingerprint,
        )
        await svc.stores.put(store)
        return store_info(store)

    @app.get("/v1/stores", response_model=schemas.StoreList, tags=["stores"])
    async def list_stores():
        """Names of this model's stores (from Redis; from the in-process cache while Redis is down)."""
        names, _ = await svc.stores.names()
        return schemas.StoreList(model=svc.encoder.model_id, stores=names)

    @app.get("/v1/stores/{name}", response_model=schemas.StoreInfo, tags=["stores"])
    async def read_store(name: str):
        """A store's classes, templates, hints and alpha (not the embeddings)."""
        return store_info(await get_store(name))

    @app.delete("/v1/stores/{name}", tags=["stores"])
    async def delete_store(name: str):
        """Delete a store (404 if there is none)."""
        if not STORE_NAME.match(name):
            raise ApiError(422, "invalid_store_name", "store names are 1-128 characters of letters, digits, '_', '.', '-'", "name")
        if not await svc.stores.delete(name):
            raise ApiError(404, "store_not_found", f"no class store named {name!r} for model {svc.encoder.model_id}", "name")
        return {"deleted": name}

    return app
