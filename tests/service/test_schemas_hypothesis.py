"""Hypothesis on the request schemas and the image-string parser: arbitrary JSON (NaN/Infinity, unicode,
nesting, empty lists) is accepted or refused with a validation error, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service import schemas
from service.app import image_bytes
from service.errors import ApiError

REQUEST_MODELS = [schemas.EmbedRequest, schemas.OpenAIEmbeddingsRequest, schemas.RankRequest, schemas.CompareRequest,
                  schemas.ExplainRequest, schemas.ClassifyRequest, schemas.StoreRequest]
FIELDS = sorted({name for m in REQUEST_MODELS for name in m.model_fields} | {"a", "b", "text"})

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5), max_leaves=30)
request_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


def _validate_json(model: type[BaseModel], text: str) -> None:
    try:
        model.model_validate_json(text)
    except ValidationError:
        pass


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=request_like)
def test_request_models_accept_or_refuse_cleanly(model, body):
    try:
        obj = model.model_validate(body)
    except ValidationError:
        pass
    else:  # what validates is usable: no NaN/Infinity slipped into a bounded number
        for name in ("alpha", "top_k"):
            value = getattr(obj, name, None)
            assert value is None or value == value and abs(value) != float("inf")
    _validate_json(model, json.dumps(body, allow_nan=True))


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.__name__)
@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), depth=st.integers(0, 3000))
def test_request_models_on_raw_text_and_deep_nesting(model, text, depth):
    _validate_json(model, text)
    _validate_json(model, "[" * depth + "]" * depth)
    _validate_json(model, '{"texts": ' + "[" * depth + "]" * depth + "}")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: "data:image/png;base64," + b.hex()))
def test_image_strings_give_bytes_or_a_4xx(value):
    try:
        data = image_bytes(value, "images", 0, max_bytes=1000)
    except ApiError as err:
        assert 400 <= err.status < 500
    else:
        assert isinstance(data, bytes) and 0 < len(data) <= 1000
