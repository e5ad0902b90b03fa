"""What the routers share, passed explicitly: the service state (a FastAPI dependency) and input checks.

Every router takes `svc: Service` (the `ServiceState` kept in `app.state.svc` by `create_app`) and
uses the helpers below with it; nothing is captured from a closure.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import Depends, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.difference import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPLATES,
    Hint,
    class_prompts,
    comparative_prompting,
    ensemble_class_embeddings,
    template_error,
)
from models.encoders import Encoder
from models.images import ImageDecodeError
from service import schemas
from service.errors import ApiError
from service.inference import InferenceEngine
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.stores import ClassStore, StoreRegistry, valid_store_name

if TYPE_CHECKING:
    from service.collections import CollectionRegistry

DEFAULT_TOP_K = 5


@dataclass
class ServiceState:
    """What the routes share: settings, metrics, and (once loaded) the encoder, engine and stores."""

    settings: Settings
    metrics: ServiceMetrics
    encoder: Encoder | None = None
    engine: InferenceEngine | None = None
    stores: StoreRegistry | None = None
    collections: "CollectionRegistry | None" = None
    collections_loaded_in_s: float | None = None
    loaded_at: float | None = None


async def get_service(request: Request) -> ServiceState:
    """The app's `ServiceState` (FastAPI dependency; async, so no request pays a thread-pool hop for it)."""
    return request.app.state.svc


Service = Annotated[ServiceState, Depends(get_service)]


# -- input checks -------------------------------------------------------------------------------
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


def check_count(items: list, what: str, limit: int) -> None:
    """422 `too_many_items` when a list is longer than its limit."""
    if len(items) > limit:
        raise ApiError(422, "too_many_items", f"{len(items)} {what}, more than the limit of {limit} per request", what)


def check_texts(svc: ServiceState, texts: list[str], field_name: str, indexed: bool = True) -> None:
    """422 `empty_text` for an empty or blank text, `text_too_long` for one over `settings.max_text_chars`.

    The error names the field, and the index of the text when the field is a list (`indexed`).
    """
    limit = svc.settings.max_text_chars
    for i, text in enumerate(texts):
        index = i if indexed else None
        if not text.strip():
            raise ApiError(422, "empty_text", "text is empty or only whitespace: it would embed as noise and match nothing",
                           field_name, index)
        if len(text) > limit:
            raise ApiError(422, "text_too_long", f"text has {len(text)} characters, more than the limit of {limit}", field_name, index)


def check_store_name(name: str, field: str) -> None:
    """422 `invalid_store_name` unless `name` is a valid store name."""
    if not valid_store_name(name):
        raise ApiError(422, "invalid_store_name", "store names are 1-128 characters of letters, digits, '_', '.', '-'", field)


def _inline_definitions(schema: dict) -> dict:
    """A model's JSON schema with its `$defs` written in place: `#/$defs/...` does not resolve inside an OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(definitions[ref.rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def json_or_multipart_body(json_model, multipart_properties: dict) -> dict:
    """An OpenAPI requestBody for a route that reads JSON (`json_model`) or a multipart form."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_definitions(json_model.model_json_schema())},
            "multipart/form-data": {"schema": {"type": "object", "properties": multipart_properties}},
        },
    }


IMAGE_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}


def top_k_of(top_k: int | None, n: int, default: int | None) -> int:
    """The number of results to return: `top_k`, else `default`, else all; within 1..n."""
    k = top_k if top_k is not None else (default or n)
    return max(1, min(int(k), n))


async def read_form(request: Request, svc: ServiceState) -> FormData:
    """The multipart form of a request (at most `max_items` files, and fields for 3 per file), or 400 `invalid_multipart`."""
    try:
        return await request.form(max_files=svc.settings.max_items, max_fields=3 * svc.settings.max_items)
    except StarletteHTTPException:
        raise
    except Exception as err:  # malformed multipart
        raise ApiError(400, "invalid_multipart", f"cannot parse the multipart body: {err}") from None


async def upload_bytes(svc: ServiceState, upload: UploadFile, field: str, index: int) -> bytes:
    """An uploaded image file's bytes, or 413 (over `max_image_bytes`) / 422 (empty)."""
    blob = await upload.read()
    if len(blob) > svc.settings.max_image_bytes:
        raise ApiError(413, "image_too_large", f"image is {len(blob)} bytes, more than the limit of {svc.settings.max_image_bytes}", field, index)
    if not blob:
        raise ApiError(422, "invalid_image", "image is empty", field, index)
    return blob


# -- embedding and class helpers ----------------------------------------------------------------
async def embed_image_strings(svc: ServiceState, values: list[str | bytes], fields: list[str] | str, indexed: bool = True) -> np.ndarray:
    """Images -> normalised embeddings; errors name the field (and index when `indexed`).

    A value is a base64 / data-URI string (JSON bodies) or a file's bytes (multipart parts, already
    checked for size by `service.image_requests`).
    """
    names = fields if isinstance(fields, list) else [fields] * len(values)
    data = [v if isinstance(v, bytes) else image_bytes(v, names[i], i if indexed else None, svc.settings.max_image_bytes)
            for i, v in enumerate(values)]
    try:
        return await svc.engine.embed_images(data)
    except ImageDecodeError as err:
        err.field = names[err.index] if err.index is not None else names[0]
        if not indexed:
            err.index = None
        raise


async def embed_image_files(svc: ServiceState, data: list[bytes], field: str = "images") -> np.ndarray:
    """Uploaded image files -> normalised embeddings; a decoding error names `field` and the item's index."""
    try:
        return await svc.engine.embed_images(data)
    except ImageDecodeError as err:
        err.field = field
        raise


async def build_classes(
    svc: ServiceState, classes: list[str], templates: list[str] | None, hints: list[schemas.Hint] | None, alpha: float | None
) -> tuple[np.ndarray, list[str], list[Hint], float]:
    """Checked class embeddings [C, D] with templates, comparative-prompting hints and alpha applied."""
    settings = svc.settings
    check_count(classes, "classes", settings.max_classes)
    check_texts(svc, classes, "classes")
    if len(set(classes)) != len(classes):
        raise ApiError(422, "duplicate_class", "class names must be distinct", "classes")
    templates = list(templates) if templates else list(DEFAULT_TEMPLATES)
    check_count(templates, "templates", settings.max_templates)
    check_texts(svc, templates, "templates")
    for i, t in enumerate(templates):
        if (problem := template_error(t)) is not None:
            raise ApiError(422, "invalid_template", problem, "templates", i)
    hint_objs = [Hint(h.a, h.b, h.text) for h in hints or []]
    check_count(hint_objs, "hints", settings.max_classes)
    known = set(classes)
    for i, h in enumerate(hint_objs):
        for name in (h.a, h.b):
            if name not in known:
                raise ApiError(422, "unknown_hint_class", f"hint names class {name!r}, which is not among the classes", "hints", i)
        if not h.text.strip():
            raise ApiError(422, "empty_text", "hint text is empty or only whitespace", "hints", i)
        if len(h.text) > settings.max_text_chars:
            raise ApiError(422, "text_too_long", f"hint text is longer than {settings.max_text_chars} characters", "hints", i)
    work = len(classes) * len(templates) + len(hint_objs)
    if work > settings.max_texts_per_request:
        raise ApiError(422, "too_much_work",
                       f"{len(classes)} classes x {len(templates)} templates + {len(hint_objs)} hints = {work} texts to encode, "
                       f"more than the limit of {settings.max_texts_per_request} per request (PCCLIP_MAX_TEXTS_PER_REQUEST)", "classes")
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    # encoded in small pieces queued behind other requests, and abandoned with the request (see embed_texts)
    embs = await svc.engine.embed_texts(class_prompts(classes, templates) + [h.text for h in hint_objs], bulk=True)
    w = ensemble_class_embeddings(embs[: len(classes) * len(templates)], len(classes))
    if hint_objs:
        w = comparative_prompting(classes, w, hint_objs, embs[len(classes) * len(templates):], alpha=alpha)
    return w, templates, hint_objs, alpha


async def get_store(svc: ServiceState, name: str) -> ClassStore:
    """The class store `name` of the served model, or 422 (bad name) / 404 (none) / 503 (Redis down)."""
    check_store_name(name, "store")
    store = await svc.stores.get(name)
    if store is None:
        raise ApiError(404, "store_not_found", f"no class store named {name!r} for model {svc.encoder.model_id}", "store")
    return store
