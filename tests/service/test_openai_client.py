"""The OpenAI-compatible routes through the official `openai` client, against a real `pcclip serve`-style uvicorn."""

from __future__ import annotations

import httpx
import numpy as np
import pytest


@pytest.fixture(scope="module")
def openai_client(live_url):
    from openai import OpenAI

    return OpenAI(base_url=live_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_and_retrieve(openai_client, encoder):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [encoder.model_id]
    assert models.data[0].object == "model" and models.data[0].created > 0
    assert openai_client.models.retrieve(encoder.model_id).id == encoder.model_id
    from openai import NotFoundError

    with pytest.raises(NotFoundError) as err:
        openai_client.models.retrieve("text-embedding-3-small")
    assert err.value.body["code"] == "model_not_found"  # the client hands over the body's "error" object


def test_embeddings_through_the_client_match_embed(openai_client, encoder, live_url):
    texts = ["a red bird", "a bird with a long beak"]
    result = openai_client.embeddings.create(model=encoder.model_id, input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    direct = httpx.post(live_url + "/v1/embed", json={"texts": texts}, timeout=60).json()["text_embeddings"]
    np.testing.assert_allclose(got, direct, atol=1e-6)
    assert result.model == encoder.model_id and result.usage.prompt_tokens > 4
    same_dim = openai_client.embeddings.create(model=encoder.model_id, input="a red bird", dimensions=encoder.dim)
    assert len(same_dim.data[0].embedding) == encoder.dim


def test_client_errors_are_clear(openai_client, encoder):
    from openai import NotFoundError, UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError) as dims:
        openai_client.embeddings.create(model=encoder.model_id, input="a red bird", dimensions=128)
    error = dims.value.body
    assert error["code"] == "dimensions_not_supported" and error["field"] == "dimensions"
    assert f"{encoder.dim}-dimensional" in error["message"]
    with pytest.raises(NotFoundError) as unknown:
        openai_client.embeddings.create(model="text-embedding-3-small", input="a red bird")
    assert unknown.value.body["code"] == "model_not_found" and encoder.model_id in unknown.value.body["message"]
    for tokens in ([101, 2023, 102], [[101, 2023], [101, 102]]):
        with pytest.raises(UnprocessableEntityError) as ids:
            openai_client.embeddings.create(model=encoder.model_id, input=tokens)
        body = ids.value.body
        assert body["code"] == "token_ids_not_supported" and body["field"] == "input"
        assert "give the texts themselves" in body["message"]
    with pytest.raises(UnprocessableEntityError) as empty:
        openai_client.embeddings.create(model=encoder.model_id, input=["a red bird", "  "])
    assert (empty.value.body["code"], empty.value.body["field"], empty.value.body["index"]) == ("empty_text", "input", 1)
