"""Multipart uploads (`curl -F`) on every image route: the same answers as JSON with base64, any photo size."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.service.conftest import service_client

ATTRIBUTE = "The first bird is larger than the second."


def _files(name: str, blobs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, (f"{name}{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(blobs)]


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def test_rank_multipart_equals_json(client, photo_bytes):
    multipart = client.post("/v1/rank", data={"attribute": ATTRIBUTE, "top_k": "3"}, files=_files("images", photo_bytes[:4]))
    assert multipart.status_code == 200, multipart.text
    plain = client.post("/v1/rank", json={"attribute": ATTRIBUTE, "top_k": 3, "images": [_b64(b) for b in photo_bytes[:4]]})
    assert multipart.json() == plain.json() and len(multipart.json()["ranking"]) == 3


def test_compare_and_explain_multipart_equal_json(client, photo_bytes):
    a, b = photo_bytes[0], photo_bytes[1]
    files = [("image_a", ("a.jpg", a, "image/jpeg")), ("image_b", ("b.jpg", b, "image/jpeg"))]
    multipart = client.post("/v1/compare", data={"difference": ATTRIBUTE}, files=files)
    assert multipart.status_code == 200, multipart.text
    plain = client.post("/v1/compare", json={"image_a": _b64(a), "image_b": _b64(b), "difference": ATTRIBUTE})
    assert multipart.json() == plain.json()
    candidates = [ATTRIBUTE, "The first bird is darker than the second.", "The first bird has a longer beak than the second."]
    explained = client.post("/v1/explain", data={"candidates": candidates, "top_k": "2"}, files=files)
    assert explained.status_code == 200, explained.text
    plain = client.post("/v1/explain", json={"image_a": _b64(a), "image_b": _b64(b), "candidates": candidates, "top_k": 2})
    assert explained.json() == plain.json() and explained.json()["vocabulary"] == "candidates"


def test_classify_multipart_with_hints_equals_json(client, photo_bytes):
    classes = ["Brown Pelican", "Anna Hummingbird", "Ivory Gull"]
    hints = [{"a": "Brown Pelican", "b": "Anna Hummingbird", "text": "The first bird is larger than the second."},
             {"a": "Brown Pelican", "b": "Ivory Gull", "text": "The first bird is darker than the second."}]
    data = {"classes": classes, "hints": [json.dumps(h) for h in hints], "alpha": "0.8", "top_k": "3"}
    multipart = client.post("/v1/classify", data=data, files=_files("images", photo_bytes[:2]))
    assert multipart.status_code == 200, multipart.text
    plain = client.post("/v1/classify", json={"images": [_b64(b) for b in photo_bytes[:2]], "classes": classes,
                                              "hints": hints, "alpha": 0.8, "top_k": 3})
    assert multipart.json() == plain.json() and len(multipart.json()["results"]) == 2


def test_classify_multipart_against_a_store(encoder, redis_url, photo_bytes):
    with service_client(encoder, redis_url, redis_timeout_s=3.0) as client:  # a loaded CI machine is slow
        assert client.put("/v1/stores/birds", json={"classes": ["gull", "pelican"]}).status_code == 200
        r = client.post("/v1/classify", data={"store": "birds"}, files=_files("images", photo_bytes[:1]))
    assert r.status_code == 200, r.text
    assert r.json()["store"] == "birds" and {x["label"] for x in r.json()["results"][0]["labels"]} == {"gull", "pelican"}


def test_a_large_real_photo_goes_up_as_a_file(client, data_dir):
    """Most COCO photos are over 96 KB: too big for a base64 argument on a shell's command line, fine as a file."""
    photo = max((data_dir / "coco-mini" / "val2017").glob("*.jpg"), key=lambda p: p.stat().st_size)
    blob = photo.read_bytes()
    assert len(blob) > 96 * 1024
    r = client.post("/v1/rank", data={"attribute": "a photo of a cat"}, files=_files("images", [blob, blob]))
    assert r.status_code == 200, r.text
    scores = [item["score"] for item in r.json()["ranking"]]
    assert scores[0] == pytest.approx(scores[1])
    embedded = client.post("/v1/embed", files=_files("images", [blob])).json()["image_embeddings"][0]
    assert np.linalg.norm(embedded) == pytest.approx(1.0, abs=1e-4)


MULTIPART_ERRORS = [
    # (name, path, data, files, status, code, field, index)
    ("image as a text field", "/v1/rank", {"attribute": "x", "images": "not a file"}, [("other", ("x", b"x", "text/plain"))], 422, "invalid_request", "images", None),
    ("url-encoded form", "/v1/rank", {"attribute": "x"}, None, 415, "unsupported_media_type", None, None),
    ("missing image_b", "/v1/compare", {"difference": "x"}, [("image_a", ("a.jpg", b"x", "image/jpeg"))], 422, "invalid_request", "image_b", None),
    ("two files for image_a", "/v1/compare", {"difference": "x"},
     [("image_a", ("a.jpg", b"x", "image/jpeg")), ("image_a", ("b.jpg", b"y", "image/jpeg")), ("image_b", ("c.jpg", b"z", "image/jpeg"))],
     422, "invalid_request", "image_a", None),
    ("unknown field", "/v1/classify", {"classes": ["a"], "bogus": "1"}, "photo", 422, "invalid_request", "bogus", None),
    ("bad top_k", "/v1/rank", {"attribute": "x", "top_k": "many"}, "photo", 422, "invalid_request", "top_k", None),
    ("hint not JSON", "/v1/classify", {"classes": ["a", "b"], "hints": ["{not json"]}, "photo", 422, "invalid_request", "hints", 0),
    ("empty file", "/v1/classify", {"classes": ["a"]}, [("images", ("a.jpg", b"", "image/jpeg"))], 422, "invalid_image", "images", 0),
    ("not an image", "/v1/rank", {"attribute": "x"}, [("images", ("a.jpg", b"hello", "image/jpeg"))], 422, "invalid_image", "images", 0),
    ("attribute given twice", "/v1/rank", {"attribute": ["x", "y"]}, "photo", 422, "invalid_request", "attribute", None),
]


@pytest.mark.parametrize("case", MULTIPART_ERRORS, ids=[c[0] for c in MULTIPART_ERRORS])
def test_multipart_mistakes_are_clear_4xx(client, photo_bytes, case):
    _, path, data, files, status, code, field, index = case
    if files == "photo":
        files = _files("images", photo_bytes[:1])
    r = client.post(path, data=data, files=files)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["code"], err.get("field"), err.get("index")) == (code, field, index), err


def test_a_body_that_is_not_multipart_is_a_400_without_python_reprs(client):
    r = client.post("/v1/rank", content=b"--x\r\nnot a header\r\n\r\nbody\r\n--x--\r\n",
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_multipart" and " at 0x" not in r.text


def test_multipart_limits_apply(encoder, redis_url, photo_bytes):
    with service_client(encoder, redis_url, max_items=2, max_image_bytes=len(photo_bytes[0]) - 1) as c:
        many = c.post("/v1/rank", data={"attribute": "x"}, files=_files("images", [b"a", b"b", b"c"]))
        assert many.status_code in (400, 413, 422) and many.json()["error"]["code"] in ("too_many_items", "invalid_multipart"), many.text
        big = c.post("/v1/rank", data={"attribute": "x"}, files=_files("images", photo_bytes[:1]))
        assert big.status_code == 413 and big.json()["error"] == {
            "code": "image_too_large", "message": big.json()["error"]["message"], "field": "images", "index": 0}


def test_openapi_offers_multipart_on_every_image_route(client):
    doc = client.get("/openapi.json").json()
    for path, image_field in [("/v1/embed", "images"), ("/v1/rank", "images"), ("/v1/classify", "images"),
                              ("/v1/compare", "image_a"), ("/v1/explain", "image_b")]:
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert {"application/json", "multipart/form-data"} <= set(content), path
        prop = content["multipart/form-data"]["schema"]["properties"][image_field]
        assert "binary" in json.dumps(prop), (path, prop)
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    missing = [r for r in refs if r.split("/")[-1] not in doc["components"]["schemas"]]
    assert not missing, missing
