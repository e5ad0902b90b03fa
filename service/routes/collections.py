"""Collection routes: stored image collections, ranked by an attribute and searched with difference arithmetic.

- rank:   scores cos(f(T), n(g(I))) over the whole collection (the same scores as /v1/rank);
- search: q = n(n(g(ref)) + sum_i w_i n(f(T_i))) (`models.difference.composed_query`), scored by
          cos(q, n(g(I))); the reference (the item, or stored copies of the photo: cosine >= 0.9999)
          is left out of its own results.
"""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from models.difference import composed_query, normalize
from service import schemas
from service.collections import Collection, CollectionGone
from service.dependencies import (
    IMAGE_FILES,
    Service,
    ServiceState,
    check_count,
    check_texts,
    embed_image_files,
    embed_image_strings,
    json_or_multipart_body,
    read_form,
    upload_bytes,
)
from service.errors import ApiError
from service.stores import STORE_NAME
from service.vector_index import Query

router = APIRouter(tags=["collections"])

SAME_PHOTO_COSINE = 0.9999
_OVERFETCH = 8  # extra hits fetched for a search, so that leaving out copies of the reference still fills top_k


def check_collection_name(name: str) -> None:
    if not STORE_NAME.match(name):
        raise ApiError(422, "invalid_collection_name", "collection names are 1-128 characters of letters, digits, '_', '.', '-'", "name")


def not_found(svc: ServiceState, name: str) -> ApiError:
    return ApiError(404, "collection_not_found", f"no collection named {name!r} for model {svc.encoder.model_id}", "name")


async def get_collection(svc: ServiceState, name: str) -> Collection:
    """The collection, up to date with Redis (or the replica's copy while Redis is down); 404 if none."""
    check_collection_name(name)
    coll = await svc.collections.get(name)
    if coll is None:
        raise not_found(svc, name)
    return coll


def check_top_k(svc: ServiceState, top_k: int) -> None:
    if top_k > svc.settings.collection_max_top_k:
        raise ApiError(422, "invalid_request", f"top_k is {top_k}, more than the limit of {svc.settings.collection_max_top_k}", "top_k")


def results(svc: ServiceState, coll: Collection, hits, sign: float = 1.0) -> schemas.CollectionResults:
    return schemas.CollectionResults(
        model=svc.encoder.model_id, collection=coll.name, count=len(coll.index),
        results=[schemas.CollectionHit(id=h.id, score=sign * h.score, metadata=h.metadata) for h in hits],
    )


# -- collections ---------------------------------------------------------------------------------
@router.put("/v1/collections/{name}", response_model=schemas.CollectionInfo, status_code=201,
            responses={200: {"model": schemas.CollectionInfo, "description": "the collection existed already (unchanged)"}})
async def create_collection(name: str, svc: Service, response: Response, req: schemas.CollectionRequest | None = None):
    """Create a collection for the served model (201); if it exists, it is left as it is (200)."""
    check_collection_name(name)
    try:
        coll, created = await svc.collections.create(name, svc.encoder.dim, (req.description if req else None) or "")
    except CollectionGone:
        raise ApiError(409, "collection_conflict", f"collection {name!r} was deleted while being created; retry", "name") from None
    if not created:
        response.status_code = 200
    return coll.info(svc.encoder.model_id, svc.encoder.fingerprint)


@router.get("/v1/collections", response_model=schemas.CollectionList)
async def list_collections(svc: Service):
    """Names of the served model's collections."""
    return schemas.CollectionList(model=svc.encoder.model_id, collections=await svc.collections.names())


@router.get("/v1/collections/{name}", response_model=schemas.CollectionInfo)
async def describe_collection(name: str, svc: Service):
    """A collection's model, dimension, item count and description."""
    return (await get_collection(svc, name)).info(svc.encoder.model_id, svc.encoder.fingerprint)


@router.delete("/v1/collections/{name}")
async def delete_collection(name: str, svc: Service):
    """Delete a collection and all its items (404 if there is none)."""
    check_collection_name(name)
    if not await svc.collections.delete(name):
        raise not_found(svc, name)
    return {"deleted": name}


@router.get("/v1/collections/{name}/count", response_model=schemas.CollectionCount)
async def count_items(name: str, svc: Service):
    """How many items the collection holds."""
    coll = await get_collection(svc, name)
    return schemas.CollectionCount(collection=coll.name, count=len(coll.index))


# -- items ---------------------------------------------------------------------------------------
ADD_BODY = json_or_multipart_body(schemas.AddItemsRequest, {
    "images": IMAGE_FILES,
    "ids": {"type": "array", "items": {"type": "string"}, "description": "one per image (default: the file name)"},
    "metadata": {"type": "array", "items": {"type": "string"}, "description": "one JSON object per image (optional)"},
})


def check_metadata(svc: ServiceState, metadata: list[dict | None]) -> None:
    for i, md in enumerate(metadata):
        if md is not None and len(json.dumps(md)) > svc.settings.max_metadata_bytes:
            raise ApiError(422, "metadata_too_large", f"metadata is larger than {svc.settings.max_metadata_bytes} bytes of JSON", "metadata", i)


def parse_metadata(text: str, index: int) -> dict | None:
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError:
        raise ApiError(422, "invalid_metadata", "metadata must be a JSON object", "metadata", index) from None
    if value is not None and not isinstance(value, dict):
        raise ApiError(422, "invalid_metadata", "metadata must be a JSON object", "metadata", index)
    return value


async def multipart_items(request: Request, svc: ServiceState) -> tuple[list[str], list[dict | None], list[bytes]]:
    """(ids, metadata, image bytes) of a multipart add: `images` files, `ids` and `metadata` fields."""
    form = await read_form(request, svc)
    images = form.getlist("images")
    if any(not isinstance(v, UploadFile) for v in images):
        raise ApiError(422, "invalid_request", "multipart 'images' parts must be files", "images")
    if not images:
        raise ApiError(422, "invalid_request", "no 'images' files in the multipart body", "images")
    check_count(images, "images", svc.settings.max_items)
    ids = [str(v) for v in form.getlist("ids")]
    if not ids:
        ids = [str(up.filename or "") for up in images]
    if len(ids) != len(images):
        raise ApiError(422, "invalid_request", f"{len(ids)} ids for {len(images)} images: give one id per image", "ids")
    raw_metadata = [str(v) for v in form.getlist("metadata")]
    if raw_metadata and len(raw_metadata) != len(images):
        raise ApiError(422, "invalid_request", f"{len(raw_metadata)} metadata fields for {len(images)} images", "metadata")
    metadata = [parse_metadata(t, i) for i, t in enumerate(raw_metadata)] or [None] * len(images)
    for i, item_id in enumerate(ids):
        try:
            schemas.CollectionItem(id=item_id, image="-")
        except ValueError:
            raise ApiError(422, "invalid_item_id", "item ids are 1-256 characters without control characters", "ids", i) from None
    data = [await upload_bytes(svc, up, "images", i) for i, up in enumerate(images)]
    return ids, metadata, data


@router.post("/v1/collections/{name}/items", response_model=schemas.AddItemsResponse, openapi_extra={"requestBody": ADD_BODY})
async def add_items(name: str, request: Request, svc: Service):
    """Embed and store images with the caller's ids and JSON metadata (an existing id is replaced).

    JSON `{"items": [{"id", "image", "metadata"?}]}` (images base64 / data URIs) or multipart
    (`images` files; `ids` fields, default the file names; `metadata` JSON fields).
    """
    check_collection_name(name)
    if not svc.stores.up:  # fail fast, before embedding anything
        raise svc.collections._unavailable(f"write (add to {name!r})")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        ids, metadata, files = await multipart_items(request, svc)
        strings = None
    else:
        req = schemas.AddItemsRequest.model_validate_json(await request.body())
        check_count(req.items, "items", svc.settings.max_items)
        ids, metadata = [it.id for it in req.items], [it.metadata for it in req.items]
        files, strings = None, [it.image for it in req.items]
    seen: set[str] = set()
    for i, item_id in enumerate(ids):
        if item_id in seen:
            raise ApiError(422, "duplicate_id", f"id {item_id!r} appears twice in the request", "ids", i)
        seen.add(item_id)
    check_metadata(svc, metadata)
    coll = await get_collection(svc, name)
    new = sum(1 for i in ids if coll.index.row_of(i) is None)
    if len(coll.index) + new > svc.settings.collection_max_items:
        raise ApiError(422, "collection_full", f"the collection would hold more than {svc.settings.collection_max_items} items", "items")
    if strings is not None:
        vectors = await embed_image_strings(svc, strings, "items")
    else:
        vectors = await embed_image_files(svc, files)
    try:
        await svc.collections.add(coll, ids, vectors, metadata)
    except CollectionGone:
        raise not_found(svc, name) from None
    return schemas.AddItemsResponse(collection=coll.name, added=len(ids), ids=ids, count=len(coll.index))


@router.get("/v1/collections/{name}/items", response_model=schemas.ItemList)
async def list_items(name: str, svc: Service, offset: int = 0, limit: int = 1000):
    """Item ids, oldest first, `limit` (at most 10,000) from `offset` (for paging and for resuming an index run)."""
    if offset < 0 or not 1 <= limit <= 10_000:
        raise ApiError(422, "invalid_request", "offset must be >= 0 and limit 1..10000", "limit")
    coll = await get_collection(svc, name)
    return schemas.ItemList(collection=coll.name, count=len(coll.index), offset=offset, ids=coll.index.ids(offset, limit))


@router.get("/v1/collections/{name}/items/{item_id:path}", response_model=schemas.ItemInfo)
async def read_item(name: str, item_id: str, svc: Service, embedding: bool = False):
    """An item's metadata (and, with `?embedding=true`, its normalised embedding)."""
    coll = await get_collection(svc, name)
    found = coll.index.get(item_id)
    if found is None:
        raise ApiError(404, "item_not_found", f"no item {item_id!r} in collection {name!r}", "item_id")
    vector, metadata = found
    return schemas.ItemInfo(id=item_id, metadata=metadata, embedding=vector.tolist() if embedding else None)


async def _delete(svc: ServiceState, name: str, ids: list[str]) -> schemas.DeleteItemsResponse:
    coll = await get_collection(svc, name)
    try:
        deleted = await svc.collections.remove(coll, ids)
    except CollectionGone:
        raise not_found(svc, name) from None
    return schemas.DeleteItemsResponse(collection=coll.name, deleted=deleted, count=len(coll.index))


@router.post("/v1/collections/{name}/items/delete", response_model=schemas.DeleteItemsResponse)
async def delete_items(name: str, req: schemas.DeleteItemsRequest, svc: Service):
    """Delete items by id (ids that are not there are ignored; `deleted` counts the others)."""
    check_count(req.ids, "ids", svc.settings.collection_max_top_k)
    return await _delete(svc, name, list(dict.fromkeys(req.ids)))


@router.delete("/v1/collections/{name}/items/{item_id:path}", response_model=schemas.DeleteItemsResponse)
async def delete_item(name: str, item_id: str, svc: Service):
    """Delete one item (404 if it is not there)."""
    response = await _delete(svc, name, [item_id])
    if not response.deleted:
        raise ApiError(404, "item_not_found", f"no item {item_id!r} in collection {name!r}", "item_id")
    return response


# -- rank and search ----------------------------------------------------------------------------
@router.post("/v1/collections/{name}/rank", response_model=schemas.CollectionResults)
async def rank_collection(name: str, req: schemas.CollectionRankRequest, svc: Service):
    """The whole collection ordered by the attribute: score cos(f(T), n(g(I))), highest first (or lowest, `ascending`)."""
    check_texts(svc, [req.attribute], "attribute")
    check_top_k(svc, req.top_k)
    coll = await get_collection(svc, name)
    text = normalize((await svc.engine.embed_texts([req.attribute]))[0])
    sign = -1.0 if req.ascending else 1.0
    view = coll.index.snapshot()
    allowed = coll.index.filter_mask(req.filter) if req.filter else None
    hits = (await svc.collections.search(coll, view, [Query(sign * text, req.top_k, allowed)]))[0]
    return results(svc, coll, hits, sign)


@router.post("/v1/collections/{name}/search", response_model=schemas.CollectionResults)
async def search_collection(name: str, req: schemas.CollectionSearchRequest, svc: Service):
    """Items like the reference (`image`, `item_id` or `text`), moved by the modifiers: q = n(n(ref) + sum w_i n(f(T_i)))."""
    given = [f for f in ("image", "item_id", "text") if getattr(req, f) is not None]
    if len(given) != 1:
        raise ApiError(422, "invalid_request", "give exactly one of 'image', 'item_id' and 'text' as the reference", "image")
    check_count(req.modifiers, "modifiers", svc.settings.max_modifiers)
    check_texts(svc, [m.text for m in req.modifiers], "modifiers")
    if req.text is not None:
        check_texts(svc, [req.text], "text")
    check_top_k(svc, req.top_k)
    coll = await get_collection(svc, name)
    excluded: tuple[int, ...] = ()
    if req.item_id is not None:
        found = coll.index.get(req.item_id)
        if found is None:
            raise ApiError(404, "item_not_found", f"no item {req.item_id!r} in collection {name!r}", "item_id")
        reference = found[0]
    elif req.image is not None:
        reference = (await embed_image_strings(svc, [req.image], "image", indexed=False))[0]
    else:
        reference = (await svc.engine.embed_texts([req.text]))[0]
    texts = [m.text for m in req.modifiers]
    modifiers = await svc.engine.embed_texts(texts) if texts else np.zeros((0, coll.dim), np.float32)
    query = composed_query(reference, modifiers, [m.weight for m in req.modifiers])
    view = coll.index.snapshot()
    if req.item_id is not None:
        row = coll.index.row_of(req.item_id)
        excluded = (row,) if row is not None else ()
    allowed = coll.index.filter_mask(req.filter) if req.filter else None
    is_photo = req.text is None
    k = req.top_k + (_OVERFETCH if is_photo else 0)
    hits = (await svc.collections.search(coll, view, [Query(query, k, allowed, excluded)]))[0]
    if is_photo:  # leave out stored copies of the reference photo
        ref = normalize(reference)
        kept = []
        for hit in hits:
            found = coll.index.get(hit.id)
            if found is None or float(found[0] @ ref) < SAME_PHOTO_COSINE:
                kept.append(hit)
        hits = kept
    return results(svc, coll, hits[: req.top_k])
