"""Classification route: zero-shot against classes given in the request or a stored class set."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from models.difference import softmax, zero_shot_logits
from service import schemas
from service.dependencies import DEFAULT_TOP_K, Service, build_classes, check_count, embed_image_strings, get_store, top_k_of
from service.errors import ApiError
from service.image_requests import image_request_body, read_image_request

router = APIRouter(tags=["classification"])


@router.post("/v1/classify", response_model=schemas.ClassifyResponse, openapi_extra=image_request_body(schemas.ClassifyRequest))
async def classify(request: Request, svc: Service):
    """Zero-shot classification against `classes` (templates, comparative-prompting hints, alpha) or a `store`.

    JSON (images as base64) or multipart (`images` files; `classes`, `templates` and `hints` repeated
    fields, each hint a JSON object; `store`, `alpha`, `top_k` fields)."""
    req, inputs = await read_image_request(request, svc.settings, schemas.ClassifyRequest)
    if (req.classes is None) == (req.store is None):
        raise ApiError(422, "invalid_request", "give exactly one of 'classes' and 'store'", "classes")
    check_count(req.images, "images", svc.settings.max_items)
    if req.store is not None:
        if req.templates or req.hints or req.alpha is not None:
            raise ApiError(422, "invalid_request", "templates, hints and alpha belong to the store (set them with PUT /v1/stores/{name})", "store")
        store = await get_store(svc, req.store)
        names, weights = store.classes, store.embeddings
    else:
        if not req.classes:
            raise ApiError(422, "invalid_request", "classes must not be empty", "classes")
        weights, _, _, _ = await build_classes(svc, req.classes, req.templates, req.hints, req.alpha)
        names = req.classes
    images = await embed_image_strings(svc, inputs["images"], "images")
    probs = softmax(zero_shot_logits(images, weights, svc.encoder.logit_scale))
    k = top_k_of(req.top_k, len(names), DEFAULT_TOP_K)
    results = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        results.append(schemas.ClassifyResult(labels=[schemas.Label(label=names[i], probability=float(row[i])) for i in order]))
    return schemas.ClassifyResponse(model=svc.encoder.model_id, results=results, store=req.store)
