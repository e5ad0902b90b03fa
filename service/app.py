"""The FastAPI application: `create_app(settings=None, encoder=None)`.

The lifespan hook loads the encoder (`models.loading.load_encoder`) unless one is given: by default
the model's ONNX bundle (`service.bundle_cache.resolve_bundle`: the spec itself if it is a bundle
directory, else the cached export, built once), or with `PCCLIP_BACKEND=torch` the torch model,
both behind the same `Encoder` interface. It starts the batchers and connects the class stores to
Redis. The routes live in `service.routes` (one `APIRouter` per area, sharing the app's
`ServiceState` through the `service.dependencies.Service` dependency); they are documented at /docs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models.encoders import Encoder
from models.images import ImageDecodeError
from service import schemas
from service.batcher import QueueFull
from service.collections import CollectionRegistry
from service.dependencies import ServiceState, image_bytes  # noqa: F401  (image_bytes: public helper, re-exported)
from service.errors import ApiError, error_response
from service.inference import InferenceEngine
from service.metrics import ServiceMetrics
from service.routes import ROUTERS
from service.settings import Settings
from service.stores import StoreRegistry, StoreUnavailable, TooManyStores

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
# Swagger UI and ReDoc assets, served from the pinned fastapi-offline package (no CDN: /docs works air-gapped)
DOCS_STATIC_PATH = "/docs-static"


# -- ASGI middleware ---------------------------------------------------------------------------
class BodyLimitMiddleware:
    """The request body, bounded, and the request cancelled when its client goes away.

    413 for bodies over `max_bytes` (by Content-Length up front, and by counting streamed bodies);
    408 when the body has not fully arrived `timeout_s` after the request started (slow senders).
    Once the body is read, the route runs as a task while this waits for the client's disconnect:
    if the client goes away first, the task is cancelled, so queued work (tower batches not yet
    started, the next pieces of a class set) is dropped instead of computed for nobody.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float = 60.0, metrics: ServiceMetrics | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)
        self.metrics = metrics

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
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            reading = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({reading}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if not done:
                reading.cancel()
                return await error_response(408, "body_timeout", f"the request body did not arrive within {self.timeout_s:g} s")(scope, receive, send)
            message = reading.result()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await too_large(scope, receive, send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        content_type = dict(scope.get("headers") or []).get(b"content-type")
        if content_type is not None and (problem := multipart_problem(content_type, chunks)) is not None:
            return await error_response(400, "invalid_multipart", problem)(scope, receive, send)
        replayed = False
        disconnected = asyncio.Event()

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        handling = asyncio.ensure_future(self.app(scope, replay, send))
        watching = asyncio.ensure_future(receive())  # the next message after the body is the disconnect
        try:
            await asyncio.wait({handling, watching}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handling.cancel()
            watching.cancel()
            raise
        if handling.done():
            watching.cancel()
            return handling.result()
        if watching.result().get("type") == "http.disconnect":
            disconnected.set()
            handling.cancel()
            if self.metrics is not None:
                self.metrics.cancelled.inc()
        await asyncio.wait({handling})
        if not handling.cancelled():
            return handling.result()


def multipart_problem(content_type: bytes, chunks: list[bytes]) -> str | None:
    """Why a multipart/form-data body (media type matched in any case) is incomplete, or None.

    The parser returns the parts it found in a truncated or empty body without complaint, so a cut
    upload would look like a smaller request; it must end with the closing boundary.
    """
    media_type, params = parse_options_header(content_type)
    if media_type.lower() != b"multipart/form-data":
        return None
    boundary = params.get(b"boundary")
    if not boundary:
        return "multipart/form-data needs a boundary parameter in Content-Type"
    if not any(chunks):
        return "the multipart body is empty"
    need = len(boundary) + 64  # the closing delimiter, then at most a short epilogue
    tail = b"".join(c[-need:] for c in chunks[-need:])[-need:]
    if b"--" + boundary + b"--" not in tail:
        return "the multipart body has no closing boundary (truncated upload?)"
    return None


class AuthMiddleware:
    """API keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`): 401 missing, 403 wrong.

    With keys configured every route but health, metrics and the docs needs one; with
    `public_reads` only the store and collection writes (PUT/DELETE /v1/stores/..., adding and
    deleting collections and items) do.
    """

    def __init__(self, app, keys: list[str], public_reads: bool):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public_reads = public_reads

    def _needs_key(self, scope) -> bool:
        path, method = scope["path"], scope["method"]
        if not self.keys or path in OPEN_PATHS or path.startswith(DOCS_STATIC_PATH + "/"):
            return False
        is_store_write = path.startswith("/v1/stores/") and method in ("PUT", "DELETE", "POST", "PATCH")
        is_collection_write = path.startswith("/v1/collections/") and (
            method in ("PUT", "DELETE", "PATCH") or (method == "POST" and not path.endswith(("/rank", "/search"))))
        return is_store_write or is_collection_write or not self.public_reads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._needs_key(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if key is None and auth[:7].lower() == b"bearer ":
            key = auth[7:]
        key = key.strip(b" \t") if key is not None else None  # the same for both headers (as the keys are read)
        if not key:
            response = error_response(401, "missing_api_key", "an API key is required (Authorization: Bearer KEY or X-API-Key)",
                                      headers={"WWW-Authenticate": "Bearer"})
        elif not any(hmac.compare_digest(key, k) for k in self.keys):
            response = error_response(403, "invalid_api_key", "the API key is not valid")
        else:
            return await self.app(scope, receive, send)
        return await response(scope, receive, send)


class InternalErrorMiddleware:
    """An exception a route lets through: logged once, answered with the JSON 500.

    Not re-raised: Starlette's outermost middleware would log it again, and so would the server.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracking(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                await error_response(500, "internal_error", "internal server error")(scope, receive, send)


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
        route, started, status = self._route(scope), time.perf_counter(), 499  # 499: the client went away first

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - started)


# errors the request models raise themselves (PydanticCustomError types), answered under their own code
SCHEMA_ERROR_CODES = {"token_ids_not_supported"}


def _validation_error(errors: list[dict]) -> JSONResponse:
    err = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": "invalid"}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return error_response(422, "invalid_json", f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
    field_path = [str(p) for p in loc if not isinstance(p, int)]
    index = next((p for p in loc if isinstance(p, int)), None)
    field_name = ".".join(field_path) or None
    where = f"{field_name}: " if field_name else ""
    code = err["type"] if err.get("type") in SCHEMA_ERROR_CODES else "invalid_request"
    return error_response(422, code, f"{where}{err.get('msg', 'invalid value')}", field_name, index)


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

    @app.exception_handler(TooManyStores)
    async def _too_many_stores(request, exc: TooManyStores):
        return error_response(409, "too_many_stores", f"this model already has {exc.limit} class stores (PCCLIP_MAX_STORES); delete one first", "name")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):  # errors outside InternalErrorMiddleware; the server logs them
        return error_response(500, "internal_error", "internal server error")


# -- the app -------------------------------------------------------------------------------------
def image_threads(settings: Settings) -> int:
    """ONNX Runtime threads of one image tower call: PCCLIP_ORT_THREADS, else this process's cores
    shared by the `image_workers` calls that run at once."""
    explicit = int(os.environ.get("PCCLIP_ORT_THREADS", "0") or 0)
    return explicit if explicit > 0 else max(1, len(os.sched_getaffinity(0)) // settings.image_workers)


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """Build the service. `encoder` (already loaded) skips loading `settings.model`."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    svc = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if encoder is None:
            from models.loading import load_encoder, parse_spec

            spec = settings.model
            if settings.backend == "onnx":
                from service.bundle_cache import resolve_bundle

                spec = await asyncio.to_thread(resolve_bundle, spec, settings.bundle_cache_dir)
            log.info("loading model %s", spec)
            extra = {"max_batch_tokens": settings.max_batch_tokens, "image_intra_op_threads": image_threads(settings)} \
                if parse_spec(spec).kind == "bundle" else {}
            svc.encoder = await asyncio.to_thread(load_encoder, spec, device=settings.device, batch_size=settings.max_batch_size, **extra)
        else:
            svc.encoder = encoder
        enc = svc.encoder
        svc.engine = InferenceEngine(enc, settings, metrics)
        svc.engine.start()
        svc.stores = StoreRegistry(settings.redis_url, enc.model_id, enc.fingerprint, metrics,
                                   timeout_s=settings.redis_timeout_s, check_interval_s=settings.redis_check_interval_s,
                                   sync_interval_s=settings.store_sync_interval_s, max_stale_s=settings.store_max_stale_s,
                                   cache_size=settings.store_cache_size, max_stores=settings.max_stores)
        await svc.stores.start()
        svc.collections = CollectionRegistry(svc.stores, enc.model_id, enc.fingerprint, metrics,
                                             dtype=settings.collection_dtype, log_length=settings.collection_log_length,
                                             index=settings.collection_index)
        svc.collections_loaded_in_s = await svc.collections.start()
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

    app = FastAPIOffline(
        static_url=DOCS_STATIC_PATH,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the public validator
        title="pcclip",
        version="0.1.0",
        description="Difference-aware CLIP embeddings (PC-CLIP): embed, rank by attribute, compare, classify, explain.",
        lifespan=lifespan,
        responses={400: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}},
    )
    app.state.svc = svc
    install_error_handlers(app)
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s, metrics=metrics)
    app.add_middleware(AuthMiddleware, keys=settings.api_keys, public_reads=settings.public_reads)
    for router in ROUTERS:
        app.include_router(router)
    # route templates for the metrics' labels: the app's own routes (docs) and each router's routes
    # (FastAPI keeps an included router as one lazy entry of app.routes, without a path)
    labelled_routes = [r for r in app.routes if hasattr(r, "path")] + [r for router in ROUTERS for r in router.routes]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes_of=lambda: labelled_routes)
    return app
