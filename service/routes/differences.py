"""Difference routes: rank images by an attribute, compare two images, explain how they differ."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from models.difference import attribute_scores, compare, compare_probability
from service import schemas
from service.dependencies import DEFAULT_TOP_K, Service, check_count, check_texts, embed_image_strings, top_k_of
from service.errors import ApiError
from service.image_requests import image_request_body, read_image_request
from service.vocabulary import difference_vocabulary

router = APIRouter(tags=["differences"])


@router.post("/v1/rank", response_model=schemas.RankResponse, openapi_extra=image_request_body(schemas.RankRequest))
async def rank(request: Request, svc: Service):
    """Images ordered by how much they have the attribute, highest score first (scores: cos(f(T), n(g(I)))).

    JSON (images as base64) or multipart (`images` files, `attribute` and `top_k` fields)."""
    req, inputs = await read_image_request(request, svc.settings, schemas.RankRequest)
    check_count(req.images, "images", svc.settings.max_items)
    check_texts(svc, [req.attribute], "attribute", indexed=False)
    images = await embed_image_strings(svc, inputs["images"], "images")
    text = (await svc.engine.embed_texts([req.attribute]))[0]
    scores = attribute_scores(images, text)
    order = np.argsort(-scores, kind="stable")[: top_k_of(req.top_k, len(scores), None)]
    return schemas.RankResponse(
        model=svc.encoder.model_id, attribute=req.attribute,
        ranking=[schemas.RankItem(index=int(i), score=float(scores[i])) for i in order],
    )


@router.post("/v1/compare", response_model=schemas.CompareResponse, openapi_extra=image_request_body(schemas.CompareRequest))
async def compare_images(request: Request, svc: Service):
    """Does `difference` describe how image a differs from image b? score = cos(f(T), d(a, b)).

    JSON (images as base64) or multipart (`image_a`, `image_b` files, `difference` field)."""
    req, inputs = await read_image_request(request, svc.settings, schemas.CompareRequest)
    check_texts(svc, [req.difference], "difference", indexed=False)
    pair = await embed_image_strings(svc, inputs["image_a"] + inputs["image_b"], ["image_a", "image_b"], indexed=False)
    text = (await svc.engine.embed_texts([req.difference]))[0]
    score = float(compare(pair[0], pair[1], text))
    cal = svc.encoder.calibration
    probability = float(compare_probability(score, float(cal.get("temperature", 0.1)), float(cal.get("bias", 0.0))))
    return schemas.CompareResponse(score=score, holds=score > 0, probability=probability, model=svc.encoder.model_id, calibration=cal)


@router.post("/v1/explain", response_model=schemas.ExplainResponse, openapi_extra=image_request_body(schemas.ExplainRequest))
async def explain(request: Request, svc: Service):
    """The texts that best describe how a differs from b (candidates, or the built-in vocabulary).

    JSON (images as base64) or multipart (`image_a`, `image_b` files, `candidates` fields, `top_k`)."""
    req, inputs = await read_image_request(request, svc.settings, schemas.ExplainRequest)
    if req.candidates is not None:
        if not req.candidates:
            raise ApiError(422, "invalid_request", "candidates must not be empty (leave it out for the built-in vocabulary)", "candidates")
        check_count(req.candidates, "candidates", svc.settings.max_classes)
        check_texts(svc, req.candidates, "candidates")
        texts, source = list(req.candidates), "candidates"
    else:
        texts, source = difference_vocabulary(req.subject or svc.settings.explain_subject), "built-in"
    pair = await embed_image_strings(svc, inputs["image_a"] + inputs["image_b"], ["image_a", "image_b"], indexed=False)
    text_embs = await svc.engine.embed_texts(texts)
    scores = compare(pair[0][None, :], pair[1][None, :], text_embs)
    order = np.argsort(-scores, kind="stable")[: top_k_of(req.top_k, len(texts), DEFAULT_TOP_K)]
    return schemas.ExplainResponse(
        differences=[schemas.Difference(text=texts[i], score=float(scores[i])) for i in order],
        model=svc.encoder.model_id, vocabulary=source,
    )
