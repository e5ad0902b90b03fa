"""The async face of an `Encoder`: decoding and tokenizing in threads, batched tower calls, text cache."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from models.encoders import Encoder
from models.images import ImageDecodeError, ImageLimits, decode_image
from models.tokenization import token_lengths
from service.batcher import QueueFull, TowerBatcher
from service.memory import release_freed_memory
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.text_cache import TextEmbeddingCache

LARGE_DECODE_PIXELS = 4_000_000  # after decoding an image this large, hand freed memory back to the OS


def check_pixel_budget(images: list[bytes], max_pixels: int) -> None:
    """Raise `ImageDecodeError("too_many_pixels")` when the images' sizes (read from their headers,
    nothing decoded) add up to more than `max_pixels`; unreadable headers are left to the decoder."""
    total = 0
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception:  # not an image: decode_image says so, naming the item
            continue
        total += width * height
        if total > max_pixels:
            raise ImageDecodeError(
                f"the images of this request have more than {max_pixels} pixels in all (image {i} passes it); "
                "the limit is PCCLIP_MAX_REQUEST_PIXELS: send fewer or smaller images", "too_many_pixels", i)


class InferenceEngine:
    """Embeds texts and images for the routes; never blocks the event loop."""

    def __init__(self, encoder: Encoder, settings: Settings, metrics: ServiceMetrics):
        self.encoder = encoder
        self.metrics = metrics
        self.image_limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        margin = float(settings.jpeg_draft_margin)
        self.draft_min_side = int(margin * max(encoder.preprocess_cfg.image_size)) if margin > 0 else None
        self.text_cache = TextEmbeddingCache(settings.text_cache_size, metrics)
        self._preprocess_pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="pcclip-preprocess")
        batching = dict(max_wait_ms=settings.max_wait_ms, queue_limit=settings.queue_limit, metrics=metrics,
                        idle_s=settings.idle_memory_release_s)
        if getattr(encoder, "dynamic_sequence", False):
            # Texts run at their own length: a tower call is bounded by tokens (TEI's max-batch-tokens),
            # and the encoder splits it into runs of similar length of at most max_batch_size texts.
            pad_id = getattr(encoder.tokenizer, "pad_id", 0)
            self.text_batcher = TowerBatcher(
                "text", encoder.encode_tokens, max_batch_size=settings.max_batch_tokens, on_idle=release_freed_memory,
                cost=lambda ids: int(token_lengths(ids, pad_id).sum()), max_batch_cost=settings.max_batch_tokens,
                max_bulk_items=settings.bulk_batch_size, **batching,
            )
        else:
            self.text_batcher = TowerBatcher("text", encoder.encode_tokens, max_batch_size=settings.max_batch_size,
                                             max_bulk_items=settings.bulk_batch_size, on_idle=release_freed_memory, **batching)
        self.image_batcher = TowerBatcher("image", encoder.encode_pixels, max_batch_size=settings.max_batch_size,
                                          on_idle=self._release_image_memory, workers=settings.image_workers, **batching)
        # items admitted per tower and not answered yet (decoding/tokenizing, queued or running):
        # admission is refused at once past queue_limit, before any decoding work is queued
        self.queue_limit = int(settings.queue_limit)
        self.in_flight = {"text": 0, "image": 0}
        self.bulk_batch_size = int(settings.bulk_batch_size)
        self.max_request_pixels = int(settings.max_request_pixels)

    def _release_image_memory(self) -> None:
        """The image tower has been idle: its working memory (ONNX Runtime's arena) and the heaps' free pages go back to the OS."""
        self.encoder.release_memory()
        release_freed_memory()

    def start(self) -> None:
        self.text_batcher.start()
        self.image_batcher.start()

    async def stop(self) -> None:
        await self.text_batcher.stop()
        await self.image_batcher.stop()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, kind: str, fn, *args):
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._preprocess_pool, fn, *args)
        finally:
            self.metrics.preprocess.labels(kind).observe(time.perf_counter() - started)

    def _admit(self, tower: str, n: int) -> None:
        """Reserve `n` items of the tower's capacity, or raise QueueFull (503 + Retry-After) now."""
        pending = self.in_flight[tower]
        if pending + n > self.queue_limit:
            self.metrics.rejected.labels(tower).inc(n)
            raise QueueFull(tower, pending, self.queue_limit)
        self.in_flight[tower] = pending + n

    def _release(self, tower: str, n: int) -> None:
        self.in_flight[tower] -= n

    async def embed_texts(self, texts: list[str], bulk: bool = False) -> np.ndarray:
        """Texts -> normalised [N, D]; cached texts are not re-encoded, duplicates encoded once.

        `bulk`: many texts for one request (a class set): encoded `bulk_batch_size` at a time, each
        piece queued behind ordinary requests, so building a large class set holds the tower for at
        most one small batch at a time, and stops at the next piece when the request is cancelled.
        """
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        found, missing = self.text_cache.lookup(texts)
        step = self.bulk_batch_size if bulk else max(1, len(missing))
        for start in range(0, len(missing), step):
            piece = missing[start : start + step]
            self._admit("text", len(piece))
            try:
                ids = await self._in_pool("text", self.encoder.tokenize, piece)
                embs = await self.text_batcher.submit(ids, bulk=bulk)
            finally:
                self._release("text", len(piece))
            self.text_cache.put(piece, embs)
            found.update(zip(piece, embs))
        return np.stack([found[t] for t in texts]).astype(np.float32)

    def _decode_and_preprocess(self, images: list[bytes]) -> np.ndarray:
        check_pixel_budget(images, self.max_request_pixels)
        pixels = []
        for i, data in enumerate(images):  # one at a time: at most one full-size decoded image in memory
            try:
                decoded = decode_image(data, self.image_limits, min_side=self.draft_min_side)
            except ImageDecodeError as err:
                raise err.with_index(i) from err
            large = decoded.width * decoded.height >= LARGE_DECODE_PIXELS
            pixels.append(self.encoder.preprocess([decoded]))
            del decoded
            if large:
                release_freed_memory()
        return np.concatenate(pixels)

    async def embed_images(self, images: list[bytes]) -> np.ndarray:
        """Encoded image files -> normalised [N, D]; raises `ImageDecodeError` naming the item."""
        if not images:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        self._admit("image", len(images))
        try:
            pixels = await self._in_pool("image", self._decode_and_preprocess, images)
            return await self.image_batcher.submit(pixels)
        finally:
            self._release("image", len(images))
