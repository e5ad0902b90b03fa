"""Request bodies of the image routes, JSON or multipart, read in one place.

- `application/json`: the route's request model; each image is a base64 string or a data URI.
- `multipart/form-data` (`curl -F`): each image is a file part named like its JSON field (`images`,
  repeated; `image_a`, `image_b`), so photos of any size go up as they are; every other field is a
  text part: list fields repeated (`texts`, `classes`, `templates`, `candidates`), list items that
  are objects as JSON text (`hints`), numbers as text (`top_k`, `alpha`).

Both give the validated request model and each image field's values (base64 strings from JSON,
file bytes from multipart), which `service.dependencies.embed_image_strings` embeds either way.
"""

from __future__ import annotations

import json
import types
import typing
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)

IMAGE_FIELDS = ("images", "image_a", "image_b")


async def read_form(request: Request, settings: Settings) -> FormData:
    """The multipart form within the request limits; a body that is not valid multipart is a 400."""
    max_fields = max(settings.max_items, settings.max_classes, settings.max_templates) + 16
    try:
        return await request.form(max_files=settings.max_items, max_fields=max_fields)
    except StarletteHTTPException as err:  # the parser's limits (files, fields, part size): its message is plain
        if err.status_code != 400:
            raise
        raise ApiError(400, "invalid_multipart", f"multipart body refused: {err.detail}") from None
    except Exception:  # the parser's own message names Python objects; ours says what is wrong
        raise ApiError(400, "invalid_multipart", "the body is not valid multipart/form-data "
                       "(parts need a Content-Disposition name; files need a filename)") from None


def _unwrap_optional(annotation):
    """X from Optional[X] / X | None; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _list_item(annotation):
    """The item type of a list field, or None when the field is not a list."""
    annotation = _unwrap_optional(annotation)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        return item
    return None


async def _form_values(form: FormData, model: type[BaseModel], settings: Settings) -> tuple[dict, dict[str, list[bytes]]]:
    """Form parts -> (values for the model with placeholders for images, each image field's file bytes)."""
    values: dict = {}
    images: dict[str, list[bytes]] = {}
    for name in dict.fromkeys(form.keys()):
        parts = form.getlist(name)
        if name in IMAGE_FIELDS:
            if any(isinstance(p, str) for p in parts):
                raise ApiError(422, "invalid_request", f"multipart '{name}' parts must be files", name)
            data = []
            for i, part in enumerate(parts):
                blob = await part.read()
                index = i if name == "images" else None
                if len(blob) > settings.max_image_bytes:
                    raise ApiError(413, "image_too_large", f"image is {len(blob)} bytes, more than the limit of "
                                   f"{settings.max_image_bytes}", name, index)
                if not blob:
                    raise ApiError(422, "invalid_image", "image is empty", name, index)
                data.append(blob)
            images[name] = data
            if name == "images":
                values[name] = [""] * len(data)  # counted and validated like JSON; the bytes go separately
            elif len(data) == 1:
                values[name] = ""
            else:
                raise ApiError(422, "invalid_request", f"'{name}' takes one file, got {len(data)}", name)
            continue
        if any(isinstance(p, UploadFile) for p in parts):
            raise ApiError(422, "invalid_request", f"multipart '{name}' must be a text field, not a file", name)
        field = model.model_fields.get(name)
        item = _list_item(field.annotation) if field is not None else None
        if field is None or item is None:
            if len(parts) > 1:
                raise ApiError(422, "invalid_request", f"'{name}' is given {len(parts)} times; it takes one value", name)
            values[name] = parts[0]  # an unknown name is refused by the model (extra fields are forbidden)
        elif isinstance(item, type) and issubclass(item, BaseModel):
            decoded = []
            for i, part in enumerate(parts):
                try:
                    decoded.append(json.loads(part))
                except ValueError:
                    raise ApiError(422, "invalid_request", f"each '{name}' part is a JSON object", name, i) from None
            values[name] = decoded
        else:
            values[name] = list(parts)
    return values, images


async def read_image_request(request: Request, settings: Settings, model: type[M]) -> tuple[M, dict[str, list]]:
    """The request model and each image field's values (JSON: base64 strings; multipart: file bytes)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        values, images = await _form_values(await read_form(request, settings), model, settings)
        return model.model_validate(values), images
    if content_type.startswith("application/x-www-form-urlencoded"):  # curl -d k=v: no way to send a file
        raise ApiError(415, "unsupported_media_type", "send images as multipart/form-data files (curl -F images=@photo.jpg) "
                       "or as base64 in a JSON body (content-type: application/json)")
    body = model.model_validate_json(await request.body())
    images = {}
    for name in IMAGE_FIELDS:
        value = getattr(body, name, None)
        if value is not None:
            images[name] = value if isinstance(value, list) else [value]
    return body, images


def image_request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` of an image route: its JSON model, and the same fields as multipart with file parts."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # nested models (Hint) are in the document's components already
    properties = {}
    for name, prop in schema.get("properties", {}).items():
        if name in IMAGE_FIELDS:
            binary = {"type": "string", "format": "binary"}
            properties[name] = {"type": "array", "items": binary} if name == "images" else binary
        else:
            properties[name] = prop
    multipart = {"type": "object", "properties": properties, "required": schema.get("required", [])}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                           "multipart/form-data": {"schema": multipart}}}}
