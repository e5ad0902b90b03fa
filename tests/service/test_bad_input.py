"""Bad input: every limit and malformed input gets a 4xx with the JSON error body; the server keeps serving."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.service.conftest import service_client

LIMITS = dict(max_body_bytes=400_000, max_items=4, max_image_pixels=300 * 300, max_image_bytes=150_000,
              max_text_chars=200, max_classes=5, max_templates=3)


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def limited(encoder, redis_server):
    redis_server.command("FLUSHALL")
    with service_client(encoder, redis_server.url, **LIMITS) as client:
        yield client


def _assert_error(r, status: int, code: str | None = None, field: str | None = None, index: int | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code, err
    if field:
        assert err.get("field") == field, err
    if index is not None:
        assert err.get("index") == index, err
    return err


SMALL = _png(32, 32)

CASES = [
    # (name, method, path, kwargs, status, code, field, index)
    ("malformed json", "post", "/v1/embed", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid_json", None, None),
    ("malformed json typed route", "post", "/v1/rank", {"content": b"[1, 2", "headers": {"content-type": "application/json"}}, 422, "invalid_json", None, None),
    ("wrong type", "post", "/v1/embed", {"json": {"texts": "not a list"}}, 422, "invalid_request", "texts", None),
    ("unknown field", "post", "/v1/rank", {"json": {"attribute": "x", "images": [SMALL], "bogus": 1}}, 422, "invalid_request", "bogus", None),
    ("missing field", "post", "/v1/compare", {"json": {"image_a": SMALL, "image_b": SMALL}}, 422, "invalid_request", "difference", None),
    ("bad base64", "post", "/v1/embed", {"json": {"images": [SMALL, "@@not base64@@"]}}, 422, "invalid_base64", "images", 1),
    ("bad data uri", "post", "/v1/embed", {"json": {"images": ["data:image/png,plain"]}}, 422, "invalid_data_uri", "images", 0),
    ("url not fetched", "post", "/v1/rank", {"json": {"attribute": "red", "images": [SMALL, "https://example.com/x.jpg"]}}, 422, "image_url_not_supported", "images", 1),
    ("not an image", "post", "/v1/classify", {"json": {"images": [SMALL, SMALL, base64.b64encode(b"hello, not an image").decode()], "classes": ["a", "b"]}}, 422, "invalid_image", "images", 2),
    ("bad compare image", "post", "/v1/compare", {"json": {"image_a": SMALL, "image_b": base64.b64encode(b"GIF89a broken").decode(), "difference": "x"}}, 422, "invalid_image", "image_b", None),
    ("decompression bomb", "post", "/v1/embed", {"json": {"images": [_png(400, 400)]}}, 413, "image_too_large", "images", 0),
    ("image bytes", "post", "/v1/embed", {"json": {"images": [SMALL, base64.b64encode(b"\x89PNG" + b"\0" * 160_000).decode()]}}, 413, "image_too_large", "images", 1),
    ("too many images", "post", "/v1/rank", {"json": {"attribute": "red", "images": [SMALL] * 5}}, 422, "too_many_items", "images", None),
    ("too many texts", "post", "/v1/embeddings", {"json": {"input": ["a"] * 5}}, 422, "too_many_items", "input", None),
    ("text too long", "post", "/v1/embed", {"json": {"texts": ["ok", "x" * 201]}}, 422, "text_too_long", "texts", 1),
    ("too many classes", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": list("abcdef")}}, 422, "too_many_items", "classes", None),
    ("too many templates", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a"], "templates": ["{}", "a {}", "b {}", "c {}"]}}, 422, "too_many_items", "templates", None),
    ("bad template", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a"], "templates": ["a {} {name}"]}}, 422, "invalid_template", "templates", 0),
    ("classes and store", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a"], "store": "s"}}, 422, "invalid_request", None, None),
    ("neither classes nor store", "post", "/v1/classify", {"json": {"images": [SMALL]}}, 422, "invalid_request", None, None),
    ("duplicate classes", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a", "a"]}}, 422, "duplicate_class", "classes", None),
    ("hint unknown class", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a", "b"], "hints": [{"a": "a", "b": "zzz", "text": "t"}]}}, 422, "unknown_hint_class", "hints", 0),
    ("alpha out of range", "post", "/v1/classify", {"json": {"images": [SMALL], "classes": ["a"], "alpha": 1.5}}, 422, "invalid_request", "alpha", None),
    ("top_k zero", "post", "/v1/rank", {"json": {"attribute": "red", "images": [SMALL], "top_k": 0}}, 422, "invalid_request", "top_k", None),
    ("empty images", "post", "/v1/rank", {"json": {"attribute": "red", "images": []}}, 422, "invalid_request", "images", None),
    ("unknown store", "post", "/v1/classify", {"json": {"images": [SMALL], "store": "nope"}}, 404, "store_not_found", "store", None),
    ("unknown store get", "get", "/v1/stores/nope", {}, 404, "store_not_found", None, None),
    ("unknown store delete", "delete", "/v1/stores/nope", {}, 404, "store_not_found", None, None),
    ("bad store name", "put", "/v1/stores/bad%20name", {"json": {"classes": ["a"]}}, 422, "invalid_store_name", None, None),
    ("empty store", "put", "/v1/stores/empty", {"json": {"classes": []}}, 422, "invalid_request", "classes", None),
    ("body by content-length", "post", "/v1/embed", {"content": b"{" + b" " * 450_000 + b"}", "headers": {"content-type": "application/json"}}, 413, "body_too_large", None, None),
    ("unknown route", "get", "/v1/nothing", {}, 404, "not_found", None, None),
    ("wrong method", "get", "/v1/rank", {}, 405, "method_not_allowed", None, None),
    ("empty candidates", "post", "/v1/explain", {"json": {"image_a": SMALL, "image_b": SMALL, "candidates": []}}, 422, "invalid_request", "candidates", None),
    ("multipart text field as image", "post", "/v1/embed", {"data": {"images": "not a file"}, "files": [("other", ("x", b"x"))]}, 422, "invalid_request", "images", None),
    ("multipart bad image", "post", "/v1/embed", {"files": [("images", ("a.png", base64.b64decode(SMALL))), ("images", ("b.jpg", b"junk"))]}, 422, "invalid_image", "images", 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx(limited, case):
    _, method, path, kwargs, status, code, field, index = case
    r = getattr(limited, method)(path, **kwargs)
    _assert_error(r, status, code, field, index)
    # ... and the server keeps serving
    assert limited.post("/v1/rank", json={"attribute": "red", "images": [SMALL]}).status_code == 200


def test_streamed_body_over_the_limit_is_413(limited):
    def chunks():
        for _ in range(50):
            yield b" " * 10_000  # 500 kB with no Content-Length (chunked)

    r = limited.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    _assert_error(r, 413, "body_too_large")
    assert limited.get("/healthz").status_code == 200


def test_long_text_is_truncated_at_the_context_not_refused(client):
    """Texts under the character limit but past the model's context are truncated (the end is cut)."""
    r = client.post("/v1/embeddings", json={"input": ["bird " * 120, "bird " * 300, "bird " * 5]})
    assert r.status_code == 200, r.text
    e120, e300, e5 = (d["embedding"] for d in r.json()["data"])
    assert e120 == pytest.approx(e300, abs=1e-5)  # both cut at the context: the same tokens
    assert e5 != pytest.approx(e120, abs=1e-3)


def test_full_queue_answers_503_with_retry_after(encoder, redis_url):
    with service_client(encoder, redis_url, queue_limit=3, text_cache_size=0) as client:
        r = client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]})
        err = _assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1" and "queue" in err["message"]
        assert client.post("/v1/embeddings", json={"input": ["a", "b"]}).status_code == 200


SURROGATE = "\\ud800"  # a JSON escape of a lone UTF-16 surrogate: valid JSON, not valid Unicode


@pytest.mark.parametrize("method,path,body,field,index", [
    ("POST", "/v1/rank", '{"attribute": "%s", "images": ["%s"]}', "attribute", None),
    ("POST", "/v1/embeddings", '{"input": ["ok", "%s"]}', "input", None),
    ("POST", "/v1/embeddings", '{"input": "%s"}', "input", None),
    ("POST", "/v1/compare", '{"difference": "%s", "image_a": "%s", "image_b": "%s"}', "difference", None),
    ("POST", "/v1/explain", '{"candidates": ["%s"], "image_a": "%s", "image_b": "%s"}', "candidates", 0),
    ("POST", "/v1/classify", '{"classes": ["\\udc00x"], "images": ["%s"]}', "classes", 0),
    ("POST", "/v1/classify", '{"classes": ["a", "b"], "templates": ["%s {}"], "images": ["%s"]}', "templates", 0),
    ("PUT", "/v1/stores/s", '{"classes": ["\\udc00x"]}', "classes", 0),
    ("PUT", "/v1/stores/s", '{"classes": ["a", "b"], "hints": [{"a": "a", "b": "b", "text": "%s"}]}', "hints.text", 0),
])
def test_lone_surrogates_are_refused_with_422(limited, method, path, body, field, index):
    image = _png(8, 8)
    fills = body.count("%s")
    content = body % tuple([SURROGATE] + [image] * (fills - 1)) if fills else body
    r = limited.request(method, path, content=content.encode(), headers={"content-type": "application/json"})
    if r.status_code == 422 and r.json()["error"]["code"] == "invalid_json":
        return  # image routes parse the body with pydantic's JSON parser, which refuses the escape itself
    err = _assert_error(r, 422, field=field)
    if index is not None:
        assert err.get("index") == index, err
    assert "surrogate" in err["message"]


def test_a_lone_surrogate_in_embed_json_is_invalid_json(limited):
    r = limited.post("/v1/embed", content=('{"texts": ["%s"]}' % SURROGATE).encode(), headers={"content-type": "application/json"})
    _assert_error(r, 422, "invalid_json")


@pytest.mark.parametrize("template", ["{:x>500000000}N", "{:x>40000000000}", "{0}", "a {} and {}", "{name} {}"])
def test_format_string_templates_are_refused_not_evaluated(limited, template):
    for method, path in (("POST", "/v1/classify"), ("PUT", "/v1/stores/t")):
        body = {"classes": ["crow", "gull"], "templates": ["a photo of a {}.", template]}
        if method == "POST":
            body["images"] = [_png(8, 8)]
        _assert_error(limited.request(method, path, json=body), 422, "invalid_template", "templates", 1)


def test_a_template_placeholder_gets_the_class_name(limited):
    put = limited.put("/v1/stores/tmpl", json={"classes": ["crow", "gull"], "templates": ["{} at sea", "a photo"]})
    assert put.status_code == 200 and put.json()["templates"] == ["{} at sea", "a photo"]


def test_work_per_request_is_budgeted_up_front(encoder, redis_server):
    redis_server.command("FLUSHALL")
    with service_client(encoder, redis_server.url, max_texts_per_request=10, max_request_pixels=2 * 64 * 64) as client:
        text_calls = encoder.calls["text"]
        for method, path, extra in (("POST", "/v1/classify", {"images": [_png(8, 8)]}), ("PUT", "/v1/stores/big", {})):
            r = client.request(method, path, json={"classes": ["a", "b", "c", "d"], "templates": ["x {}", "y {}", "z {}"], **extra})
            err = _assert_error(r, 422, "too_much_work", "classes")
            assert "12 texts" in err["message"] and "PCCLIP_MAX_TEXTS_PER_REQUEST" in err["message"]
        assert encoder.calls["text"] == text_calls  # refused before encoding anything
        hinted = {"classes": ["a", "b", "c"], "templates": ["x {}", "y {}", "z {}"], "hints": [{"a": "a", "b": "b", "text": "t"}, {"a": "b", "b": "c", "text": "u"}]}
        _assert_error(client.put("/v1/stores/big", json=hinted), 422, "too_much_work")
        assert client.put("/v1/stores/ok", json={"classes": ["a", "b", "c"], "templates": ["x {}", "y {}", "z {}"]}).status_code == 200
        # pixels: two 64x64 images fit, three do not (counted from the headers, before decoding)
        image_calls = encoder.calls["image"]
        err = _assert_error(client.post("/v1/embed", json={"images": [_png(64, 64)] * 3}), 422, "too_many_pixels", "images", 2)
        assert "PCCLIP_MAX_REQUEST_PIXELS" in err["message"]
        assert encoder.calls["image"] == image_calls
        assert client.post("/v1/embed", json={"images": [_png(64, 64)] * 2}).status_code == 200


def test_healthz_answers_head(limited):
    r = limited.head("/healthz")
    assert r.status_code == 200


def test_readyz_shows_state_not_addresses(encoder, tmp_path):
    port = __import__("tests.service.conftest", fromlist=["free_port"]).free_port()
    with service_client(encoder, f"redis://:hunter2@127.0.0.1:{port}/0") as client:  # nothing listens there
        ready = client.get("/readyz")
        assert ready.json()["redis"] == {"up": False, "cached_stores": 0}
        for secret in ("hunter2", str(port), "127.0.0.1", "redis://", "Error"):
            assert secret not in ready.text


def _multipart(photo: bytes, boundary: str = "XyZ") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("body,content_type", [
    (lambda p: _multipart(p)[:-12], "multipart/form-data; boundary=XyZ"),  # no closing boundary
    (lambda p: _multipart(p)[: len(p) // 2], "multipart/form-data; boundary=XyZ"),  # cut in the middle of a file
    (lambda p: b"", "multipart/form-data; boundary=XyZ"),  # empty
    (lambda p: _multipart(p), "multipart/form-data"),  # no boundary parameter
    (lambda p: _multipart(p)[:-12], "Multipart/Form-Data; boundary=XyZ"),  # other case, truncated
])
def test_truncated_or_empty_multipart_is_a_400(limited, body, content_type):
    photo = base64.b64decode(_png(16, 16))
    r = limited.post("/v1/embed", content=body(photo), headers={"content-type": content_type})
    _assert_error(r, 400, "invalid_multipart")


def test_multipart_content_type_in_any_case(limited):
    photo = base64.b64decode(_png(16, 16))
    r = limited.post("/v1/embed", content=_multipart(photo), headers={"content-type": "Multipart/Form-Data; boundary=XyZ"})
    assert r.status_code == 200, r.text
    assert len(r.json()["image_embeddings"]) == 1
