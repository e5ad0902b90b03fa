"""An idle tower hands its working memory back: `on_idle` runs once per idle spell, never while work keeps coming."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from service.batcher import TowerBatcher
from service.inference import InferenceEngine
from service.metrics import ServiceMetrics
from tests.service.conftest import make_settings


def test_on_idle_runs_in_the_towers_thread_once_per_idle_spell_and_not_between_close_calls():
    events, threads = [], {}

    def run(x):
        events.append("run")
        threads["run"] = threading.current_thread()
        return np.zeros((len(x), 2), np.float32)

    def on_idle():
        events.append("idle")
        threads["idle"] = threading.current_thread()

    batcher = TowerBatcher("image", run, max_batch_size=4, max_wait_ms=1, queue_limit=100, on_idle=on_idle, idle_s=1.0)

    async def scenario():
        batcher.start()
        try:
            await asyncio.sleep(0.3)  # idle before any call: nothing to release
            for _ in range(3):  # calls closer together than idle_s: no release between them
                await batcher.submit(np.zeros((1, 1)))
            for _ in range(100):  # then idle: one release
                if "idle" in events:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # still idle: no second release
            await batcher.submit(np.zeros((1, 1)))
            for _ in range(100):
                if events.count("idle") == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert events == ["run", "run", "run", "idle", "run", "idle"]
    assert threads["idle"] is threads["run"]  # never at the same time as a tower call


def test_an_idle_image_tower_releases_the_encoders_memory(encoder, redis_url, photo_bytes, monkeypatch):
    released = threading.Event()
    monkeypatch.setattr(encoder, "release_memory", released.set)
    engine = InferenceEngine(encoder, make_settings(redis_url, idle_memory_release_s=0.2), ServiceMetrics())

    async def scenario():
        engine.start()
        try:
            await engine.embed_images(photo_bytes[:2])
            return await asyncio.to_thread(released.wait, 30)
        finally:
            await engine.stop()

    assert asyncio.run(scenario())
