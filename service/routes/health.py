"""Health routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.dependencies import Service

router = APIRouter(tags=["health"])


@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)  # HEAD-based health checks; one operation in the schema
async def healthz():
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: Service):
    """Model loaded (200) or not (503); Redis reachable or not; execution provider.

    Public (no key), so it shows state only: no Redis address, no error text (those go to the log).
    """
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
        "redis": {"up": stores.up, "cached_stores": len(stores.cache)},
        "queues": {"text": svc.engine.text_batcher.pending_items, "image": svc.engine.image_batcher.pending_items},
        "text_cache": len(svc.engine.text_cache),
        "collections": {"cached": len(svc.collections.cache), "items": sum(len(c.index) for c in svc.collections.collections()),
                        "loaded_in_s": svc.collections_loaded_in_s},
    }


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(svc: Service):
    """Prometheus text exposition."""
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
