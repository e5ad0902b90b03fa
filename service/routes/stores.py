"""Class-store routes: put, list, read and delete named class sets (Redis + per-replica cache)."""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.dependencies import Service, build_classes, check_store_name, get_store
from service.errors import ApiError
from service.stores import ClassStore

router = APIRouter(tags=["stores"])


def store_info(store: ClassStore) -> schemas.StoreInfo:
    return schemas.StoreInfo(**store.meta())


@router.put("/v1/stores/{name}", response_model=schemas.StoreInfo)
async def put_store(name: str, req: schemas.StoreRequest, svc: Service):
    """Compute the class embeddings (templates, hints, alpha applied) and keep them (Redis + cache)."""
    check_store_name(name, "name")
    if not svc.stores.up:  # fail fast, before encoding anything
        raise svc.stores._unavailable(f"write (put {name!r})")
    weights, templates, hints, alpha = await build_classes(svc, req.classes, req.templates, req.hints, req.alpha)
    store = ClassStore(
        name=name, classes=list(req.classes), templates=templates,
        hints=[{"a": h.a, "b": h.b, "text": h.text} for h in hints], alpha=alpha,
        embeddings=weights, model=svc.encoder.model_id, fingerprint=svc.encoder.fingerprint,
    )
    await svc.stores.put(store)
    return store_info(store)


@router.get("/v1/stores", response_model=schemas.StoreList)
async def list_stores(svc: Service):
    """Names of this model's stores (from Redis; from the in-process cache while Redis is down)."""
    names, _ = await svc.stores.names()
    return schemas.StoreList(model=svc.encoder.model_id, stores=names)


@router.get("/v1/stores/{name}", response_model=schemas.StoreInfo)
async def read_store(name: str, svc: Service):
    """A store's classes, templates, hints and alpha (not the embeddings)."""
    return store_info(await get_store(svc, name))


@router.delete("/v1/stores/{name}")
async def delete_store(name: str, svc: Service):
    """Delete a store (404 if there is none)."""
    check_store_name(name, "name")
    if not await svc.stores.delete(name):
        raise ApiError(404, "store_not_found", f"no class store named {name!r} for model {svc.encoder.model_id}", "name")
    return {"deleted": name}
