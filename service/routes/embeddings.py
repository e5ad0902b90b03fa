"""Embedding routes: /v1/embed (JSON or multipart) and the OpenAI-compatible /v1/embeddings."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request

from service import schemas
from service.dependencies import IMAGE_FILES, Service, check_count, check_texts, embed_image_files, embed_image_strings, json_or_multipart_body, read_form, upload_bytes
from service.errors import ApiError

router = APIRouter(tags=["embeddings"])

EMBED_BODY = json_or_multipart_body(schemas.EmbedRequest, {"images": IMAGE_FILES, "texts": {"type": "array", "items": {"type": "string"}}})


@router.post("/v1/embed", response_model=schemas.EmbedResponse, openapi_extra={"requestBody": EMBED_BODY})
async def embed(request: Request, svc: Service):
    """L2-normalised embeddings of texts and images: JSON (images as base64 / data URIs) or multipart files."""
    settings = svc.settings
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await read_form(request, svc)
        texts = [str(t) for t in form.getlist("texts") if isinstance(t, str)]
        uploads = [f for f in form.getlist("images") if not isinstance(f, str)]
        if any(isinstance(v, str) for v in form.getlist("images")):
            raise ApiError(422, "invalid_request", "multipart 'images' parts must be files", "images")
        check_count(uploads, "images", settings.max_items)
        check_count(texts, "texts", settings.max_items)
        check_texts(svc, texts, "texts")
        data = [await upload_bytes(svc, up, "images", i) for i, up in enumerate(uploads)]
        image_embs = await embed_image_files(svc, data)
    else:
        req = schemas.EmbedRequest.model_validate_json(await request.body())
        texts = req.texts or []
        check_count(texts, "texts", settings.max_items)
        check_count(req.images or [], "images", settings.max_items)
        check_texts(svc, texts, "texts")
        image_embs = await embed_image_strings(svc, req.images or [], "images")
    text_embs = await svc.engine.embed_texts(texts)
    return schemas.EmbedResponse(
        model=svc.encoder.model_id, dim=svc.encoder.dim,
        text_embeddings=text_embs.tolist(), image_embeddings=image_embs.tolist(),
    )


@router.post("/v1/embeddings", response_model=schemas.OpenAIEmbeddingsResponse)
async def openai_embeddings(req: schemas.OpenAIEmbeddingsRequest, svc: Service):
    """OpenAI-compatible text embeddings (`encoding_format` float or base64)."""
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise ApiError(422, "invalid_request", "input must not be empty", "input")
    check_count(texts, "input", svc.settings.max_items)
    check_texts(svc, texts, "input")
    embs = await svc.engine.embed_texts(texts)
    ids = svc.encoder.tokenize(texts)
    tokens = int((ids != getattr(svc.encoder.tokenizer, "pad_id", 0)).sum())
    data = []
    for i, e in enumerate(embs):
        value = base64.b64encode(e.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else e.tolist()
        data.append(schemas.OpenAIEmbedding(index=i, embedding=value))
    return schemas.OpenAIEmbeddingsResponse(data=data, model=svc.encoder.model_id, usage=schemas.OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens))
