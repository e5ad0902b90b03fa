"""Embedding routes: /v1/embed (JSON or multipart) and the OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request

from service import schemas
from service.dependencies import Service, check_count, check_texts, embed_image_strings
from service.errors import ApiError
from service.image_requests import image_request_body, read_image_request

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embed", response_model=schemas.EmbedResponse, openapi_extra=image_request_body(schemas.EmbedRequest))
async def embed(request: Request, svc: Service):
    """L2-normalised embeddings of texts and images: JSON (images as base64 / data URIs) or multipart (`images` files, `texts` fields)."""
    settings = svc.settings
    req, inputs = await read_image_request(request, settings, schemas.EmbedRequest)
    texts = req.texts or []
    check_count(texts, "texts", settings.max_items)
    check_count(req.images or [], "images", settings.max_items)
    check_texts(svc, texts, "texts")
    image_embs = await embed_image_strings(svc, inputs.get("images", []), "images")
    text_embs = await svc.engine.embed_texts(texts)
    return schemas.EmbedResponse(
        model=svc.encoder.model_id, dim=svc.encoder.dim,
        text_embeddings=text_embs.tolist(), image_embeddings=image_embs.tolist(),
    )


def check_openai_model(svc: Service, model: str | None, field: str = "model") -> None:
    """404 `model_not_found` unless `model` is left out or names the served model (as GET /v1/models lists it)."""
    if model is not None and model != svc.encoder.model_id:
        raise ApiError(404, "model_not_found", f"model {model!r} is not served here; this service serves "
                       f"{svc.encoder.model_id!r} (GET /v1/models)", field)


@router.post("/v1/embeddings", response_model=schemas.OpenAIEmbeddingsResponse)
async def openai_embeddings(req: schemas.OpenAIEmbeddingsRequest, svc: Service):
    """OpenAI-compatible text embeddings (`encoding_format` float or base64).

    `model` must be left out or name the served model; `dimensions` may only be the model's own
    (CLIP embeddings are not trained to be shortened); token-id input is refused (give texts).
    """
    check_openai_model(svc, req.model)
    if req.dimensions is not None and req.dimensions != svc.encoder.dim:
        raise ApiError(422, "dimensions_not_supported", f"{svc.encoder.model_id} gives {svc.encoder.dim}-dimensional "
                       f"embeddings and cannot shorten them to {req.dimensions} (they are not trained for it): "
                       f"leave out dimensions or pass {svc.encoder.dim}", "dimensions")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise ApiError(422, "invalid_request", "input must not be empty", "input")
    check_count(texts, "input", svc.settings.max_items)
    check_texts(svc, texts, "input", indexed=isinstance(req.input, list))
    embs = await svc.engine.embed_texts(texts)
    ids = svc.encoder.tokenize(texts)
    tokens = int((ids != getattr(svc.encoder.tokenizer, "pad_id", 0)).sum())
    data = []
    for i, e in enumerate(embs):
        value = base64.b64encode(e.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else e.tolist()
        data.append(schemas.OpenAIEmbedding(index=i, embedding=value))
    return schemas.OpenAIEmbeddingsResponse(data=data, model=svc.encoder.model_id, usage=schemas.OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))


def _served_model(svc: Service) -> schemas.OpenAIModel:
    return schemas.OpenAIModel(id=svc.encoder.model_id, created=int(svc.loaded_at or 0))


@router.get("/v1/models", response_model=schemas.OpenAIModelList)
async def openai_models(svc: Service):
    """OpenAI-compatible model list: the one model this service serves."""
    return schemas.OpenAIModelList(data=[_served_model(svc)])


@router.get("/v1/models/{model}", response_model=schemas.OpenAIModel)
async def openai_model(model: str, svc: Service):
    """OpenAI-compatible model lookup: the served model, or 404."""
    check_openai_model(svc, model)
    return _served_model(svc)
