"""Every endpoint's success path with the default model, and the invariants the API promises."""

from __future__ import annotations

import base64
import concurrent.futures

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import service_client


def _norms(rows) -> np.ndarray:
    return np.linalg.norm(np.asarray(rows, dtype=np.float64), axis=1)


def test_health_ready_docs(client, encoder):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["model"] == encoder.model_id
    assert body["provider"] == encoder.provider and body["redis"]["up"] is True
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/embed", "/v1/embeddings", "/v1/rank", "/v1/compare", "/v1/classify", "/v1/explain", "/v1/stores/{name}"):
        assert path in paths
    assert "multipart/form-data" in paths["/v1/embed"]["post"]["requestBody"]["content"]


def test_embed_json_matches_encoder_and_is_normalised(client, encoder, photo_b64, photo_bytes):
    texts = ["a photo of a bird", "The first bird is larger than the second."]
    r = client.post("/v1/embed", json={"texts": texts, "images": photo_b64[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == encoder.model_id and body["dim"] == encoder.dim
    assert np.asarray(body["text_embeddings"]).shape == (2, encoder.dim)
    assert np.asarray(body["image_embeddings"]).shape == (2, encoder.dim)
    assert np.allclose(_norms(body["text_embeddings"]), 1.0, atol=1e-4)
    assert np.allclose(_norms(body["image_embeddings"]), 1.0, atol=1e-4)
    np.testing.assert_allclose(body["text_embeddings"], encoder.encode_texts(texts), atol=1e-4)
    np.testing.assert_allclose(body["image_embeddings"], encoder.encode_images(photo_bytes[:2]), atol=1e-4)
    # either part may be absent; a data URI works like plain base64
    only_texts = client.post("/v1/embed", json={"texts": texts[:1]}).json()
    assert only_texts["image_embeddings"] == [] and len(only_texts["text_embeddings"]) == 1
    uri = "data:image/jpeg;base64," + photo_b64[0]
    via_uri = client.post("/v1/embed", json={"images": [uri]}).json()
    np.testing.assert_allclose(via_uri["image_embeddings"][0], body["image_embeddings"][0], atol=1e-5)


def test_embed_multipart(client, photo_bytes):
    files = [("images", ("a.jpg", photo_bytes[0], "image/jpeg")), ("images", ("b.jpg", photo_bytes[1], "image/jpeg"))]
    r = client.post("/v1/embed", files=files, data={"texts": ["a photo of a bird"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["image_embeddings"]) == 2 and len(body["text_embeddings"]) == 1
    json_body = client.post("/v1/embed", json={"images": [base64.b64encode(photo_bytes[0]).decode()]}).json()
    np.testing.assert_allclose(body["image_embeddings"][0], json_body["image_embeddings"][0], atol=1e-5)


def test_openai_embeddings(client, encoder):
    r = client.post("/v1/embeddings", json={"input": ["a red bird", "a blue bird"], "model": encoder.model_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == encoder.model_id
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] > 4
    single = client.post("/v1/embeddings", json={"input": "a red bird", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(single["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, body["data"][0]["embedding"], atol=1e-6)


def test_rank_is_consistent_with_compare(client, photo_b64):
    attribute = "The first bird is larger than the second."
    r = client.post("/v1/rank", json={"attribute": attribute, "images": photo_b64[:4]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attribute"] == attribute
    ranking = body["ranking"]
    assert sorted(item["index"] for item in ranking) == [0, 1, 2, 3]
    scores = [item["score"] for item in ranking]
    assert scores == sorted(scores, reverse=True)
    # every adjacent pair in the ranking compares the same way: the higher-ranked image "has more" of T
    for hi, lo in zip(ranking, ranking[1:]):
        if hi["score"] - lo["score"] < 1e-5:
            continue
        cmp = client.post("/v1/compare", json={"image_a": photo_b64[hi["index"]], "image_b": photo_b64[lo["index"]], "difference": attribute}).json()
        assert cmp["score"] > 0 and cmp["holds"] is True
    top2 = client.post("/v1/rank", json={"attribute": attribute, "images": photo_b64[:4], "top_k": 2}).json()["ranking"]
    assert top2 == ranking[:2]


def test_compare_is_antisymmetric_and_calibrated(client, encoder, photo_b64):
    from models.difference import compare_probability

    text = "The first bird is more red than the second."
    ab = client.post("/v1/compare", json={"image_a": photo_b64[0], "image_b": photo_b64[1], "difference": text}).json()
    ba = client.post("/v1/compare", json={"image_a": photo_b64[1], "image_b": photo_b64[0], "difference": text}).json()
    assert abs(ab["score"] + ba["score"]) < 1e-4
    assert ab["holds"] == (ab["score"] > 0) and ba["holds"] == (ba["score"] > 0) and ab["holds"] != ba["holds"]
    cal = encoder.calibration
    assert abs(ab["probability"] - float(compare_probability(ab["score"], cal["temperature"], cal["bias"]))) < 1e-5
    assert (ab["probability"] > 0.5) == (ab["score"] > cal["bias"])


def test_classify_with_classes_templates_hints(client, photo_b64):
    classes = ["crow", "raven", "cardinal"]
    r = client.post("/v1/classify", json={"images": photo_b64[:3], "classes": classes})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for res in results:
        probs = [l["probability"] for l in res["labels"]]
        assert sorted(l["label"] for l in res["labels"]) == sorted(classes)
        assert abs(sum(probs) - 1.0) < 1e-4 and probs == sorted(probs, reverse=True)
    hinted = client.post("/v1/classify", json={
        "images": photo_b64[:3], "classes": classes, "top_k": 2, "alpha": 0.5,
        "templates": ["a photo of a {}.", "a {}, a type of bird."],
        "hints": [{"a": "crow", "b": "raven", "text": "The first bird is smaller than the second."}],
    })
    assert hinted.status_code == 200, hinted.text
    hres = hinted.json()["results"]
    assert all(len(res["labels"]) == 2 for res in hres)
    # hints move the hinted classes' embeddings, so probabilities change
    plain = {l["label"]: l["probability"] for l in results[0]["labels"]}
    assert any(abs(plain[l["label"]] - l["probability"]) > 1e-6 for l in hres[0]["labels"])


def test_classify_matches_library_math(client, encoder, photo_bytes, photo_b64):
    from models.difference import (Hint, class_embeddings, comparative_prompting, softmax,
                                   zero_shot_logits)

    classes = ["sparrow", "gull"]
    hints = [Hint("sparrow", "gull", "The first bird is smaller than the second.")]
    w = class_embeddings(classes, encoder.encode_texts, ["a photo of a {}."])
    w = comparative_prompting(classes, w, hints, encoder.encode_texts([hints[0].text]), alpha=0.7)
    expected = softmax(zero_shot_logits(encoder.encode_images(photo_bytes[:1]), w, encoder.logit_scale))[0]
    body = client.post("/v1/classify", json={"images": photo_b64[:1], "classes": classes, "alpha": 0.7,
                                             "hints": [{"a": "sparrow", "b": "gull", "text": hints[0].text}]}).json()
    got = {l["label"]: l["probability"] for l in body["results"][0]["labels"]}
    np.testing.assert_allclose([got[c] for c in classes], expected, atol=1e-4)


def test_explain_candidates_and_builtin(client, photo_b64):
    cands = ["The first bird is larger than the second.", "The first bird is smaller than the second."]
    r = client.post("/v1/explain", json={"image_a": photo_b64[0], "image_b": photo_b64[1], "candidates": cands})
    assert r.status_code == 200, r.text
    diffs = r.json()["differences"]
    assert sorted(d["text"] for d in diffs) == sorted(cands)
    assert diffs[0]["score"] >= diffs[1]["score"]
    builtin = client.post("/v1/explain", json={"image_a": photo_b64[0], "image_b": photo_b64[1], "top_k": 3}).json()
    assert builtin["vocabulary"] == "built-in" and len(builtin["differences"]) == 3
    assert all(d["text"].startswith("The first image") for d in builtin["differences"])  # subject-neutral
    scores = [d["score"] for d in builtin["differences"]]
    assert scores == sorted(scores, reverse=True)
    named = client.post("/v1/explain", json={"image_a": photo_b64[0], "image_b": photo_b64[1], "subject": "animal",
                                             "top_k": 50}).json()
    assert all(d["text"].startswith(("The first animal", "The first image")) for d in named["differences"])
    assert any(d["text"].startswith("The first animal") for d in named["differences"])
    for subject in ("{0}", "animal\n", ""):
        bad = client.post("/v1/explain", json={"image_a": photo_b64[0], "image_b": photo_b64[1], "subject": subject})
        assert bad.status_code == 422 and bad.json()["error"]["field"].endswith("subject"), subject


def test_store_crud_and_classify_without_reencoding(client, encoder, photo_b64):
    spec = {"classes": ["crow", "raven", "jay"], "templates": ["a photo of a {}."],
            "hints": [{"a": "crow", "b": "raven", "text": "The first bird is smaller than the second."}], "alpha": 0.6}
    put = client.put("/v1/stores/corvids", json=spec)
    assert put.status_code == 200, put.text
    assert put.json()["classes"] == spec["classes"] and put.json()["alpha"] == 0.6
    assert client.get("/v1/stores").json()["stores"] == ["corvids"]
    info = client.get("/v1/stores/corvids").json()
    assert info["hints"] == spec["hints"] and info["fingerprint"] == encoder.fingerprint
    direct = client.post("/v1/classify", json={"images": photo_b64[:2], **spec}).json()
    text_calls = encoder.calls["text"]
    via_store = client.post("/v1/classify", json={"images": photo_b64[:2], "store": "corvids"})
    assert via_store.status_code == 200, via_store.text
    assert encoder.calls["text"] == text_calls  # the store's classes were not re-encoded
    for a, b in zip(direct["results"], via_store.json()["results"]):
        assert [l["label"] for l in a["labels"]] == [l["label"] for l in b["labels"]]
        np.testing.assert_allclose([l["probability"] for l in a["labels"]], [l["probability"] for l in b["labels"]], atol=1e-5)
    assert client.delete("/v1/stores/corvids").status_code == 200
    assert client.get("/v1/stores/corvids").status_code == 404
    assert client.get("/v1/stores").json()["stores"] == []


def test_text_cache_skips_repeated_texts(client, encoder):
    text = "a text that is only used by the cache test"
    client.post("/v1/embeddings", json={"input": text})
    calls = encoder.calls["text"]
    again = client.post("/v1/embeddings", json={"input": [text, text]})
    assert again.status_code == 200
    assert encoder.calls["text"] == calls
    metrics = {s.name + str(s.labels): s.value for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert metrics["pcclip_text_cache_total{'result': 'hit'}"] >= 1  # duplicates in one request are looked up once


def test_concurrent_requests_are_batched(encoder, redis_url):
    with service_client(encoder, redis_url, max_wait_ms=300, max_batch_size=64, text_cache_size=0) as client:
        before = encoder.calls["text"]
        texts = [f"concurrent text number {i}" for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda t: client.post("/v1/embeddings", json={"input": t}), texts))
        assert all(r.status_code == 200 for r in responses)
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        counts = [s.value for s in families["pcclip_batch_size"].samples if s.name.endswith("_count") and s.labels["tower"] == "text"]
        batches = counts[0]
        assert batches < len(texts)  # several requests shared a tower call
        assert encoder.calls["text"] - before == batches
        expected = encoder.encode_texts(texts)
        for r, e in zip(responses, expected):
            np.testing.assert_allclose(r.json()["data"][0]["embedding"], e, atol=1e-4)
