"""Admission control: the queue limit is applied before any decoding, and a class set larger than it still works."""

from __future__ import annotations

import asyncio

import pytest

from service.batcher import QueueFull
from service.inference import InferenceEngine
from service.metrics import ServiceMetrics
from tests.service.conftest import make_settings, service_client


def test_a_class_set_larger_than_the_queue_limit_is_built_not_refused(encoder, redis_url):
    classes = [f"bird species number {i}" for i in range(40)]
    with service_client(encoder, redis_url, queue_limit=16, max_batch_size=8) as client:
        put = client.put("/v1/stores/many", json={"classes": classes})
        assert put.status_code == 200, put.text
        assert put.json()["classes"] == classes


def test_images_beyond_the_limit_are_refused_before_they_are_decoded(encoder, redis_url, photo_bytes):
    engine = InferenceEngine(encoder, make_settings(redis_url, queue_limit=4), ServiceMetrics())
    decoded = []
    engine._decode_and_preprocess = lambda images: decoded.append(len(images)) or encoder.preprocess(images)

    async def scenario():
        engine.start()
        try:
            first = asyncio.ensure_future(engine.embed_images(photo_bytes[:3]))
            await asyncio.sleep(0)  # the first request is admitted (3 of 4 items)
            with pytest.raises(QueueFull):
                await engine.embed_images(photo_bytes[:2])
            assert decoded == [] or decoded == [3]  # the refused request decoded nothing
            assert (await first).shape == (3, encoder.dim)
            assert engine.in_flight == {"text": 0, "image": 0}
            assert (await engine.embed_images(photo_bytes[:4])).shape == (4, encoder.dim)  # capacity is back
        finally:
            await engine.stop()

    asyncio.run(scenario())
