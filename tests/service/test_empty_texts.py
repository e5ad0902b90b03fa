"""Empty and blank texts are refused with 422 `empty_text`, naming the field (and the index in a list)."""

from __future__ import annotations

import pytest

CASES = [
    # (name, path, body builder, field, index)
    ("compare difference", "/v1/compare", lambda p: {"image_a": p[0], "image_b": p[1], "difference": ""}, "difference", None),
    ("rank attribute empty", "/v1/rank", lambda p: {"attribute": "", "images": p[:2]}, "attribute", None),
    ("rank attribute blank", "/v1/rank", lambda p: {"attribute": "   ", "images": p[:2]}, "attribute", None),
    ("classes", "/v1/classify", lambda p: {"images": p[:1], "classes": ["", "cat"]}, "classes", 0),
    ("templates", "/v1/classify", lambda p: {"images": p[:1], "classes": ["cat", "dog"], "templates": ["a photo of a {}", " "]}, "templates", 1),
    ("hint text", "/v1/classify", lambda p: {"images": p[:1], "classes": ["cat", "dog"], "hints": [{"a": "cat", "b": "dog", "text": "\t"}]}, "hints", 0),
    ("explain candidates", "/v1/explain", lambda p: {"image_a": p[0], "image_b": p[1], "candidates": ["bigger", ""]}, "candidates", 1),
    ("embed texts", "/v1/embed", lambda p: {"texts": ["a bird", "\n"]}, "texts", 1),
    ("embeddings input", "/v1/embeddings", lambda p: {"input": ""}, "input", None),
    ("embeddings input list", "/v1/embeddings", lambda p: {"input": ["a bird", ""]}, "input", 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_empty_text_is_422_naming_field_and_index(client, photo_b64, case):
    _, path, body, field, index = case
    r = client.post(path, json=body(photo_b64))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err.get("field"), err.get("index")) == ("empty_text", field, index), err


def test_empty_class_in_a_store_is_422(client):
    r = client.put("/v1/stores/blank", json={"classes": ["cat", " "]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_text" and r.json()["error"]["index"] == 1


def test_error_texts_carry_no_python_reprs(client, photo_b64):
    import base64

    junk = base64.b64encode(b"this is not an image at all").decode()
    for path, body in [("/v1/embed", {"images": [junk]}), ("/v1/rank", {"attribute": "x", "images": [junk]}),
                       ("/v1/compare", {"image_a": photo_b64[0], "image_b": junk, "difference": "x"})]:
        r = client.post(path, json=body)
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert " at 0x" not in message and "<_io" not in message and "BytesIO" not in message, message
        assert "not an image file" in message
