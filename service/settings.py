"""All service settings in one typed object, read from environment variables prefixed `PCCLIP_`.

`PCCLIP_MODEL=pcclip-mini PCCLIP_API_KEYS=k1,k2 pcclip serve` ... every field below is
`PCCLIP_<FIELD NAME IN CAPITALS>`; the README's settings table lists them with their defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.loading import DEFAULT_MODEL


class Settings(BaseSettings):
    """The service's configuration (environment variables `PCCLIP_*`)."""

    model_config = SettingsConfigDict(env_prefix="PCCLIP_", extra="ignore", protected_namespaces=())

    # what to serve
    model: str = Field(DEFAULT_MODEL, description="model spec or bundle directory")
    backend: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: serve the model's ONNX bundle (built once and cached); torch: the torch model (debugging)"
    )
    bundle_cache_dir: str = Field("~/.cache/pcclip/bundles", description="where the bundles built for model specs are kept")
    device: str = Field("cpu", description="torch device for non-bundle models (backend torch)")
    # Redis (class stores)
    redis_url: str = Field("redis://localhost:6379/0", description="Redis for class stores")
    redis_timeout_s: float = Field(0.5, gt=0, description="Redis connect and command timeout")
    redis_check_interval_s: float = Field(1.0, gt=0, description="how often the Redis state is checked")
    store_sync_interval_s: float = Field(0.25, gt=0, description="a store change made by any replica is seen by every other within this")
    store_max_stale_s: float = Field(300.0, ge=0, description="Redis down: serve cached stores for at most this long after the last check")
    store_cache_size: int = Field(256, gt=0, description="class stores cached per process (least recently used evicted)")
    max_stores: int = Field(1000, gt=0, description="class stores per model (a new name past this: 409)")
    # auth
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated API keys; empty: no auth")
    public_reads: bool = Field(False, description="with keys set: inference routes need no key, store writes still do")
    # limits
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="request body size limit (413)")
    max_items: int = Field(64, gt=0, description="images or texts per request")
    max_image_pixels: int = Field(40_000_000, gt=0, description="decoded pixels per image (decompression bombs)")
    max_image_bytes: int = Field(16 * 1024 * 1024, gt=0, description="bytes per image after base64 decoding")
    max_text_chars: int = Field(2000, gt=0, description="characters per text (then truncated at the model's context)")
    max_classes: int = Field(1000, gt=0, description="classes (and hints, explain candidates) per request or store")
    max_templates: int = Field(64, gt=0, description="templates per classification or store")
    # collections
    collection_dtype: Literal["float32", "float16"] = Field("float32", description="collection matrix in each replica (float16: half the memory)")
    collection_index: Literal["int8", "flat"] = Field(
        "int8", description="collection search: int8 (an int8 first pass, then exact scores for the rows that can reach the top k: "
        "the same results as flat, faster from 65,536 items; D bytes more a row) or flat (one float pass over the matrix)"
    )
    collection_max_items: int = Field(2_000_000, gt=0, description="items per collection")
    collection_max_top_k: int = Field(10_000, gt=0, description="results per collection rank or search")
    collection_log_length: int = Field(10_000, gt=0, description="collection change-log entries kept in Redis (replicas further behind reload)")
    max_metadata_bytes: int = Field(4096, gt=0, description="JSON metadata per collection item")
    max_modifiers: int = Field(16, gt=0, description="modifiers per collection search")
    max_texts_per_request: int = Field(4096, gt=0, description="texts one request may encode: classes x templates + hints (422 past it)")
    max_request_pixels: int = Field(400_000_000, gt=0, description="image pixels one request may decode, summed over its images (422 past it)")
    # batching
    max_batch_size: int = Field(32, gt=0, description="images per tower call; texts per ONNX Runtime run")
    max_batch_tokens: int = Field(
        4096, gt=0, description="text tokens per tower call (bundles with a dynamic sequence axis), as TEI's max-batch-tokens"
    )
    bulk_batch_size: int = Field(4, gt=0, description="texts per tower call when building a class set (queued behind other requests)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    queue_limit: int = Field(512, gt=0, description="items waiting per tower before 503 + Retry-After")
    preprocess_threads: int = Field(2, gt=0, description="threads decoding images and tokenizing")
    image_workers: int = Field(
        3, gt=0, description="image tower calls running at once, each on cores / this ONNX Runtime threads (at least 1; "
        "PCCLIP_ORT_THREADS overrides): calls waiting on the GIL or on decoding leave cores to the others (docs/benchmarks.md)"
    )
    jpeg_draft_margin: float = Field(
        0.0, ge=0, description="0: off; m > 0: decode JPEGs reduced (1/2, 1/4, 1/8) while both sides stay >= m x the model's input side "
        "(faster on large photos, not within the export's parity gate at m = 1: docs/benchmarks.md)"
    )
    # memory
    idle_memory_release_s: float = Field(
        1.0, ge=0, description="a tower idle this long hands its working memory back to the OS (ONNX Runtime's image arena, "
        "glibc's free heap pages); 0: never"
    )
    # caches
    text_cache_size: int = Field(10_000, ge=0, description="text embeddings kept in the LRU cache (0: off)")
    explain_subject: str = Field("", description="default noun of the built-in /v1/explain sentences (empty: subject-neutral)")
    # server
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a complete request head within this (else closed)")
    body_timeout_s: float = Field(60.0, gt=0, description="a request body must arrive within this (else 408)")
    max_connections: int = Field(1000, gt=0, description="open connections + running requests per process (503 past it)")
    host: str = Field("127.0.0.1", description="`pcclip serve` bind address")
    port: int = Field(8000, gt=0, lt=65536, description="`pcclip serve` port")
    log_level: str = Field("info", description="uvicorn and service log level")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value
